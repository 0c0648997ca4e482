"""Break-glass rules: policy parsing (no standing operator access, bounded permission sets) and
the pure grant-use decision."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta

import pytest

from zumik_secrets.core import break_glass as bg
from zumik_secrets.core.errors import InvalidArgument
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.config import dev_policy_path

ALICE = "spiffe://zumik.local/operator/alice"
T0 = datetime(2026, 12, 1, tzinfo=UTC)
SET = {
    "allow": ["zumik.secrets.v1.SealService/GetSecret"],
    "max_duration_seconds": 3600,
}


def _policy(identities: dict[str, object], break_glass: object | None = None) -> Policy:
    data: dict[str, object] = {"trust_domain": "zumik.local", "identities": identities}
    if break_glass is not None:
        data["break_glass"] = break_glass
    return Policy.from_mapping(data)


def test_dev_policy_operators_have_no_standing_access() -> None:
    policy = Policy.from_mapping(tomllib.loads(dev_policy_path().read_text(encoding="utf-8")))
    operators = [i for i in policy.identities if bg.is_operator(i, "zumik.local")]
    assert operators
    for op in operators:
        for method in (
            "/zumik.secrets.v1.SealService/Open",
            "/zumik.secrets.v1.SealService/GetSecret",
            "/zumik.secrets.v1.KeyService/RevokeApiKey",
            "/zumik.secrets.v1.AuditService/QueryEvents",
        ):
            assert not policy.decide(op, method).allowed
        assert policy.decide(op, "/zumik.secrets.v1.BreakGlassService/RequestGrant").allowed
    # Nobody but the executor (which needs a tenant's claim) may Open at all.
    openers = [
        i
        for i in policy.identities
        if policy.decide(i, "/zumik.secrets.v1.SealService/Open").allowed
    ]
    assert openers == ["spiffe://zumik.local/svc/executor"]
    assert not policy.decide(
        "spiffe://zumik.local/svc/executor", "/zumik.secrets.v1.SealService/Open"
    ).without_claim
    for pset in policy.break_glass.permission_sets.values():
        assert pset.max_duration <= timedelta(hours=1)


@pytest.mark.parametrize(
    "allow",
    [
        ["zumik.secrets.v1.SealService/Open"],
        ["zumik.secrets.v1.SealService/*"],
        ["zumik.secrets.v1.BreakGlassService/*", "zumik.secrets.v1.KeyService/GetApiKey"],
    ],
)
def test_operator_with_standing_access_is_refused(allow: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        _policy({ALICE: {"allow": allow}})
    assert info.value.reason == "POLICY_INVALID"


@pytest.mark.parametrize(
    "sets",
    [
        {"x": {**SET, "max_duration_seconds": 4 * 3600 + 1}},
        {"x": {**SET, "max_duration_seconds": 59}},
        {"x": {**SET, "max_duration_seconds": True}},
        {"x": {**SET, "allow": []}},
        {"x": {**SET, "allow": ["zumik.secrets.v1.SealService/*"]}},
        {"x": {**SET, "allow": ["zumik.secrets.v1.BreakGlassService/ApproveGrant"]}},
        {"x": {**SET, "typo": 1}},
        {"Bad Name": SET},
    ],
)
def test_bad_permission_sets_are_refused(sets: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        _policy({}, {"permission_sets": sets})


def test_policy_without_break_glass_has_no_sets() -> None:
    assert _policy({}).break_glass.permission_sets == {}


def _view(state: str, expires: datetime | None = None) -> bg.GrantView:
    return bg.GrantView(ALICE, state, T0, expires)


def test_use_refusals() -> None:
    window = timedelta(minutes=15)
    end = T0 + timedelta(hours=1)
    assert bg.use_refusal(None, ALICE, T0, window) == "GRANT_NOT_FOUND"
    assert bg.use_refusal(
        _view("active", end), "spiffe://zumik.local/operator/bob", T0, window
    ) == ("GRANT_NOT_FOUND")
    assert bg.use_refusal(_view("pending"), ALICE, T0, window) == "GRANT_NOT_APPROVED"
    assert bg.use_refusal(_view("pending"), ALICE, T0 + window, window) == "GRANT_EXPIRED"
    assert bg.use_refusal(_view("active", end), ALICE, T0, window) is None
    assert (
        bg.use_refusal(_view("active", end), ALICE, end - timedelta(microseconds=1), window) is None
    )
    assert bg.use_refusal(_view("active", end), ALICE, end, window) == "GRANT_EXPIRED"
    assert bg.use_refusal(_view("active", None), ALICE, T0, window) == "GRANT_EXPIRED"
    assert bg.use_refusal(_view("revoked", end), ALICE, T0, window) == "GRANT_REVOKED"


def test_operator_identity_shape() -> None:
    assert bg.is_operator(ALICE, "zumik.local")
    assert not bg.is_operator("spiffe://zumik.local/svc/alice", "zumik.local")
    assert not bg.is_operator("spiffe://zumik.local/operator/", "zumik.local")
    assert not bg.is_operator("spiffe://zumik.local/operator/a/b", "zumik.local")
    assert not bg.is_operator("spiffe://other/operator/alice", "zumik.local")
    assert bg.valid_grant_id("bg_" + "a" * 22)
    assert not bg.valid_grant_id("bg_" + "a" * 21)
    assert not bg.valid_grant_id("bg_" + "a" * 22 + "\n")
