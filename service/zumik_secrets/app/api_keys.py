"""API keys: create, verify, list, get, revoke, rotate.

Verify path (hot): ``parse_api_key`` (format and CRC32 check, no database) -> the in-memory
cache by key id -> on a miss one ``get_by_id`` -> constant-time ``check_secret`` -> environment,
state, expiry and scopes -> a tenant claim (reused while it has half its life left). A malformed,
unknown or mismatched key is an ordinary answer. An unknown id still costs a hash comparison
(against a fixed dummy hash) so known and unknown ids take the same path; a mismatched secret
answers NOT_FOUND exactly like an unknown id, and the state of a key (revoked, expired) is only
disclosed to a caller holding its secret.

Cache: at most ``cache_entries`` keys (oldest evicted first), each kept ``positive_ttl`` seconds
at most; unknown ids are remembered ``negative_ttl`` seconds in a separate bounded map so random
ids cannot evict real keys. Entries are dropped at once by a local revoke or rotate, and by every
``api_key`` change record (:meth:`ApiKeyService.on_change`, fed by the change watcher: PostgreSQL
NOTIFY or a 250 ms poll). Revocation therefore reaches every process within the watcher's poll
interval plus one feed read (under 1 s); a generation counter stops a lookup that raced with an
invalidation from caching what it read.

Warm verify: a key whose secret matched its cached record is remembered by the SHA-256 of the
raw key (never the key; at most ``cache_entries`` digests) on that cache entry, so the next
verification of the same key skips the parse, CRC32 and salted hash: one SHA-256 and two dict
look-ups, then the same state, expiry, scope and claim steps as every call. The mark lives on
the cache entry, so whatever drops the entry (a revoke, rotate or any ``api_key`` change, the
positive TTL) drops it too: revocation reaches warm verifies within the same bound.

``last_used_at`` is kept in memory and written in batches by :meth:`flush_last_used` (called by
the usage flusher every second or so), never once per verification.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry, AuditRecorder, audited_change, event
from zumik_secrets.app.claim_issuer import ClaimIssuer, IssuedClaim
from zumik_secrets.app.claim_revocations import REASON_CLAIM_REVOKED
from zumik_secrets.app.verification import (
    MAX_REQUIRED_SCOPES,
    FailureGuard,
    VerifyResult,
    field_required,
    record_verification,
    validate_scopes,
)
from zumik_secrets.core import api_keys as key_format
from zumik_secrets.core import page_tokens
from zumik_secrets.core.authority import Authority, check_grant
from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
    resource_not_found,
)
from zumik_secrets.core.handles import KIND_API_KEY, KIND_SESSION
from zumik_secrets.core.names import ApiKeyName, ProjectName
from zumik_secrets.core.primitives import sha256
from zumik_secrets.storage.ports import ApiKeyStore
from zumik_secrets.storage.records import ApiKeyRecord, ChangeRecord


def _nothing() -> None:
    """The default ``after_change``: no change feed to apply (unit tests)."""


MAX_DISPLAY_NAME = 128
MAX_KEY_SCOPES = 32
MAX_TTL = timedelta(days=3650)
MAX_GRACE = timedelta(days=30)
DEFAULT_ENV = "live"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
REASON_INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 (a reason code)

# A fixed salt and hash that no secret matches: an unknown id is compared against it so that it
# costs what a known id costs.
_DUMMY_SALT = bytes(range(key_format.SALT_LENGTH))
_DUMMY_HASH = sha256(b"zumik/api-key/dummy")


def _unix(value: datetime) -> float:
    return value.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def api_key_name(rec: ApiKeyRecord) -> str:
    """The resource name of a key: ``tenants/{t}/projects/{p}/apiKeys/key_{id}``."""
    return f"tenants/{rec.tenant_id}/projects/{rec.project_id}/apiKeys/{rec.key_id}"


def key_state(rec: ApiKeyRecord, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired`` (an active key past its expire_time)."""
    if rec.state != "active":
        return "revoked"
    if rec.expire_time is not None and rec.expire_time <= now:
        return "expired"
    return "active"


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    """A new key: its stored record and the raw key (hidden from repr), shown once."""

    record: ApiKeyRecord
    raw_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RotatedApiKey:
    """The outcome of a rotation: the new key (raw shown once) and the old one afterwards."""

    record: ApiKeyRecord
    raw_key: str = field(repr=False)
    previous: ApiKeyRecord


