"""Storage ports: one Protocol per aggregate, bundled by :class:`Store`.

Adapters (``storage.sqlite``, ``storage.postgres``) implement these with synchronous code that is
safe to call from many threads at once. Every method that can reach the database may raise
:class:`~zumik_secrets.core.errors.Unavailable` (reason ``STORAGE_UNAVAILABLE``) when the database
is down or does not answer in time. Methods taking a ``tenant_id``/``project_id`` return ``None``
for a row of another tenant or project, exactly as for a missing row.

Every change that must invalidate caches on other replicas (revocations, expiry changes, token
rotation, signing-key state, tenant settings) appends a :class:`ChangeRecord` in the same
transaction, so the change feed never reports a change that did not commit nor misses one that did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from zumik_secrets.storage.records import (
    ApiKeyRecord,
    ChangeRecord,
    SessionRecord,
    SigningKeyRecord,
    TenantSettings,
)


class TenantSettingsStore(Protocol):
    """Per-tenant settings."""

    def get(self, tenant_id: str) -> TenantSettings | None:
        """Return the tenant's settings, or None if never set."""
        ...

    def put(self, settings: TenantSettings) -> None:
        """Insert or replace the tenant's settings; records a ``tenant_settings`` change."""
        ...


class SigningKeyStore(Protocol):
    """Ed25519 signing keys (private halves wrapped)."""

    def add(self, rec: SigningKeyRecord) -> None:
        """Store a new key.

        Raises:
            AlreadyExists: A key with this kid exists.
        """
        ...

    def list(self, purpose: str) -> list[SigningKeyRecord]:
        """Return every key of ``purpose`` in any state, oldest first."""
        ...

    def set_state(
        self, kid: str, state: str, retire_after: datetime | None
    ) -> SigningKeyRecord | None:
        """Change a key's state and retire_after; records a ``signing_key`` change.

        Returns:
            The updated record, or None if no such kid.
        """
        ...


