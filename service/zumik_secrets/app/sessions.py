"""Login sessions: create, verify (sliding idle and absolute timeouts), get, rotate, revoke.

Tokens are ``zs_`` + 256 random bits; only ``SHA-256(token)`` is stored, and it is the lookup key.
Verify checks the format without the database, then answers from an in-memory cache by token
hash (bounded, dropped on ``session`` change records and on local rotate and revoke, exactly as
API keys are; see :mod:`zumik_secrets.app.api_keys`), or reads the row on a miss.

Idle timeout: every VALID verification records "seen now" in memory; the idle check uses the
latest of that and the stored ``last_seen_at``, so the sliding window is exact between batched
writes (:meth:`SessionService.flush_touches`). When a cached session looks idle too long, the row
is read again before answering EXPIRED, since another replica may have seen it since.

Expired and revoked sessions are deleted by :meth:`SessionService.sweep` (run by the usage
flusher every few minutes), with a margin so a use another replica has not flushed yet cannot
lose its session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from zumik_secrets.app.actor import SYSTEM, Actor
from zumik_secrets.app.audit import AuditEntry, AuditRecorder, audited_change, event, record
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
from zumik_secrets.core import session_tokens
from zumik_secrets.core.authority import Authority, check_grant
from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    resource_not_found,
)
from zumik_secrets.core.handles import KIND_API_KEY, KIND_SESSION, new_handle
from zumik_secrets.core.names import ProjectName, SessionName
from zumik_secrets.storage.ports import SessionStore
from zumik_secrets.storage.records import ChangeRecord, SessionRecord


def _nothing() -> None:
    """The default ``after_change``: no change feed to apply (unit tests)."""


def _no_floor(_session_id: str) -> float:
    """The default ``claim_floor``: no rotation known."""
    return 0.0


MAX_SESSION_SCOPES = 32
MAX_SUBJECT = 256
MIN_TIMEOUT = timedelta(minutes=1)
MAX_IDLE_TIMEOUT = timedelta(days=7)
MAX_ABSOLUTE_TIMEOUT = timedelta(days=30)
DEFAULT_IDLE_TIMEOUT = timedelta(minutes=30)
DEFAULT_ABSOLUTE_TIMEOUT = timedelta(hours=12)
SWEEP_MARGIN = timedelta(minutes=1)
"""Sessions are deleted only once they have been dead this long (unflushed uses elsewhere)."""


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def session_name(rec: SessionRecord) -> str:
    """``tenants/{t}/projects/{p}/sessions/ses_{id}``."""
    return f"tenants/{rec.tenant_id}/projects/{rec.project_id}/sessions/{rec.session_id}"


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A session and its raw token (hidden from repr), returned once by create and rotate."""

    record: SessionRecord
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionVerification:
    """The answer to a verification (record set when found; claim only when VALID)."""

    result: VerifyResult
    record: SessionRecord | None = None
    claim: IssuedClaim | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    record: SessionRecord
    until: float


def _bad(field_name: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field_name} {message}",
        reason=reason,
        metadata={"field": field_name},
        violations=[FieldViolation(field_name, message)],
    )


def validate_user_subject(value: str) -> str:
    """Return ``value`` if it is 1 to 256 printable characters.

    Raises:
        InvalidArgument: ``FIELD_REQUIRED`` when empty, else ``INVALID_USER_SUBJECT``.
    """
    if not value:
        raise field_required("user_subject")
    if len(value) > MAX_SUBJECT or not value.isprintable():
        raise _bad("user_subject", "must be 1 to 256 printable characters", "INVALID_USER_SUBJECT")
    return value


def _timeout(value: timedelta | None, default: timedelta, maximum: timedelta, name: str) -> int:
    chosen = default if value is None or value == timedelta(0) else value
    if not MIN_TIMEOUT <= chosen <= maximum:
        raise _bad(
            name,
            f"must be from {int(MIN_TIMEOUT.total_seconds())}s to {int(maximum.total_seconds())}s",
            "INVALID_DURATION",
        )
    return int(chosen.total_seconds())