@dataclass(frozen=True, slots=True)
class ApiKeyVerification:
    """The answer to a verification.

    Attributes:
        result: The outcome.
        record: The key, when found and its secret matched (None for MALFORMED and NOT_FOUND).
        claim: The minted claim, only when VALID.
    """

    result: VerifyResult
    record: ApiKeyRecord | None = None
    claim: IssuedClaim | None = None


@dataclass(slots=True)
class _Entry:
    record: ApiKeyRecord
    expire_ts: float
    until: float
    verified: bytes = b""
    """SHA-256 of the raw key found to match this very record (format, checksum, secret and
    environment checked once); an entry re-read after any change starts without it."""


def _bad(field_name: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field_name} {message}",
        reason=reason,
        metadata={"field": field_name},
        violations=[FieldViolation(field_name, message)],
    )


def validate_display_name(value: str) -> str:
    """Return ``value`` if it is at most 128 printable characters.

    Raises:
        InvalidArgument: reason ``INVALID_DISPLAY_NAME``.
    """
    if len(value) > MAX_DISPLAY_NAME or not value.isprintable():
        raise _bad(
            "display_name",
            f"must be at most {MAX_DISPLAY_NAME} printable characters",
            "INVALID_DISPLAY_NAME",
        )
    return value


def validate_environment(value: str) -> str:
    """Return the environment (``live`` when empty) if it matches ``^[a-z]{2,8}$``.

    Raises:
        InvalidArgument: reason ``INVALID_ENVIRONMENT``.
    """
    env = value or DEFAULT_ENV
    if key_format.ENV_RE.fullmatch(env) is None:
        raise _bad("environment", "must be 2 to 8 lower-case letters", "INVALID_ENVIRONMENT")
    return env


