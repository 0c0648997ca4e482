"""API-key and session use cases over a real SQLite store, with injected clocks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from zumik_secrets.app import api_keys as api_keys_module
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.api_keys import ApiKeyService, decode_page_token, encode_page_token
from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.claim_issuer import ClaimIssuer
from zumik_secrets.app.rate_limit import BucketSpec, FailureLimiter
from zumik_secrets.app.sessions import SessionService
from zumik_secrets.app.signing_keys import SigningKeys
from zumik_secrets.app.verification import FailureGuard, VerifyResult
from zumik_secrets.core import api_keys as key_format
from zumik_secrets.core.authority import Authority
from zumik_secrets.core.errors import InvalidArgument, ResourceExhausted
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.core.names import ProjectName, SessionName
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.ports import Store
from zumik_secrets.storage.records import ChangeRecord

PARENT = ProjectName("tenant-a", "proj")
GATEWAY = Actor(identity="spiffe://zumik.local/svc/gateway")


class Clock:
    """A settable clock serving both unix and monotonic time."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Audit:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        self.entries.append(entry)

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Iterator[None]:
        yield
        self.entries.extend(entries)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/z.db")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def issuer(store: Store, clock: Clock) -> ClaimIssuer:
    keys = SigningKeys(
        store.signing_keys,
        MasterKeyring.from_text(generate_keyring()),
        purpose="claims",
        audience="zumik-secrets",
    )
    keys.load()
    return ClaimIssuer(lambda: keys.signer, 300, clock=clock)


@pytest.fixture
def service(store: Store, issuer: ClaimIssuer, audit: Audit, clock: Clock) -> ApiKeyService:
    return ApiKeyService(
        store.api_keys, issuer, audit, FailureGuard(), clock=clock, monotonic=clock
    )


@pytest.fixture
def sessions(store: Store, issuer: ClaimIssuer, audit: Audit, clock: Clock) -> SessionService:
    return SessionService(
        store.sessions,
        issuer,
        audit,
        FailureGuard(),
        idle_timeout=timedelta(seconds=60),
        clock=clock,
        monotonic=clock,
    )


def _create(service: ApiKeyService, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "display_name": "k",
        "scopes": ["keys.read"],
        "ttl": None,
        "environment": "",
        "actor": Actor(),
        "authority": Authority.unbounded(),
    }
    args.update(kw)
    return service.create(PARENT, **args)


def _count_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    original = store.api_keys.get_by_id

    def counting(key_id: str) -> Any:
        reads.append(key_id)
        return original(key_id)

    monkeypatch.setattr(store.api_keys, "get_by_id", counting)
    return reads


