"""The authorization policy: deny by default, strict parsing."""

from __future__ import annotations

import tomllib

import pytest

from zumik_secrets.core.errors import InvalidArgument
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.config import dev_policy_path

GW = "spiffe://zumik.local/svc/gateway"
CP = "spiffe://zumik.local/svc/control-plane"
VERIFY = "/zumik.secrets.v1.KeyService/VerifyApiKey"


def _policy(**identities: object) -> Policy:
    return Policy.from_mapping({"trust_domain": "zumik.local", "identities": identities})


def test_empty_policy_refuses_everything() -> None:
    policy = Policy.from_mapping({"trust_domain": "zumik.local"})
    decision = policy.decide(GW, VERIFY)
    assert not decision.allowed
    assert decision.reason == "UNKNOWN_IDENTITY"


def test_unknown_identity_and_unlisted_method_are_refused() -> None:
    policy = _policy(**{GW: {"allow": ["zumik.secrets.v1.KeyService/VerifyApiKey"]}})
    assert policy.decide(GW, VERIFY).allowed
    assert policy.decide(GW, "/zumik.secrets.v1.KeyService/CreateApiKey").reason == (
        "METHOD_NOT_ALLOWED"
    )
    assert policy.decide("spiffe://zumik.local/svc/other", VERIFY).reason == "UNKNOWN_IDENTITY"
    assert policy.decide(None, VERIFY).reason == "UNKNOWN_IDENTITY"
    assert policy.decide("", VERIFY).reason == "UNKNOWN_IDENTITY"


def test_service_wildcard_and_without_claim() -> None:
    policy = _policy(
        **{
            CP: {
                "allow": ["zumik.secrets.v1.KeyService/*", "zumik.secrets.v1.TenantService/*"],
                "without_claim": ["zumik.secrets.v1.KeyService/*"],
            }
        }
    )
    key = policy.decide(CP, "/zumik.secrets.v1.KeyService/CreateApiKey")
    assert key.allowed and key.without_claim
    tenant = policy.decide(CP, "/zumik.secrets.v1.TenantService/PurgeTenant")
    assert tenant.allowed and not tenant.without_claim
    assert not policy.decide(CP, "/zumik.secrets.v1.SealService/Open").allowed


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"trust_domain": ""},
        {"trust_domain": "zumik.local", "extra": 1},
        {"trust_domain": "zumik.local", "identities": {"not-spiffe": {"allow": []}}},
        {"trust_domain": "zumik.local", "identities": {"spiffe://other.domain/svc/x": {}}},
        {"trust_domain": "zumik.local", "identities": {GW: {"allow": ["KeyService"]}}},
        {"trust_domain": "zumik.local", "identities": {GW: {"allow": "pkg.S/M"}}},
        {"trust_domain": "zumik.local", "identities": {GW: {"allow": [], "typo": 1}}},
        {
            "trust_domain": "zumik.local",
            "identities": {GW: {"allow": ["a.S/M"], "without_claim": ["a.S/N"]}},
        },
    ],
)
def test_malformed_policies_are_rejected(data: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as info:
        Policy.from_mapping(data)
    assert info.value.reason == "POLICY_INVALID"


def test_dev_policy_names_the_six_roles() -> None:
    with open(dev_policy_path(), "rb") as fh:
        policy = Policy.from_mapping(tomllib.load(fh))
    roles = {i.rsplit("/", 1)[-1] for i in policy.identities if "/svc/" in i}
    assert roles == {"control-plane", "console", "gateway", "executor", "billing", "auditor"}
    operators = {i for i in policy.identities if "/svc/" not in i}
    assert operators == {
        "spiffe://zumik.local/operator/alice",
        "spiffe://zumik.local/operator/bob",
    }
    assert not policy.decide(
        "spiffe://zumik.local/svc/console", "/zumik.secrets.v1.SealService/Open"
    ).allowed
    assert policy.decide(
        "spiffe://zumik.local/svc/executor", "/zumik.secrets.v1.SealService/Open"
    ).allowed


def test_impersonation_is_a_separate_policy_flag_the_dev_policy_grants_no_one() -> None:
    dev = Policy.from_mapping(tomllib.loads(dev_policy_path().read_text(encoding="utf-8")))
    for identity in dev.identities:
        assert not dev.decide(identity, "/zumik.secrets.v1.KeyService/CreateSession").impersonate
    base = {
        "trust_domain": "zumik.local",
        "identities": {CP: {"allow": ["zumik.secrets.v1.KeyService/*"], "impersonate": True}},
    }
    assert Policy.from_mapping(base).decide(CP, VERIFY).impersonate
    for bad in ("yes", 1, ["x"]):
        with pytest.raises(InvalidArgument):
            Policy.from_mapping(
                {**base, "identities": {CP: {"allow": [], "impersonate": bad}}}  # type: ignore[dict-item]
            )


def test_revocation_feed_needs_a_right_to_verify() -> None:
    watch = "/zumik.secrets.v1.KeyService/WatchRevocations"
    other = "spiffe://zumik.local/svc/other"
    policy = _policy(
        **{
            GW: {"allow": ["zumik.secrets.v1.KeyService/VerifySession", watch[1:]]},
            CP: {"allow": ["zumik.secrets.v1.KeyService/*"]},
            other: {"allow": [watch[1:], "zumik.secrets.v1.KeyService/GetApiKey"]},
        }
    )
    assert policy.decide(GW, watch).allowed
    assert policy.decide(CP, watch).allowed
    refused = policy.decide(other, watch)
    assert not refused.allowed and refused.reason == "METHOD_NOT_ALLOWED"