class ApiKeyService:
    """The API-key use cases. Thread-safe; one instance per process."""

    def __init__(
        self,
        store: ApiKeyStore,
        claims: ClaimIssuer,
        audit: AuditRecorder,
        guard: FailureGuard,
        *,
        cache_entries: int = 100_000,
        positive_ttl: float = 60.0,
        negative_ttl: float = 2.0,
        negative_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the service.

        Args:
            store: Where keys live.
            claims: Mints (and reuses) tenant claims for valid keys.
            audit: Where every create, verify, revoke and rotate is recorded.
            guard: Failure rate limiter.
            cache_entries: Bound on cached keys.
            positive_ttl: Longest a cached key is trusted without a re-read (a safety net; the
                change feed invalidates it much sooner).
            negative_ttl: How long an unknown id is remembered.
            negative_entries: Bound on remembered unknown ids.
            clock: Unix time in seconds.
            monotonic: Monotonic seconds, for cache ages.
        """
        self._store = store
        self._claims = claims
        self._audit = audit
        self._guard = guard
        self._max = cache_entries
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._max_negative = negative_entries
        self._clock = clock
        self._mono = monotonic
        self._lock = threading.Lock()
        self.after_change: Callable[[], None] = _nothing
        """Applies the change feed in this process before a revoking or rotating call answers
        (the server wires the change watcher and the claim revocations), so no claim of the
        credential is accepted here once the caller was told it is revoked."""
        self.before_verify: Callable[[], None] = _nothing
        """Brings the feed-invalidated caches up to date if this process fell behind the
        change feed (paused or starved; the server wires ``ChangeWatcher.catch_up``)."""
        self._cache: dict[str, _Entry] = {}
        self._negative: dict[str, float] = {}
        self._generation = 0
        #: Look-ups answered from memory (positive or negative entry) and from the store; read
        #: by the metrics when scraped. Unlocked: a racing increment may be lost, never invented.
        self.cache_hits = 0
        self.cache_misses = 0
        self._used: dict[str, float] = {}
        self._verified: dict[bytes, str] = {}
        """Key id by SHA-256 of a raw key that matched its record once: at most
        ``cache_entries``, oldest first out. Never the raw key; a hit still needs the key's
        cache entry to carry the same digest (see :class:`_Entry`)."""

    # -- cache ---------------------------------------------------------------------------------

    def cache_size(self) -> int:
        """Number of cached keys (positive entries)."""
        return len(self._cache)

    def _lookup(self, key_id: str) -> _Entry | None:
        now = self._mono()
        entry = self._cache.get(key_id)
        if entry is not None and entry.until > now:
            self.cache_hits += 1
            return entry
        negative_until = self._negative.get(key_id)
        if negative_until is not None and negative_until > now:
            self.cache_hits += 1
            return None
        self.cache_misses += 1
        generation = self._generation
        rec = self._store.get_by_id(key_id)
        with self._lock:
            if generation != self._generation:
                # An invalidation raced with the read: answer from it, but do not cache it.
                return None if rec is None else self._entry(rec, now)
            if rec is None:
                self._negative.pop(key_id, None)
                self._negative[key_id] = now + self._negative_ttl
                while len(self._negative) > self._max_negative:
                    del self._negative[next(iter(self._negative))]
                self._cache.pop(key_id, None)
                return None
            entry = self._entry(rec, now)
            self._cache.pop(key_id, None)
            self._cache[key_id] = entry
            self._negative.pop(key_id, None)
            while len(self._cache) > self._max:
                del self._cache[next(iter(self._cache))]
            return entry

    def _entry(self, rec: ApiKeyRecord, now: float) -> _Entry:
        expire_ts = math.inf if rec.expire_time is None else _unix(rec.expire_time)
        return _Entry(rec, expire_ts, now + self._positive_ttl)

    def invalidate(self, key_id: str) -> None:
        """Forget what this process knows about a key (its cache entry and cached claim)."""
        with self._lock:
            self._generation += 1
            self._cache.pop(key_id, None)
            self._negative.pop(key_id, None)
        self._claims.forget(key_id)

    def on_change(self, record: ChangeRecord) -> None:
        """Change-feed subscriber for ``api_key`` records."""
        self.invalidate(record.entity_id)

    # -- verify --------------------------------------------------------------------------------

    def verify(
        self, raw_key: str, required_scopes: Sequence[str], actor: Actor
    ) -> ApiKeyVerification:
        """Verify a presented key (see the module docstring for the path).

        Raises:
            InvalidArgument: ``key`` empty (``FIELD_REQUIRED``) or a malformed required scope.
            ResourceExhausted: reason ``VERIFY_RATE_LIMITED``: too many failures lately from
                this caller or for this key id.
            Unavailable: storage is down on a cache miss.
        """
        if not raw_key:
            raise field_required("key")
        needed = validate_scopes(
            required_scopes, "required_scopes", maximum=MAX_REQUIRED_SCOPES, required=False
        )
        self.before_verify()
        digest = (
            sha256(raw_key.encode("ascii"))
            if len(raw_key) <= key_format.MAX_RAW_LENGTH and raw_key.isascii()
            else b""
        )
        known = self._verified.get(digest) if digest else None
        entry = self._lookup(known) if known is not None else None
        if entry is not None and known is not None and entry.verified == digest:
            # This very key matched this very record before (the entry is dropped by any
            # change of the key): format, checksum, secret and environment hold as they did.
            handle = known
            rec = entry.record
        else:
            try:
                parsed = key_format.parse_api_key(raw_key)
            except InvalidArgument:
                return self._failed(VerifyResult.MALFORMED, None, None, actor)
            handle = parsed.handle
            if handle != known:
                entry = self._lookup(handle)
            if entry is None:
                with contextlib.suppress(key_format.ApiKeyMismatch):
                    key_format.check_secret(_DUMMY_HASH, _DUMMY_SALT, parsed.secret)
                return self._failed(VerifyResult.NOT_FOUND, handle, None, actor)
            rec = entry.record
            try:
                key_format.check_secret(rec.secret_hash, rec.salt, parsed.secret)
            except key_format.ApiKeyMismatch:
                return self._failed(VerifyResult.NOT_FOUND, handle, None, actor)
            if parsed.env != rec.env:
                # The checksum covers the env, but the hash does not: a re-labelled key is
                # unknown.
                return self._failed(VerifyResult.NOT_FOUND, handle, None, actor)
            self._remember(digest, handle, entry)
        now = self._clock()
        if rec.state != "active":
            return self._failed(VerifyResult.REVOKED, handle, rec, actor)
        if now >= entry.expire_ts:
            return self._failed(VerifyResult.EXPIRED, handle, rec, actor)
        if needed and not set(needed).issubset(rec.scopes):
            self._audit_verify(VerifyResult.INSUFFICIENT_SCOPE, handle, rec, actor)
            return ApiKeyVerification(VerifyResult.INSUFFICIENT_SCOPE, rec)
        claim = self._claims.issue(
            handle,
            rec.tenant_id,
            rec.project_id,
            handle,
            rec.scopes,
            not_after=None if entry.expire_ts == math.inf else entry.expire_ts,
        )
        with self._lock:
            self._used[handle] = now
        self._audit_verify(VerifyResult.VALID, handle, rec, actor)
        return ApiKeyVerification(VerifyResult.VALID, rec, claim)

    def _remember(self, digest: bytes, handle: str, entry: _Entry) -> None:
        """Note that the raw key of ``digest`` matched ``entry``'s record (bounded)."""
        if not digest:
            return
        entry.verified = digest
        with self._lock:
            self._verified.pop(digest, None)
            self._verified[digest] = handle
            while len(self._verified) > self._max:
                del self._verified[next(iter(self._verified))]

    def _failed(
        self,
        result: VerifyResult,
        handle: str | None,
        rec: ApiKeyRecord | None,
        actor: Actor,
    ) -> ApiKeyVerification:
        self._audit_verify(result, handle, rec, actor)
        return ApiKeyVerification(result, rec)

    def _audit_verify(
        self,
        result: VerifyResult,
        handle: str | None,
        rec: ApiKeyRecord | None,
        actor: Actor,
    ) -> None:
        tenant = rec.tenant_id if rec is not None else None
        target = api_key_name(rec) if rec is not None else (handle or "")
        record_verification(
            self._audit,
            actor,
            "api_key.verify",
            tenant,
            target,
            result,
            guard=self._guard,
            credential_id=handle,
            stored=rec is not None,
        )

    # -- last used -----------------------------------------------------------------------------

    def flush_last_used(self) -> int:
        """Write the batched last-used times; returns how many keys were written.

        On a storage failure the batch is kept for the next flush.
        """
        with self._lock:
            batch, self._used = self._used, {}
        if not batch:
            return 0
        try:
            self._store.record_last_used({k: _dt(v) for k, v in batch.items()})
        except Unavailable:
            with self._lock:
                for key_id, ts in batch.items():
                    if self._used.get(key_id, 0.0) < ts:
                        self._used[key_id] = ts
            raise
        return len(batch)

    def _overlay(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        pending = self._used.get(rec.key_id)
        if pending is None:
            return rec
        seen = _dt(pending)
        if rec.last_used_at is not None and rec.last_used_at >= seen:
            return rec
        return replace(rec, last_used_at=seen)

    # -- minting authority ---------------------------------------------------------------------

    def minting_bound(self, claim: TenantClaim) -> datetime | None:
        """The latest instant a credential minted with ``claim``'s authority may be valid
        (:attr:`Authority.not_after`; the rules are in :mod:`zumik_secrets.core.authority`).

        One fresh read of the key by the claim's ``cid`` (never the cache: a rotation may have
        shortened it); the authorizer calls it on the methods that mint or rotate credentials
        only, never on the verify or read paths.

        Returns:
            The expiry of the API key the claim was minted from; None for a key without expiry
            or a session's claim; the claim's own ``exp`` when the key is not in the store (or
            the ``cid`` names neither a key nor a session): deny by default.

        Raises:
            Unauthenticated: ``CLAIM_REVOKED``, the key was revoked (this read sees it before
                the change feed has reached this replica's claim cut-offs).
            Unavailable: storage is down.
        """
        kind = claim.credential_id.partition("_")[0]
        if kind == KIND_SESSION:
            return None
        if kind == KIND_API_KEY:
            rec = self._store.get_by_id(claim.credential_id)
            if (
                rec is not None
                and rec.tenant_id == claim.tenant_id
                and rec.project_id == claim.project_id
            ):
                if rec.state != "active":
                    raise Unauthenticated("tenant claim was revoked", reason=REASON_CLAIM_REVOKED)
                return rec.expire_time
        return _dt(claim.expires_at)

    # -- management ----------------------------------------------------------------------------

    def create(
        self,
        parent: ProjectName,
        *,
        display_name: str,
        scopes: Sequence[str],
        ttl: timedelta | None,
        environment: str,
        actor: Actor,
        authority: Authority,
    ) -> CreatedApiKey:
        """Create a key; the raw key is in the answer and nowhere else.

        Raises:
            InvalidArgument: a bad display name, environment, ttl or scope list.
            PermissionDenied: ``SCOPE_ESCALATION``: a scope the caller's authority lacks;
                ``LIFETIME_ESCALATION``: the caller's claim comes from an API key that expires
                and the new key would not (no ttl) or would expire after it.
            Unavailable: storage or (durable) audit is down; no usable key was created.
        """
        display_name = validate_display_name(display_name)
        env = validate_environment(environment)
        granted = validate_scopes(scopes, "scopes", maximum=MAX_KEY_SCOPES, required=True)
        if ttl is not None and not timedelta(0) < ttl <= MAX_TTL:
            raise _bad("ttl", "must be positive and at most 3650 days", "INVALID_DURATION")
        now = _dt(self._clock())
        expire_time = None if ttl is None else now + ttl
        check_grant(authority, granted, expire_time=expire_time)
        generated = key_format.generate_api_key(env)
        draft = ApiKeyRecord(
            key_id=generated.handle,
            tenant_id=parent.tenant,
            project_id=parent.project,
            display_name=display_name,
            env=env,
            masked_prefix=generated.masked_prefix,
            salt=generated.salt,
            secret_hash=generated.secret_hash,
            scopes=granted,
            state="active",
            created_at=now,
            expire_time=expire_time,
            revoke_time=None,
            last_used_at=None,
            rotated_from=None,
        )
        with audited_change(self._audit, self._issue_entry("api_key.create", draft, actor)):
            rec = self._store.insert(draft)
        return CreatedApiKey(rec, generated.raw)

    def _issue_entry(self, action: str, rec: ApiKeyRecord, actor: Actor) -> AuditEntry:
        """The event of a key issued (written in the transaction that stores the key)."""
        return event(
            actor,
            rec.tenant_id,
            action,
            api_key_name(rec),
            attributes={"scopes": " ".join(rec.scopes), "env": rec.env},
        )

    def get(self, name: ApiKeyName) -> ApiKeyRecord:
        """The key named ``name``.

        Raises:
            NotFound: no such key in this tenant and project (same answer as another tenant's).
        """
        rec = self._store.get(name.tenant, name.project, name.id)
        if rec is None:
            raise resource_not_found(str(name))
        return self._overlay(rec)

    def list(
        self, parent: ProjectName, *, page_size: int, page_token: str, show_revoked: bool
    ) -> tuple[list[ApiKeyRecord], str]:
        """One page of a project's keys, oldest first, and the next page's token ("" at the end).

        Raises:
            InvalidArgument: negative page_size (``INVALID_PAGE_SIZE``) or a page token that is
                malformed or was issued for another parent or filter (``INVALID_PAGE_TOKEN``).
        """
        if page_size < 0:
            raise _bad("page_size", "must not be negative", "INVALID_PAGE_SIZE")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token, parent, show_revoked) if page_token else None
        rows = self._store.list(
            parent.tenant,
            parent.project,
            page_size=size + 1,
            after_seq=after,
            include_revoked=show_revoked,
        )
        page = [self._overlay(r) for r in rows[:size]]
        token = encode_page_token(page[-1].seq, parent, show_revoked) if len(rows) > size else ""
        return page, token

    def revoke(self, name: ApiKeyName, actor: Actor) -> ApiKeyRecord:
        """Revoke a key now (idempotent); this process stops accepting it at once.

        The key's machine sessions (its project's sessions whose subject is the key's id: an
        API key's claim opens sessions only for itself) are revoked with it, in the same
        transaction, recorded as a ``session.revoke_user`` event of the key's id; their claims
        are refused like the key's.

        Raises:
            NotFound: no such key in this tenant and project.
        """
        entries = (
            event(actor, name.tenant, "api_key.revoke", str(name)),
            _machine_sessions_revoked(name, actor, "api_key.revoke"),
        )
        try:
            with audited_change(self._audit, *entries):
                rec = self._store.revoke(name.tenant, name.project, name.id, _dt(self._clock()))
                if rec is None:
                    raise resource_not_found(str(name))
        finally:
            self.invalidate(name.id)
        self.after_change()
        return self._overlay(rec)

    def rotate(
        self, name: ApiKeyName, grace: timedelta, actor: Actor, *, authority: Authority
    ) -> RotatedApiKey:
        """Issue a replacement key; the old one works for ``grace`` more (0: revoked now).

        The old key's machine sessions end with it: revoked now without grace, else their
        absolute expiry is brought down to the end of the grace (see :meth:`revoke`).

        The new key has the old one's scopes, environment, display name and lifetime length;
        since its raw key goes to the caller, the caller's authority must cover those scopes and
        that lifetime (a key rotated with the claim of an expiring key, itself included, would
        otherwise renew itself past its expiry).

        Raises:
            InvalidArgument: ``grace_period`` over 30 days (``INVALID_DURATION``).
            NotFound: no such key in this tenant and project.
            FailedPrecondition: the key is revoked (``API_KEY_REVOKED``) or expired
                (``API_KEY_EXPIRED``).
            PermissionDenied: ``SCOPE_ESCALATION``: the key carries a scope the caller lacks;
                ``LIFETIME_ESCALATION``: the new key would be valid after the expiry of the API
                key the caller's claim comes from.
            Unavailable: storage or (durable) audit is down.
        """
        if not timedelta(0) <= grace <= MAX_GRACE:
            raise _bad("grace_period", "must be from 0 to 30 days", "INVALID_DURATION")
        old = self._store.get(name.tenant, name.project, name.id)
        if old is None:
            raise resource_not_found(str(name))
        now = _dt(self._clock())
        lifetime = None if old.expire_time is None else old.expire_time - old.created_at
        expire_time = None if lifetime is None else now + lifetime
        check_grant(authority, old.scopes, expire_time=expire_time)
        state = key_state(old, now)
        if state != "active":
            raise FailedPrecondition(
                f"the API key is {state} and cannot be rotated",
                reason="API_KEY_REVOKED" if state == "revoked" else "API_KEY_EXPIRED",
                metadata={"resource": str(name)},
            )
        generated = key_format.generate_api_key(old.env)
        new_rec = replace(
            old,
            key_id=generated.handle,
            masked_prefix=generated.masked_prefix,
            salt=generated.salt,
            secret_hash=generated.secret_hash,
            created_at=now,
            expire_time=expire_time,
            revoke_time=None,
            last_used_at=None,
            rotated_from=old.key_id,
            seq=0,
        )
        entries = [self._issue_entry("api_key.rotate", new_rec, actor)]
        if not grace:
            # The old key is revoked now, and its machine sessions with it (with a grace they
            # are only bounded by its new expiry, the end of the grace).
            entries.append(_machine_sessions_revoked(name, actor, "api_key.rotate"))
        try:
            with audited_change(self._audit, *entries):
                inserted = self._store.insert_rotation(new_rec, old.key_id, now + grace)
        except NotFound:
            raise resource_not_found(str(name)) from None
        finally:
            self.invalidate(old.key_id)
        self.after_change()
        previous = self._store.get(name.tenant, name.project, name.id) or old
        return RotatedApiKey(inserted, generated.raw, self._overlay(previous))


def _machine_sessions_revoked(name: ApiKeyName, actor: Actor, cause: str) -> AuditEntry:
    """The event of a key's machine sessions revoked with it, shaped like RevokeUserSessions'
    (the project, the subject: the key's id); written with the key's change. The count is
    known only inside the transaction: as for RevokeUserSessions, the event names the subject."""
    return event(
        actor,
        name.tenant,
        "session.revoke_user",
        f"tenants/{name.tenant}/projects/{name.project}",
        attributes={"user_subject": name.id, "cause": cause},
    )


def _binding(parent: ProjectName, show_revoked: bool) -> str:
    return f"{parent}|{int(show_revoked)}"


def encode_page_token(seq: int, parent: ProjectName, show_revoked: bool) -> str:
    """An opaque, authenticated token (:mod:`zumik_secrets.core.page_tokens`) resuming after
    ``seq``, bound to the parent and filter."""
    return page_tokens.codec().encode("api_keys", _binding(parent, show_revoked), seq)


def decode_page_token(token: str, parent: ProjectName, show_revoked: bool) -> int:
    """The seq a page token resumes after.

    Raises:
        InvalidArgument: reason ``INVALID_PAGE_TOKEN`` if malformed, altered, out of range or
            issued for another parent or filter.
    """
    return page_tokens.codec().decode("api_keys", _binding(parent, show_revoked), token)[0]