def test_warm_verify_reads_nothing_and_reuses_claim_until_half_life(
    service: ApiKeyService, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = _create(service)
    reads = _count_reads(store, monkeypatch)
    first = service.verify(created.raw_key, [], GATEWAY)
    assert first.result is VerifyResult.VALID and first.claim is not None
    assert len(reads) == 1
    assert service.verify(created.raw_key, ["keys.read"], GATEWAY).claim == first.claim
    assert len(reads) == 1  # warm: no database read
    clock.now += 149  # past the 60 s cache safety TTL: one re-read, same claim
    again = service.verify(created.raw_key, ["keys.read"], GATEWAY)
    assert again.claim == first.claim and len(reads) == 2
    clock.now += 2  # less than half of the 300 s lifetime left: a new claim
    third = service.verify(created.raw_key, [], GATEWAY)
    assert third.claim is not None and third.claim.token != first.claim.token
    assert third.claim.expires_at == int(clock.now) + 300


def test_unknown_id_costs_a_hash_compare_and_is_negatively_cached(
    service: ApiKeyService, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    compares: list[bytes] = []
    original = key_format.check_secret

    def counting(stored: bytes, salt: bytes, secret: str) -> None:
        compares.append(stored)
        original(stored, salt, secret)

    monkeypatch.setattr(key_format, "check_secret", counting)
    reads = _count_reads(store, monkeypatch)
    unknown = key_format.generate_api_key("live").raw
    assert service.verify(unknown, [], GATEWAY).result is VerifyResult.NOT_FOUND
    assert service.verify(unknown, [], GATEWAY).result is VerifyResult.NOT_FOUND
    assert len(compares) == 2 and len(reads) == 1  # second answer from the negative cache
    clock.now += 3
    service.verify(unknown, [], GATEWAY)
    assert len(reads) == 2


def test_change_record_invalidates_and_a_racing_read_is_not_cached(
    service: ApiKeyService, store: Store, clock: Clock
) -> None:
    created = _create(service)
    key_id = created.record.key_id
    assert service.verify(created.raw_key, [], GATEWAY).result is VerifyResult.VALID
    # Revoked by "another replica": straight in the store, so this process still has it cached.
    store.api_keys.revoke("tenant-a", "proj", key_id, api_keys_module._dt(clock.now))
    assert service.verify(created.raw_key, [], GATEWAY).result is VerifyResult.VALID
    service.on_change(ChangeRecord(1, "api_key", key_id, api_keys_module._dt(clock.now)))
    assert service.verify(created.raw_key, [], GATEWAY).result is VerifyResult.REVOKED

    other = _create(service)
    original = store.api_keys.get_by_id

    def racing(kid: str) -> Any:
        rec = original(kid)
        service.invalidate(kid)  # an invalidation lands while the read is in flight
        return rec

    store.api_keys.get_by_id = racing  # type: ignore[method-assign]
    try:
        service.verify(other.raw_key, [], GATEWAY)
    finally:
        store.api_keys.get_by_id = original  # type: ignore[method-assign]
    assert other.record.key_id not in service._cache


def test_last_used_is_written_in_one_batch(
    service: ApiKeyService, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = _create(service)
    batches: list[dict[str, Any]] = []
    original = store.api_keys.record_last_used
    monkeypatch.setattr(
        store.api_keys,
        "record_last_used",
        lambda updates: (batches.append(dict(updates)), original(updates))[1],
    )
    for _ in range(100):
        clock.now += 0.01
        service.verify(created.raw_key, [], GATEWAY)
    assert batches == []
    assert service.flush_last_used() == 1
    assert len(batches) == 1 and list(batches[0]) == [created.record.key_id]
    assert service.flush_last_used() == 0
    rec = store.api_keys.get_by_id(created.record.key_id)
    assert rec is not None and rec.last_used_at is not None
    assert abs(rec.last_used_at.timestamp() - clock.now) < 0.001


def test_audit_records_every_verification_without_secrets(
    service: ApiKeyService, audit: Audit
) -> None:
    created = _create(service)
    service.verify(created.raw_key, [], GATEWAY)
    service.verify("garbage", [], GATEWAY)
    service.verify(created.raw_key, ["admin"], GATEWAY)
    verifies = [e for e in audit.entries if e.action == "api_key.verify"]
    assert [e.reason for e in verifies] == ["VALID", "MALFORMED", "INSUFFICIENT_SCOPE"]
    assert [e.outcome for e in verifies] == ["success", "failure", "failure"]
    assert {e.action for e in audit.entries} >= {"api_key.create"}
    secret = key_format.parse_api_key(created.raw_key).secret
    assert not any(secret[:12] in repr(e) for e in audit.entries)


def test_rate_limited_failures_raise_and_valid_keys_pass(
    store: Store, issuer: ClaimIssuer, audit: Audit, clock: Clock
) -> None:
    guard = FailureGuard(BucketSpec(1, 100), BucketSpec(1, 2))
    service = ApiKeyService(store.api_keys, issuer, audit, guard, clock=clock, monotonic=clock)
    created = _create(service)
    parsed = key_format.parse_api_key(created.raw_key)
    wrong = key_format.format_api_key("live", parsed.key_id, "x" * 32)
    assert service.verify(wrong, [], GATEWAY).result is VerifyResult.NOT_FOUND
    assert service.verify(wrong, [], GATEWAY).result is VerifyResult.NOT_FOUND
    with pytest.raises(ResourceExhausted) as info:
        service.verify(wrong, [], GATEWAY)
    assert info.value.reason == "VERIFY_RATE_LIMITED" and info.value.retry_after_seconds > 0
    assert audit.entries[-1].outcome == "denied"
    assert service.verify(created.raw_key, [], GATEWAY).result is VerifyResult.VALID


def test_failure_limiter_refills_at_its_rate(clock: Clock) -> None:
    limiter = FailureLimiter(BucketSpec(rate=2.0, burst=3.0), clock=clock, max_buckets=2)
    assert [limiter.charge("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.charge("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.charge("a") == 0.0
    assert limiter.blocked_for("a") == pytest.approx(0.5)
    limiter.charge("b")
    limiter.charge("c")
    assert len(limiter) == 2  # bounded: the least recently charged bucket went


def test_page_tokens_bind_parent_and_filter() -> None:
    token = encode_page_token(42, PARENT, True)
    assert decode_page_token(token, PARENT, True) == 42
    for parent, show in ((ProjectName("tenant-b", "proj"), True), (PARENT, False)):
        with pytest.raises(InvalidArgument) as info:
            decode_page_token(token, parent, show)
        assert info.value.reason == "INVALID_PAGE_TOKEN"


def test_session_idle_window_slides_in_memory_between_flushes(
    sessions: SessionService, store: Store, clock: Clock
) -> None:
    issued = sessions.create(
        PARENT,
        user_subject="user-1",
        scopes=["a"],
        idle_timeout=None,
        absolute_timeout=timedelta(minutes=5),
        actor=Actor(),
        authority=Authority.unbounded(),
    )
    for _ in range(4):  # 4 x 50 s: each use slides the 60 s idle window; nothing flushed
        clock.now += 50
        assert sessions.verify(issued.token, [], GATEWAY).result is VerifyResult.VALID
    stored = store.sessions.get("tenant-a", "proj", issued.record.session_id)
    assert stored is not None and stored.last_seen_at == issued.record.last_seen_at
    assert sessions.flush_touches() == 1
    clock.now += 61
    assert sessions.verify(issued.token, [], GATEWAY).result is VerifyResult.EXPIRED
    # Absolute timeout wins whatever the use.
    other = sessions.create(
        PARENT,
        user_subject="user-2",
        scopes=["a"],
        idle_timeout=None,
        absolute_timeout=timedelta(minutes=2),
        actor=Actor(),
        authority=Authority.unbounded(),
    )
    for _ in range(2):
        clock.now += 50
        assert sessions.verify(other.token, [], GATEWAY).result is VerifyResult.VALID
    clock.now += 21
    assert sessions.verify(other.token, [], GATEWAY).result is VerifyResult.EXPIRED


def test_session_sweep_deletes_dead_sessions_after_the_margin(
    sessions: SessionService, store: Store, clock: Clock
) -> None:
    live = sessions.create(
        PARENT,
        user_subject="u",
        scopes=["a"],
        idle_timeout=None,
        absolute_timeout=None,
        actor=Actor(),
        authority=Authority.unbounded(),
    )
    dead = sessions.create(
        PARENT,
        user_subject="v",
        scopes=["a"],
        idle_timeout=None,
        absolute_timeout=None,
        actor=Actor(),
        authority=Authority.unbounded(),
    )
    for _ in range(3):
        clock.now += 50
        sessions.verify(live.token, [], GATEWAY)  # kept alive in memory only
    assert sessions.sweep() == 1  # the idle one (dead 90 s, past the 60 s margin)
    assert store.sessions.get("tenant-a", "proj", dead.record.session_id) is None
    assert sessions.get(SessionName("tenant-a", "proj", live.record.session_id)) is not None
    assert sessions.verify(live.token, [], GATEWAY).result is VerifyResult.VALID


def test_session_rotation_kills_the_old_token(sessions: SessionService) -> None:
    issued = sessions.create(
        PARENT,
        user_subject="u",
        scopes=["a", "b"],
        idle_timeout=None,
        absolute_timeout=None,
        actor=Actor(),
        authority=Authority.unbounded(),
    )
    first = sessions.verify(issued.token, [], GATEWAY)
    assert first.claim is not None
    name = SessionName("tenant-a", "proj", issued.record.session_id)
    rotated = sessions.rotate(name, ["a"], Actor(), authority=Authority.unbounded())
    assert sessions.verify(issued.token, [], GATEWAY).result is VerifyResult.NOT_FOUND
    answer = sessions.verify(rotated.token, [], GATEWAY)
    assert answer.result is VerifyResult.VALID and answer.claim is not None
    assert answer.claim.token != first.claim.token  # new scopes, new claim
    assert sessions.verify(rotated.token, ["b"], GATEWAY).result is (
        VerifyResult.INSUFFICIENT_SCOPE
    )


def test_claim_expires_no_later_than_its_key_even_when_cached(
    service: ApiKeyService, issuer: ClaimIssuer, clock: Clock
) -> None:
    """Adversary finding: a claim minted just before a key's ttl ran out outlived the key."""
    created = _create(service, ttl=timedelta(seconds=100))
    first = service.verify(created.raw_key, [], GATEWAY).claim
    assert first is not None and first.expires_at == int(clock.now) + 100
    clock.now += 99.5  # half a second left: a one-second claim, not the 300 s one
    last = service.verify(created.raw_key, [], GATEWAY).claim
    assert last is not None and last.expires_at <= int(clock.now) + 1
    # The issuer never hands back a cached claim that outlives the credential's new end.
    long = issuer.issue("key_x", "acme", "web", "key_x", ["keys.read"])
    assert long.expires_at == int(clock.now) + 300
    short = issuer.issue("key_x", "acme", "web", "key_x", ["keys.read"], not_after=clock.now + 10)
    assert short.token != long.token and short.expires_at <= clock.now + 10


def test_warm_verify_skips_the_parse_and_hash_only_while_the_entry_lives(
    service: ApiKeyService, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second verification of a key matches its digest against the mark on the key's cache
    entry instead of parsing and hashing again; a change of the key (revocation by another
    replica, seen through the change feed) drops the mark with the entry, so the revocation
    is answered at once, and a wrong key never reaches the mark."""
    created = _create(service)
    key_id = created.record.key_id
    parses: list[str] = []
    original_parse = key_format.parse_api_key

    def counting(raw: str) -> key_format.ParsedApiKey:
        parses.append(raw[:3])
        return original_parse(raw)

    monkeypatch.setattr(key_format, "parse_api_key", counting)
    assert service.verify(created.raw_key, [], GATEWAY).result is VerifyResult.VALID
    assert service.verify(created.raw_key, [], GATEWAY).result is VerifyResult.VALID
    assert len(parses) == 1  # warm: the digest mark answered
    assert created.raw_key.encode() not in repr(service._verified).encode()

    raw = created.raw_key
    wrong = raw[:-7] + ("A" if raw[-7] != "A" else "B") + raw[-6:]
    assert service.verify(wrong, [], GATEWAY).result is not VerifyResult.VALID
    assert len(parses) == 2  # a different text is parsed (and refused) in full

    store.api_keys.revoke("tenant-a", "proj", key_id, api_keys_module._dt(clock.now))
    service.on_change(ChangeRecord(1, "api_key", key_id, api_keys_module._dt(clock.now)))
    assert service.verify(created.raw_key, [], GATEWAY).result is VerifyResult.REVOKED
    assert len(parses) == 3  # the mark went with the entry: full path, revoked record


def test_digest_marks_are_bounded(store: Store, issuer: ClaimIssuer, audit: Audit) -> None:
    service = ApiKeyService(store.api_keys, issuer, audit, FailureGuard(), cache_entries=2)
    raws = [_create(service).raw_key for _ in range(4)]
    for raw in raws:
        assert service.verify(raw, [], GATEWAY).result is VerifyResult.VALID
    assert len(service._verified) == 2