class SessionService:
    """The session use cases. Thread-safe; one instance per process."""

    def __init__(
        self,
        store: SessionStore,
        claims: ClaimIssuer,
        audit: AuditRecorder,
        guard: FailureGuard,
        *,
        idle_timeout: timedelta = DEFAULT_IDLE_TIMEOUT,
        absolute_timeout: timedelta = DEFAULT_ABSOLUTE_TIMEOUT,
        absolute_timeout_for: Callable[[str], timedelta] | None = None,
        cache_entries: int = 100_000,
        positive_ttl: float = 60.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the service.

        Args:
            store: Where sessions live.
            claims: Mints (and reuses) tenant claims.
            audit: Where every create, verify, rotate and revoke is recorded.
            guard: Failure rate limiter (charged per identity only: a token has no public id).
            idle_timeout: Default idle timeout of new sessions.
            absolute_timeout: Default absolute lifetime of new sessions.
            absolute_timeout_for: The default absolute lifetime of a tenant's new sessions
                (its ``session_absolute_lifetime`` setting); overrides ``absolute_timeout``.
            cache_entries: Bound on cached sessions.
            positive_ttl: Longest a cached session is trusted without a re-read.
            clock: Unix time in seconds.
            monotonic: Monotonic seconds, for cache ages.
        """
        self._store = store
        self._claims = claims
        self._audit = audit
        self._guard = guard
        self._default_idle = idle_timeout
        self._default_absolute = absolute_timeout
        self._absolute_for = absolute_timeout_for
        self._max = cache_entries
        self._positive_ttl = positive_ttl
        self._clock = clock
        self._mono = monotonic
        self._lock = threading.Lock()
        self.after_change: Callable[[], None] = _nothing
        self.before_verify: Callable[[], None] = _nothing
        """Brings the feed-invalidated caches up to date if this process fell behind the
        change feed (paused or starved; the server wires ``ChangeWatcher.catch_up``)."""
        self.claim_floor: Callable[[str], float] = _no_floor
        """The earliest ``iat`` a new claim of a session may carry (the server wires the claim
        revocations' ``issue_floor``: after a rotation, the second that follows it)."""
        """Applies the change feed in this process before a revoking or rotating call answers
        (the server wires the change watcher and the claim revocations), so no claim of the
        credential is accepted here once the caller was told it is revoked."""
        self._cache: dict[bytes, _Entry] = {}
        #: Look-ups answered from the cache and those that were not (read by the metrics).
        self.cache_hits = 0
        self.cache_misses = 0
        self._hash_of: dict[str, bytes] = {}
        self._generation = 0
        self._seen: dict[str, float] = {}
        self._dirty: dict[str, float] = {}

    # -- cache ---------------------------------------------------------------------------------

    def cache_size(self) -> int:
        """Number of cached sessions."""
        return len(self._cache)

    def _lookup(self, token_hash: bytes, *, fresh: bool = False) -> SessionRecord | None:
        now = self._mono()
        entry = None if fresh else self._cache.get(token_hash)
        if entry is not None and entry.until > now:
            self.cache_hits += 1
            return entry.record
        self.cache_misses += 1
        generation = self._generation
        rec = self._store.get_by_token_hash(token_hash)
        with self._lock:
            if rec is None or generation != self._generation:
                return rec
            old = self._hash_of.pop(rec.session_id, None)
            if old is not None:
                self._cache.pop(old, None)
            self._cache.pop(token_hash, None)
            self._cache[token_hash] = _Entry(rec, now + self._positive_ttl)
            self._hash_of[rec.session_id] = token_hash
            while len(self._cache) > self._max:
                evicted = self._cache.pop(next(iter(self._cache)))
                self._hash_of.pop(evicted.record.session_id, None)
            return rec

    def invalidate(self, session_id: str) -> None:
        """Forget what this process knows about a session (cache entry and cached claim)."""
        with self._lock:
            self._generation += 1
            token_hash = self._hash_of.pop(session_id, None)
            if token_hash is not None:
                self._cache.pop(token_hash, None)
        self._claims.forget(session_id)

    def on_change(self, record: ChangeRecord) -> None:
        """Change-feed subscriber for ``session`` records."""
        self.invalidate(record.entity_id)

    # -- minting authority ---------------------------------------------------------------------

    def minting_bound(self, claim: TenantClaim) -> datetime | None:
        """The latest instant a credential minted with the claim of a session may be valid
        (:attr:`Authority.not_after`), asked on the minting methods only (one fresh read).

        A user's session is not bounded (a logged-in user creating a long-lived key is the
        console's normal flow). A session whose subject is an API key's id is a machine's:
        an API key's claim can only open sessions for itself (its ``sub`` is its own id), so
        without a bound an expiring key could mint a session and, with the session's claim, a
        key without expiry. Such a session bounds what it mints by its own absolute expiry,
        which the expiring key already had to bound. A session the store does not have (or of
        another scope) bounds nothing here: a deleted or purged session's claims are refused by
        the revocation check before any method runs.

        Raises:
            Unauthenticated: ``CLAIM_REVOKED``, the session was revoked (this read sees it before
                the change feed has reached this replica's claim cut-offs).
            Unavailable: storage is down.
        """
        rec = self._store.get_by_id(claim.credential_id)
        if rec is None or rec.tenant_id != claim.tenant_id or rec.project_id != claim.project_id:
            return None
        if rec.state != "active":
            raise Unauthenticated("tenant claim was revoked", reason=REASON_CLAIM_REVOKED)
        if rec.user_subject.partition("_")[0] == KIND_API_KEY:
            return rec.absolute_expire_time
        return None

    # -- verify --------------------------------------------------------------------------------

    def _last_seen(self, rec: SessionRecord) -> float:
        stored = rec.last_seen_at.timestamp()
        return max(stored, self._seen.get(rec.session_id, stored))

    def _dead(self, rec: SessionRecord, now: float) -> VerifyResult | None:
        if rec.state != "active":
            return VerifyResult.REVOKED
        if now >= rec.absolute_expire_time.timestamp():
            return VerifyResult.EXPIRED
        if now >= self._last_seen(rec) + rec.idle_timeout_seconds:
            return VerifyResult.EXPIRED
        return None

    def verify(
        self, token: str, required_scopes: Sequence[str], actor: Actor
    ) -> SessionVerification:
        """Verify a presented token; a VALID answer slides the idle timeout.

        Raises:
            InvalidArgument: ``token`` empty (``FIELD_REQUIRED``) or a malformed required scope.
            ResourceExhausted: reason ``VERIFY_RATE_LIMITED``.
            Unavailable: storage is down on a cache miss.
        """
        if not token:
            raise field_required("token")
        needed = validate_scopes(
            required_scopes, "required_scopes", maximum=MAX_REQUIRED_SCOPES, required=False
        )
        try:
            token_hash = session_tokens.hash_session_token(token, field="token")
        except InvalidArgument:
            return self._failed(VerifyResult.MALFORMED, None, actor)
        self.before_verify()
        rec = self._lookup(token_hash)
        if rec is None:
            return self._failed(VerifyResult.NOT_FOUND, None, actor)
        now = self._clock()
        dead = self._dead(rec, now)
        if dead is VerifyResult.EXPIRED and rec.state == "active":
            # Another replica may have seen it since we cached it: ask the database once.
            rec = self._lookup(token_hash, fresh=True)
            if rec is None:
                return self._failed(VerifyResult.NOT_FOUND, None, actor)
            dead = self._dead(rec, now)
        if dead is not None:
            return self._failed(dead, rec, actor)
        if needed and not set(needed).issubset(rec.scopes):
            self._audit_verify(VerifyResult.INSUFFICIENT_SCOPE, rec, actor)
            return SessionVerification(VerifyResult.INSUFFICIENT_SCOPE, rec)
        claim = self._claims.issue(
            rec.session_id,
            rec.tenant_id,
            rec.project_id,
            rec.user_subject,
            rec.scopes,
            # Dead at its absolute timeout, or idle_timeout after this use if not used again.
            not_after=min(rec.absolute_expire_time.timestamp(), now + rec.idle_timeout_seconds),
            not_before=self.claim_floor(rec.session_id),
        )
        with self._lock:
            self._seen[rec.session_id] = now
            self._dirty[rec.session_id] = now
            while len(self._seen) > self._max:
                del self._seen[next(iter(self._seen))]
        self._audit_verify(VerifyResult.VALID, rec, actor)
        return SessionVerification(VerifyResult.VALID, rec, claim)

    def _failed(
        self, result: VerifyResult, rec: SessionRecord | None, actor: Actor
    ) -> SessionVerification:
        self._audit_verify(result, rec, actor)
        return SessionVerification(result, rec)

    def _audit_verify(self, result: VerifyResult, rec: SessionRecord | None, actor: Actor) -> None:
        tenant, target = (rec.tenant_id, session_name(rec)) if rec is not None else (None, "")
        record_verification(
            self._audit,
            actor,
            "session.verify",
            tenant,
            target,
            result,
            guard=self._guard,
            stored=rec is not None,
        )

    # -- touches and sweep ---------------------------------------------------------------------

    def flush_touches(self) -> int:
        """Write the batched last-seen times; returns how many sessions were written.

        On a storage failure the batch is kept for the next flush.
        """
        with self._lock:
            batch, self._dirty = self._dirty, {}
        if not batch:
            return 0
        try:
            self._store.touch_many({k: _dt(v) for k, v in batch.items()})
        except Unavailable:
            with self._lock:
                for session_id, ts in batch.items():
                    if self._dirty.get(session_id, 0.0) < ts:
                        self._dirty[session_id] = ts
            raise
        return len(batch)

    def sweep(self) -> int:
        """Delete sessions revoked, or expired (absolute or idle) more than a minute ago.

        Returns:
            How many sessions were deleted.
        """
        self.flush_touches()
        deleted = self._store.delete_expired(_dt(self._clock()) - SWEEP_MARGIN)
        if deleted:
            entry = event(SYSTEM, None, "session.sweep", "", attributes={"deleted": str(deleted)})
            record(self._audit, entry, durable=False)
        return deleted

    def _overlay(self, rec: SessionRecord) -> SessionRecord:
        seen = self._seen.get(rec.session_id)
        if seen is None or seen <= rec.last_seen_at.timestamp():
            return rec
        return replace(rec, last_seen_at=_dt(seen))

    def effective_state(self, rec: SessionRecord) -> str:
        """``active``, ``revoked`` or ``expired`` as of now (idle window included)."""
        dead = self._dead(rec, self._clock())
        if dead is VerifyResult.REVOKED:
            return "revoked"
        return "expired" if dead is VerifyResult.EXPIRED else "active"

    # -- management ----------------------------------------------------------------------------

    def create(
        self,
        parent: ProjectName,
        *,
        user_subject: str,
        scopes: Sequence[str],
        idle_timeout: timedelta | None,
        absolute_timeout: timedelta | None,
        actor: Actor,
        authority: Authority,
    ) -> IssuedSession:
        """Create a session; the raw token is in the answer and nowhere else.

        Raises:
            InvalidArgument: bad user subject, scopes or timeouts.
            PermissionDenied: ``SCOPE_ESCALATION`` (a scope the caller lacks),
                ``IMPERSONATION_NOT_ALLOWED`` (another user than the caller's own subject) or
                ``LIFETIME_ESCALATION`` (the caller's claim comes from an expiring API key and
                the session's absolute expiry is later).
            Unavailable: storage or (durable) audit is down.
        """
        subject = validate_user_subject(user_subject)
        granted = validate_scopes(scopes, "scopes", maximum=MAX_SESSION_SCOPES, required=True)
        idle = _timeout(idle_timeout, self._default_idle, MAX_IDLE_TIMEOUT, "idle_timeout")
        default_absolute = (
            self._absolute_for(parent.tenant) if self._absolute_for else self._default_absolute
        )
        absolute = _timeout(
            absolute_timeout, default_absolute, MAX_ABSOLUTE_TIMEOUT, "absolute_timeout"
        )
        now = _dt(self._clock())
        check_grant(authority, granted, subject, expire_time=now + timedelta(seconds=absolute))
        raw, token_hash = session_tokens.new_session_token()
        draft = SessionRecord(
            session_id=new_handle(KIND_SESSION),
            token_hash=token_hash,
            tenant_id=parent.tenant,
            project_id=parent.project,
            user_subject=subject,
            scopes=granted,
            state="active",
            created_at=now,
            last_seen_at=now,
            idle_timeout_seconds=idle,
            absolute_expire_time=now + timedelta(seconds=absolute),
            revoke_time=None,
        )
        with audited_change(self._audit, self._issue_entry("session.create", draft, actor)):
            rec = self._store.insert(draft)
        return IssuedSession(rec, raw)

    @staticmethod
    def _issue_entry(action: str, rec: SessionRecord, actor: Actor) -> AuditEntry:
        """The event of a session token issued (written in the transaction that stores it)."""
        return event(
            actor,
            rec.tenant_id,
            action,
            session_name(rec),
            attributes={"scopes": " ".join(rec.scopes)},
        )

    def get(self, name: SessionName) -> SessionRecord:
        """The session named ``name``.

        Raises:
            NotFound: no such session in this tenant and project.
        """
        rec = self._store.get(name.tenant, name.project, name.id)
        if rec is None:
            raise resource_not_found(str(name))
        return self._overlay(rec)

    def rotate(
        self, name: SessionName, scopes: Sequence[str], actor: Actor, *, authority: Authority
    ) -> IssuedSession:
        """Give an active session a new token (the old one stops at once); optionally new scopes.

        The new token goes to the caller, so the caller's authority must cover the scopes the
        session will carry and its absolute expiry and, unless it may impersonate, the session
        must be its own.

        Raises:
            InvalidArgument: malformed scopes.
            NotFound: no such session in this tenant and project.
            FailedPrecondition: the session is revoked or expired (``SESSION_NOT_ACTIVE``), or
                a concurrent rotation replaced the token this call read (``SESSION_ROTATED``:
                of concurrent rotations exactly one returns a token, as for RotateApiKey
                without grace).
            PermissionDenied: ``SCOPE_ESCALATION``, ``IMPERSONATION_NOT_ALLOWED`` or
                ``LIFETIME_ESCALATION`` (the session's absolute expiry is after the expiry of
                the API key the caller's claim comes from).
        """
        new_scopes = validate_scopes(scopes, "scopes", maximum=MAX_SESSION_SCOPES, required=False)
        current = self._store.get(name.tenant, name.project, name.id)
        if current is None:
            raise resource_not_found(str(name))
        check_grant(
            authority,
            new_scopes or current.scopes,
            current.user_subject,
            expire_time=current.absolute_expire_time,
        )
        if self._dead(current, self._clock()) is not None:
            raise FailedPrecondition(
                "the session is no longer active and cannot be rotated",
                reason="SESSION_NOT_ACTIVE",
                metadata={"resource": str(name)},
            )
        raw, token_hash = session_tokens.new_session_token()
        granted = new_scopes or current.scopes
        entry = self._issue_entry("session.rotate", replace(current, scopes=granted), actor)
        try:
            with audited_change(self._audit, entry):
                rec = self._store.replace_token(
                    name.tenant,
                    name.project,
                    name.id,
                    token_hash,
                    granted,
                    _dt(self._clock()),
                    expected_token_hash=current.token_hash,
                )
                if rec is None:
                    raise FailedPrecondition(
                        "the session is no longer active and cannot be rotated",
                        reason="SESSION_NOT_ACTIVE",
                        metadata={"resource": str(name)},
                    )
        finally:
            self.invalidate(name.id)
        self.after_change()
        return IssuedSession(self._overlay(rec), raw)

    def revoke(self, name: SessionName, actor: Actor) -> SessionRecord:
        """Revoke one session (idempotent); this process stops accepting it at once.

        Raises:
            NotFound: no such session in this tenant and project.
        """
        try:
            with audited_change(
                self._audit, event(actor, name.tenant, "session.revoke", str(name))
            ):
                rec = self._store.revoke(name.tenant, name.project, name.id, _dt(self._clock()))
                if rec is None:
                    raise resource_not_found(str(name))
        finally:
            self.invalidate(name.id)
        self.after_change()
        return self._overlay(rec)

    def revoke_user(self, parent: ProjectName, user_subject: str, actor: Actor) -> int:
        """Revoke every active session of a user in a project; returns how many.

        Raises:
            InvalidArgument: bad user subject.
        """
        subject = validate_user_subject(user_subject)
        # The count is known only after the change: the event (written with it) names the
        # user instead; the answer carries the count.
        entry = event(
            actor,
            parent.tenant,
            "session.revoke_user",
            str(parent),
            attributes={"user_subject": subject},
        )
        with audited_change(self._audit, entry):
            count = self._store.revoke_user(
                parent.tenant, parent.project, subject, _dt(self._clock())
            )
        with self._lock:
            doomed = [
                e.record.session_id
                for e in self._cache.values()
                if e.record.tenant_id == parent.tenant
                and e.record.project_id == parent.project
                and e.record.user_subject == subject
            ]
        for session_id in doomed:
            self.invalidate(session_id)
        self.after_change()
        return count
