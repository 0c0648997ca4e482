"""ClaimRevocations: which claims a credential change or a purge reaches, and the set's bound."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from zumik_secrets.app.claim_revocations import ClaimRevocations
from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import FailedPrecondition, Unauthenticated
from zumik_secrets.storage.records import ApiKeyRecord, ChangeRecord, SessionRecord

NOW = 1_800_000_000.0


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


KEY = ApiKeyRecord(
    key_id="key_a",
    tenant_id="acme",
    project_id="web",
    display_name="k",
    env="live",
    masked_prefix="zk_live_a…",
    salt=b"s" * 16,
    secret_hash=b"h" * 32,
    scopes=("keys.read",),
    state="active",
    created_at=_dt(NOW - 100),
    expire_time=None,
    revoke_time=None,
    last_used_at=None,
    rotated_from=None,
)
SESSION = SessionRecord(
    session_id="ses_a",
    token_hash=b"t" * 32,
    tenant_id="acme",
    project_id="web",
    user_subject="u",
    scopes=("keys.read",),
    state="active",
    created_at=_dt(NOW - 100),
    last_seen_at=_dt(NOW - 100),
    idle_timeout_seconds=600,
    absolute_expire_time=_dt(NOW + 3600),
    revoke_time=None,
)


class _Stores:
    def __init__(self) -> None:
        self.keys: dict[str, ApiKeyRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.tombs: list[tuple[str, str | None, datetime]] = []

    def get_by_id(self, entity: str) -> Any:
        return self.keys.get(entity) or self.sessions.get(entity)

    def tombstones(self) -> list[tuple[str, str | None, datetime]]:
        return list(self.tombs)


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _claim(cid: str, iat: float = NOW - 10, tenant: str = "acme", project: str = "web") -> Any:
    return TenantClaim(
        tenant, project, "u", ("keys.read",), "j", int(iat), int(iat), int(iat) + 300, "k", cid
    )


def _change(kind: str, entity: str, at: float = NOW) -> ChangeRecord:
    return ChangeRecord(1, kind, entity, _dt(at))


@pytest.fixture
def world() -> tuple[ClaimRevocations, _Stores, _Clock]:
    stores, clock = _Stores(), _Clock()
    rev = ClaimRevocations(stores, stores, stores, clock=clock)  # type: ignore[arg-type]
    rev.load()
    return rev, stores, clock


def _refused(rev: ClaimRevocations, claim: Any, now: float = NOW) -> bool:
    try:
        rev.check_claim(claim, now)
    except Unauthenticated as err:
        assert err.reason in ("CLAIM_REVOKED", "CLAIM_NO_CREDENTIAL")
        return True
    return False


def test_revoked_or_deleted_credentials_refuse_every_claim(world: Any) -> None:
    rev, stores, _ = world
    stores.keys["key_a"] = replace(KEY, state="revoked", revoke_time=_dt(NOW))
    assert not _refused(rev, _claim("key_a"))
    rev.on_change(_change("api_key", "key_a"))
    assert _refused(rev, _claim("key_a"))
    assert not _refused(rev, _claim("key_b"))
    rev.on_change(_change("session", "ses_gone"))  # purged: the row is gone
    assert _refused(rev, _claim("ses_gone"))


def test_rotation_grace_ends_the_old_keys_claims_at_its_end(world: Any) -> None:
    rev, stores, _ = world
    stores.keys["key_a"] = replace(KEY, expire_time=_dt(NOW + 60))
    rev.on_change(_change("api_key", "key_a"))
    assert not _refused(rev, _claim("key_a"), NOW + 59)
    assert _refused(rev, _claim("key_a"), NOW + 60)


def test_a_rotated_session_refuses_claims_issued_before_the_rotation(world: Any) -> None:
    rev, stores, _ = world
    stores.sessions["ses_a"] = SESSION
    rev.on_change(_change("session", "ses_a", at=NOW + 0.5))
    assert _refused(rev, _claim("ses_a", iat=NOW - 1))
    assert not _refused(rev, _claim("ses_a", iat=NOW + 1), NOW + 1)
    # A claim of the rotation's own second is refused too (it may carry the old scopes); the
    # new token's claims are minted from the next second on (issue_floor).
    assert _refused(rev, _claim("ses_a", iat=int(NOW + 0.5)))
    assert rev.issue_floor("ses_a") == int(NOW + 0.5) + 1
    assert rev.issue_floor("ses_other") == 0.0


def test_claims_without_a_credential_are_refused(world: Any) -> None:
    rev, _, _ = world
    assert _refused(rev, _claim(""))


def test_purge_tombstones_refuse_claims_and_calls_without_claims(world: Any) -> None:
    rev, stores, _ = world
    stores.tombs = [("gone", None, _dt(NOW)), ("acme", "old", _dt(NOW))]
    rev.on_change(_change("purge", "gone"))
    assert _refused(rev, _claim("key_a", tenant="gone", iat=NOW + 100), NOW + 100)  # any iat
    assert _refused(rev, _claim("key_a", project="old"))
    assert not _refused(rev, _claim("key_a"))
    with pytest.raises(FailedPrecondition) as err:
        rev.check_scope("gone", "any")
    assert err.value.reason == "SCOPE_PURGED"
    with pytest.raises(FailedPrecondition):
        rev.check_scope("acme", "old")
    rev.check_scope("acme", "web")
    rev.check_scope("acme", None)


def test_the_set_only_remembers_what_a_live_claim_could_need(world: Any) -> None:
    rev, stores, clock = world
    for i in range(1000):
        stores.keys[f"key_{i}"] = replace(
            KEY, key_id=f"key_{i}", state="revoked", revoke_time=_dt(NOW)
        )
        rev.on_change(_change("api_key", f"key_{i}"))
    assert len(rev) == 1000
    clock.now = NOW + 300
    assert rev.prune() == 1000  # a claim minted just before the revocation may still be alive
    clock.now = NOW + 306
    assert rev.prune() == 0
    assert not _refused(rev, _claim("key_0", iat=NOW), NOW + 1)  # ...and no such claim is


def test_a_replica_started_later_replays_the_recent_feed(world: Any) -> None:
    _, stores, clock = world
    stores.keys["key_a"] = replace(KEY, state="revoked", revoke_time=_dt(NOW - 5))

    class Feed:
        def since(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
            if seq:
                return []
            return [
                ChangeRecord(1, "api_key", "key_old", _dt(NOW - 3600)),
                ChangeRecord(2, "api_key", "key_a", _dt(NOW - 5)),
            ]

    fresh = ClaimRevocations(stores, stores, stores, clock=clock)  # type: ignore[arg-type]
    fresh.load(Feed())  # type: ignore[arg-type]
    assert _refused(fresh, _claim("key_a"))
    assert len(fresh) == 1  # the hour-old change is past any claim's lifetime


def test_claims_without_a_credential_are_accepted_only_in_the_upgrade_window() -> None:
    """A claim of the previous release (no ``cid``) is refused unless the window is open."""
    stores = _Stores()
    strict = ClaimRevocations(stores, stores, stores, clock=_Clock())  # type: ignore[arg-type]
    window = ClaimRevocations(
        stores,  # type: ignore[arg-type]
        stores,  # type: ignore[arg-type]
        stores,  # type: ignore[arg-type]
        clock=_Clock(),
        accept_without_credential=True,
    )
    for rev in (strict, window):
        rev.load()
    legacy = _claim("")
    with pytest.raises(Unauthenticated) as refused:
        strict.check_claim(legacy, NOW)
    assert refused.value.reason == "CLAIM_NO_CREDENTIAL"
    assert window.check_claim(legacy, NOW) is legacy
    stores.tombs.append(("acme", None, _dt(NOW - 1)))
    window.load()
    assert _refused(window, legacy)  # a purge tombstone still refuses it
