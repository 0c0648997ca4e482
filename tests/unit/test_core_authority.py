"""The one minting rule (core/authority.py), as properties over the scope lattice and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zumik_secrets.core.authority import (
    REASON_IMPERSONATION_NOT_ALLOWED,
    REASON_LIFETIME_ESCALATION,
    REASON_SCOPE_ESCALATION,
    Authority,
    check_grant,
)
from zumik_secrets.core.errors import PermissionDenied

VOCABULARY = (
    "keys.read",
    "keys.write",
    "sessions.read",
    "sessions.write",
    "secrets.seal",
    "secrets.open",
    "secrets.read",
    "secrets.admin",
    "tenant.admin",
    "tenant.purge",
    "audit.read",
    "audit.read.tenant",
    "handles.write",
    "custom:scope",
)
scope_sets = st.frozensets(st.sampled_from(VOCABULARY))
subjects = st.sampled_from(("user-1", "user-2", "key_x", "admin"))


@settings(max_examples=500)
@given(held=scope_sets, asked=scope_sets, subject=subjects, own=subjects, imp=st.booleans())
def test_a_grant_passes_exactly_when_it_stays_within_the_authority(
    held: frozenset[str], asked: frozenset[str], subject: str, own: str, imp: bool
) -> None:
    authority = Authority.of_claim(held, own, impersonate=imp)
    within = asked <= held and (imp or subject == own)
    try:
        check_grant(authority, sorted(asked), subject, expire_time=None)
    except PermissionDenied as err:
        assert not within
        if not asked <= held:
            assert err.reason == REASON_SCOPE_ESCALATION
            assert err.metadata["scope"] == min(asked - held)
        else:
            assert err.reason == REASON_IMPERSONATION_NOT_ALLOWED
        return
    assert within


@settings(max_examples=300)
@given(chain=st.lists(scope_sets, min_size=1, max_size=6), root=scope_sets)
def test_authority_never_grows_along_a_chain_of_mints(
    chain: list[frozenset[str]], root: frozenset[str]
) -> None:
    """Each credential minted by the claim of the one before: whatever passes is a subset of
    the root's scopes, however long the chain."""
    held = root
    for asked in chain:
        try:
            check_grant(Authority.of_claim(held, "u"), sorted(asked), expire_time=None)
        except PermissionDenied:
            continue
        held = asked
        assert held <= root


@given(asked=scope_sets, subject=subjects)
def test_an_identity_acting_without_a_claim_is_bounded_by_policy_only(
    asked: frozenset[str], subject: str
) -> None:
    check_grant(Authority.unbounded(), sorted(asked), subject, expire_time=None)


def test_no_scope_implies_another() -> None:
    """A minting right does not imply any right it could mint (nor does any other scope)."""
    for scope in VOCABULARY:
        for other in VOCABULARY:
            if other != scope:
                with pytest.raises(PermissionDenied):
                    check_grant(Authority.of_claim({scope}, "u"), [other], expire_time=None)


def test_credentials_without_a_subject_are_not_checked_for_one() -> None:
    check_grant(
        Authority.of_claim({"keys.write"}, "user-1"), ["keys.write"], None, expire_time=None
    )
    with pytest.raises(PermissionDenied) as err:
        check_grant(
            Authority.of_claim({"sessions.write"}, "user-1"), [], "user-2", expire_time=None
        )
    assert err.value.reason == REASON_IMPERSONATION_NOT_ALLOWED


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
offsets = st.none() | st.integers(min_value=-86_400, max_value=86_400)


def _at(offset: int | None) -> datetime | None:
    return None if offset is None else NOW + timedelta(seconds=offset)


@settings(max_examples=300)
@given(bound=offsets, asked=offsets)
def test_a_grant_passes_exactly_when_it_ends_no_later_than_the_authority(
    bound: int | None, asked: int | None
) -> None:
    """No bound: any lifetime; a bound: a credential that expires at or before it, never one
    without expiry."""
    authority = Authority.of_claim({"keys.write"}, "key_a", not_after=_at(bound))
    within = bound is None or (asked is not None and asked <= bound)
    try:
        check_grant(authority, ["keys.write"], expire_time=_at(asked))
    except PermissionDenied as err:
        assert not within
        assert err.reason == REASON_LIFETIME_ESCALATION
        assert err.metadata["not_after"] == f"{_at(bound):%Y-%m-%dT%H:%M:%SZ}"
        return
    assert within


@settings(max_examples=200)
@given(root=st.integers(min_value=1, max_value=3600), chain=st.lists(offsets, max_size=6))
def test_lifetime_never_grows_along_a_chain_of_mints(root: int, chain: list[int | None]) -> None:
    """Each credential minted by the claim of the one before: none outlives the root."""
    bound: int | None = root
    for asked in chain:
        try:
            check_grant(
                Authority.of_claim({"keys.write"}, "u", not_after=_at(bound)),
                ["keys.write"],
                expire_time=_at(asked),
            )
        except PermissionDenied:
            continue
        bound = asked
        assert bound is not None and bound <= root


def test_a_bounded_authority_opens_sessions_for_its_own_subject_only() -> None:
    """Even with the impersonation right: another user's session would not carry the bound
    (a session bounds what it mints only when its subject is an API key's id)."""
    authority = Authority.of_claim(
        {"sessions.write"}, "key_a", impersonate=True, not_after=_at(3600)
    )
    check_grant(authority, ["sessions.write"], "key_a", expire_time=_at(60))
    with pytest.raises(PermissionDenied) as err:
        check_grant(authority, ["sessions.write"], "bob", expire_time=_at(60))
    assert err.value.reason == REASON_LIFETIME_ESCALATION
    unbounded = Authority.of_claim({"sessions.write"}, "key_a", impersonate=True)
    check_grant(unbounded, ["sessions.write"], "bob", expire_time=None)


def test_an_identity_acting_without_a_claim_is_not_bounded_in_time() -> None:
    check_grant(Authority.unbounded(), ["keys.write"], expire_time=None)


def test_the_named_rights_are_the_contracts_scopes() -> None:
    from zumik_secrets.api.contracts import method_guards
    from zumik_secrets.core.authority import AUDIT_TENANT_VIEW, MINTING_RIGHTS, TENANT_WIDE_SCOPES

    guards = {g.method: g.scope for g in method_guards().values()}
    minting = {
        guards[m] for m in ("CreateApiKey", "RotateApiKey", "CreateSession", "RotateSession")
    }
    assert minting == set(MINTING_RIGHTS)
    declared = set(guards.values()) | {AUDIT_TENANT_VIEW}
    assert declared >= TENANT_WIDE_SCOPES
    tenant_methods = {m for m, s in guards.items() if s in ("tenant.admin", "tenant.purge")}
    assert "PurgeTenant" in tenant_methods and "GetTenantSettings" in tenant_methods