class ApiKeyStore(Protocol):
    """API keys."""

    def insert(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        """Store a new key; the returned copy carries the store-assigned ``seq``.

        Raises:
            AlreadyExists: A key with this key_id exists.
        """
        ...

    def get_by_id(self, key_id: str) -> ApiKeyRecord | None:
        """Look a key up by id alone (the verify path, before any tenant is known)."""
        ...

    def get(self, tenant_id: str, project_id: str, key_id: str) -> ApiKeyRecord | None:
        """Return the key if it belongs to this tenant and project, else None."""
        ...

    def list(
        self,
        tenant_id: str,
        project_id: str,
        *,
        page_size: int,
        after_seq: int | None,
        include_revoked: bool,
    ) -> list[ApiKeyRecord]:
        """Return up to ``page_size`` keys with ``seq > after_seq``, by ascending seq."""
        ...

    def revoke(
        self, tenant_id: str, project_id: str, key_id: str, at: datetime
    ) -> ApiKeyRecord | None:
        """Revoke a key. Idempotent: revoking a revoked key changes nothing and returns it.

        The first revocation records an ``api_key`` change in the same transaction.

        Returns:
            The key as stored afterwards, or None if not found for this tenant and project.
        """
        ...

    def set_expiry(
        self, tenant_id: str, project_id: str, key_id: str, expire_time: datetime | None
    ) -> ApiKeyRecord | None:
        """Set (or clear, with None) a key's expiry; records an ``api_key`` change.

        Returns:
            The updated key, or None if not found for this tenant and project.
        """
        ...

    def insert_rotation(
        self, new_rec: ApiKeyRecord, old_key_id: str, old_expire_time: datetime
    ) -> ApiKeyRecord:
        """Insert ``new_rec`` and wind down ``old_key_id`` in one transaction.

        ``new_rec.created_at`` is the rotation time. If ``old_expire_time`` is at or before it
        the old key is revoked now; otherwise its expiry becomes ``old_expire_time`` (never later
        than an expiry it already had). The new key is stored with ``rotated_from=old_key_id``.
        Records an ``api_key`` change for the old key.

        Returns:
            The new key with its ``seq``.

        Raises:
            NotFound: The old key does not exist in new_rec's tenant and project.
            FailedPrecondition: The old key is already revoked (reason ``API_KEY_REVOKED``).
            AlreadyExists: new_rec.key_id exists.
        """
        ...

    def record_last_used(self, updates: Mapping[str, datetime]) -> None:
        """Batch-write last_used_at per key_id in one transaction, only ever moving it forward."""
        ...

    def delete_revoked_before(self, cutoff: datetime) -> int:
        """Delete keys revoked, or expired, before ``cutoff``. Returns how many were deleted."""
        ...


class SessionStore(Protocol):
    """User sessions."""

    def insert(self, rec: SessionRecord) -> SessionRecord:
        """Store a new session; the returned copy carries the store-assigned ``seq``.

        Raises:
            AlreadyExists: The session_id or the token hash exists.
        """
        ...

    def get_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        """Look a session up by the SHA-256 of its current token (any state)."""
        ...

    def get(self, tenant_id: str, project_id: str, session_id: str) -> SessionRecord | None:
        """Return the session if it belongs to this tenant and project, else None."""
        ...

    def touch(self, session_id: str, last_seen_at: datetime) -> None:
        """Move last_seen_at forward (never back)."""
        ...

    def touch_many(self, updates: Mapping[str, datetime]) -> None:
        """Batched :meth:`touch`, one transaction."""
        ...

    def replace_token(
        self,
        tenant_id: str,
        project_id: str,
        session_id: str,
        new_token_hash: bytes,
        scopes: tuple[str, ...],
        at: datetime,
    ) -> SessionRecord | None:
        """Rotate an active session's token (the old hash stops resolving) and set its scopes.

        Records a ``session`` change.

        Returns:
            The updated session, or None if no such *active* session for this tenant and project.

        Raises:
            AlreadyExists: new_token_hash belongs to another session.
        """
        ...

    def revoke(
        self, tenant_id: str, project_id: str, session_id: str, at: datetime
    ) -> SessionRecord | None:
        """Revoke one session. Idempotent; the first revocation records a ``session`` change.

        Returns:
            The session afterwards, or None if not found for this tenant and project.
        """
        ...

    def revoke_user(self, tenant_id: str, project_id: str, user_subject: str, at: datetime) -> int:
        """Revoke every active session of a user; one ``session`` change each. Returns the count."""
        ...

    def delete_expired(self, now: datetime) -> int:
        """Delete sessions past their absolute expiry, idle too long, or revoked. Returns count."""
        ...


class ChangeListener(Protocol):
    """A running LISTEN subscription."""

    def stop(self) -> None:
        """Stop listening and close the dedicated connection. Idempotent."""
        ...


class ChangeFeed(Protocol):
    """The ordered log of changes other replicas use to invalidate their caches."""

    def latest_seq(self) -> int:
        """Return the highest seq recorded (0 if none). A very cheap query, fit for polling."""
        ...

    def since(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        """Return up to ``limit`` changes with seq > ``seq``, ascending."""
        ...

    def listen(self, callback: Callable[[], None]) -> ChangeListener | None:
        """Call ``callback`` (from a background thread) soon after any change commits.

        The callback carries no payload: read :meth:`since` from your last seq. It is also called
        after the listener reconnects, since notifications may have been lost meanwhile.

        Returns:
            A listener to stop, or None when the backend cannot push (SQLite: poll
            :meth:`latest_seq` instead).
        """
        ...


class Store(Protocol):
    """A whole store: the aggregates plus lifecycle."""

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        ...

    @property
    def tenants(self) -> TenantSettingsStore:
        """Tenant settings."""
        ...

    @property
    def signing_keys(self) -> SigningKeyStore:
        """Signing keys."""
        ...

    @property
    def api_keys(self) -> ApiKeyStore:
        """API keys."""
        ...

    @property
    def sessions(self) -> SessionStore:
        """Sessions."""
        ...

    @property
    def changes(self) -> ChangeFeed:
        """Change feed."""
        ...

    def migrate(self) -> list[int]:
        """Apply pending migrations in order; safe to run concurrently and repeatedly.

        Returns:
            The versions applied by this call (empty when up to date).
        """
        ...

    def check_ready(self) -> None:
        """One cheap round trip.

        Raises:
            Unavailable: The database does not answer.
        """
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...
