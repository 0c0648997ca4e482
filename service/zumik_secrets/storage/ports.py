"""Storage ports: one Protocol per aggregate, bundled by :class:`Store`.

One module per aggregate in ``storage.aggregates`` implements these for both backends, over the
SQLite or PostgreSQL kernel (``storage.sqlite``, ``storage.postgres``), with synchronous code that
is safe to call from many threads at once. Every method that can reach the database may raise
:class:`~zumik_secrets.core.errors.Unavailable` (reason ``STORAGE_UNAVAILABLE``) when the database
is down or does not answer in time. Methods taking a ``tenant_id``/``project_id`` return ``None``
for a row of another tenant or project, exactly as for a missing row.

Every change that must invalidate caches on other replicas (revocations, expiry changes, token
rotation, signing-key state, tenant settings) appends a :class:`ChangeRecord` in the same
transaction, so the change feed never reports a change that did not commit nor misses one that did.

Every method that creates a row inside a tenant or project (API keys, sessions, sealed secrets,
data keys, handles, the fingerprint key schedule, customer keys, tenant settings) raises
:class:`~zumik_secrets.core.errors.FailedPrecondition` (reason ``SCOPE_PURGED``) once a purge job
covers the scope, atomically with the purge (``storage/aggregates/fence.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from zumik_secrets.core.audit_chain import ChainEvent, Checkpoint, EventDraft
from zumik_secrets.storage.records import (
    ApiKeyRecord,
    ChangeRecord,
    CustomerKeyRecord,
    DataKeyRecord,
    GrantRecord,
    HandleRecord,
    MigrationInfo,
    PurgeJob,
    PurgeReceiptRecord,
    ScheduledDestroy,
    SealedSecretRecord,
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
        """Insert or replace the tenant's settings (every field, retention included); records a
        ``tenant_settings`` change."""
        ...


class SigningKeyStore(Protocol):
    """Ed25519 signing keys (private halves wrapped)."""

    def add(self, rec: SigningKeyRecord) -> None:
        """Store a new key; records a ``signing_key`` change (other replicas reload).

        Raises:
            AlreadyExists: A key with this kid exists.
        """
        ...

    def add_first(self, rec: SigningKeyRecord) -> bool:
        """Store ``rec`` only if its purpose has no ``active`` key yet, serialised across
        replicas (two replicas starting on an empty database agree on one first key).

        Returns:
            Whether ``rec`` was stored (False: another key is active; reload and use it).

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

    def replace_wrapped(
        self, kid: str, old_wrapped: bytes, new_wrapped: bytes, keyring_version: int
    ) -> bool:
        """Swap a key's wrapped private half if it is still ``old_wrapped`` (KEK rotation).

        Returns:
            Whether the row was updated (False: no such kid, or it changed meanwhile).
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

        The first revocation records an ``api_key`` change in the same transaction. Every
        revocation (a repeated one too) also revokes the key's machine sessions, the active
        sessions of its project whose ``user_subject`` is the key's id, recording a ``session``
        change for each, in the same transaction.

        Returns:
            The key as stored afterwards, or None if not found for this tenant and project.
        """
        ...

    def set_expiry(
        self, tenant_id: str, project_id: str, key_id: str, expire_time: datetime | None
    ) -> ApiKeyRecord | None:
        """Set (or clear, with None) a key's expiry; records an ``api_key`` change.

        A new expiry also brings the absolute expiry of the key's machine sessions (see
        :meth:`revoke`) down to it, recording their ``session`` changes.

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
        Records an ``api_key`` change for the old key. The old key's machine sessions (see
        :meth:`revoke`) end with it: revoked with it, or their absolute expiry brought down to
        its new expiry, each with a ``session`` change.

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

    def delete_dead_keys(
        self, now: datetime, default_retention: timedelta, *, tenant_id: str | None = None
    ) -> int:
        """Delete keys revoked, or expired, longer ago than their tenant's revoked-key retention
        (``tenant_settings.revoked_key_retention``, else ``default_retention``), optionally of
        one tenant only. Returns how many were deleted."""
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

    def get_by_id(self, session_id: str) -> SessionRecord | None:
        """A session by id alone (the change feed names sessions by id), or None."""
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
        *,
        expected_token_hash: bytes,
    ) -> SessionRecord | None:
        """Rotate an active session's token (the old hash stops resolving) and set its scopes.

        A compare and swap: the token is replaced only while it is still
        ``expected_token_hash`` (the one the caller read), so of concurrent rotations of one
        session exactly one succeeds. Records a ``session`` change.

        Returns:
            The updated session, or None if no such *active* session for this tenant and project.

        Raises:
            AlreadyExists: new_token_hash belongs to another session.
            FailedPrecondition: reason ``SESSION_ROTATED``: the session is active but its token
                is no longer ``expected_token_hash`` (another rotation won); nothing changed.
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

    def delete_expired(self, now: datetime, *, tenant_id: str | None = None) -> int:
        """Delete sessions past their absolute expiry, idle too long, or revoked (optionally of
        one tenant only). Returns count."""
        ...


DataKeyId = tuple[str, str, str, int]
"""(tenant_id, project_id, purpose, version): a data key version's primary key."""


class DataKeyStore(Protocol):
    """Versioned data keys, wrapped. Changes of state record a ``data_key`` change whose
    entity id is ``tenant/project/purpose``."""

    def insert_first(self, rec: DataKeyRecord) -> None:
        """Insert version 1 as primary unless the triple already has a key (race-safe: the
        loser of a concurrent first use inserts nothing and re-reads).

        Raises:
            FailedPrecondition: reason ``SCOPE_PURGED``: the tenant or project was purged (a
                purge job exists for it); nothing is created.
        """
        ...

    def get(
        self, tenant_id: str, project_id: str, purpose: str, version: int
    ) -> DataKeyRecord | None:
        """One version, or None."""
        ...

    def primary(self, tenant_id: str, project_id: str, purpose: str) -> DataKeyRecord | None:
        """The primary version, or None if the triple has no key yet."""
        ...

    def list(
        self, tenant_id: str, project_id: str, purpose: str, *, page_size: int, after_version: int
    ) -> list[DataKeyRecord]:
        """Up to ``page_size`` versions above ``after_version``, ascending."""
        ...

    def rotate(
        self,
        tenant_id: str,
        project_id: str,
        purpose: str,
        make_wrapped: Callable[[int], tuple[bytes, str]],
        at: datetime,
    ) -> DataKeyRecord:
        """Add version max+1 as primary and demote the old primary to enabled, atomically.

        ``make_wrapped(version)`` is called inside the transaction (once the new version number
        is known and reserved) and returns ``(wrapped_key, wrapped_by)``.

        Returns:
            The new primary version.
        """
        ...

    def destroy(
        self, tenant_id: str, project_id: str, purpose: str, version: int, at: datetime
    ) -> DataKeyRecord | None:
        """Delete a version's key material and mark it destroyed. Idempotent.

        Returns:
            The version afterwards, or None if it does not exist.

        Raises:
            FailedPrecondition: Reason ``DATA_KEY_PRIMARY``: the primary cannot be destroyed.
        """
        ...

    def list_wrapped(self, *, after: DataKeyId | None, limit: int) -> Sequence[DataKeyRecord]:
        """Every non-destroyed version of every tenant, by primary key (KEK rotation scans)."""
        ...

    def list_tenant(self, tenant_id: str) -> Sequence[DataKeyRecord]:
        """Every non-destroyed version of one tenant."""
        ...

    def replace_wrapped(
        self, key: DataKeyId, old_wrapped: bytes, new_wrapped: bytes, wrapped_by: str
    ) -> bool:
        """Swap a version's wrapped key if it is still ``old_wrapped`` (and not destroyed).

        Returns:
            Whether the row was updated.
        """
        ...


class FingerprintScheduleStore(Protocol):
    """When fingerprint-key versions are to be destroyed (rotation overlap windows).

    Sweepers on several replicas claim due rows with a lease, so one destroys and audits a
    version while the others skip it; a sweeper that dies leaves the row to be claimed again
    when its lease runs out.
    """

    def schedule(
        self, tenant_id: str, project_id: str, versions: Sequence[int], destroy_at: datetime
    ) -> None:
        """Schedule each version's destruction at ``destroy_at``, or keep an earlier time already
        scheduled; records a ``data_key`` change (entity ``tenant/project/fingerprint``)."""
        ...

    def pending(self, tenant_id: str, project_id: str) -> list[ScheduledDestroy]:
        """The project's scheduled destructions, by version."""
        ...

    def claim_due(
        self,
        now: datetime,
        lease_until: datetime,
        *,
        tenant_id: str | None = None,
        project_id: str | None = None,
        limit: int = 100,
    ) -> list[ScheduledDestroy]:
        """Lease up to ``limit`` rows due at ``now`` whose lease is free or expired (optionally
        of one project), oldest first."""
        ...

    def done(self, tenant_id: str, project_id: str, version: int) -> None:
        """Remove a row once its version is destroyed and the event is durable."""
        ...


class HandleStore(Protocol):
    """Opaque public handles."""

    def insert(self, rec: HandleRecord) -> HandleRecord:
        """Store a new handle.

        Raises:
            AlreadyExists: The tenant already has this handle (a collision: mint another).
        """
        ...

    def get(self, tenant_id: str, handle: str) -> HandleRecord | None:
        """The tenant's handle, or None (missing, or another tenant's)."""
        ...


class SealedSecretStore(Protocol):
    """Sealed secrets (metadata and ciphertext)."""

    def insert(self, rec: SealedSecretRecord) -> SealedSecretRecord:
        """Store a new secret; the copy returned carries ``seq``.

        Raises:
            AlreadyExists: The secret_id exists.
        """
        ...

    def get(self, tenant_id: str, project_id: str, secret_id: str) -> SealedSecretRecord | None:
        """The secret if it belongs to this tenant and project, else None."""
        ...

    def list(
        self,
        tenant_id: str,
        project_id: str,
        *,
        page_size: int,
        after_seq: int,
        not_on_version: int | None = None,
    ) -> list[SealedSecretRecord]:
        """Up to ``page_size`` secrets with seq > after_seq, ascending; with ``not_on_version``,
        only those sealed under another data-key version (the rewrap scan)."""
        ...

    def replace_ciphertext(
        self,
        rec: SealedSecretRecord,
        *,
        version: int,
        data_key_version: int,
        size_bytes: int,
        ciphertext: bytes,
        at: datetime,
    ) -> SealedSecretRecord | None:
        """Replace the ciphertext if the row still has ``rec.version`` and
        ``rec.data_key_version`` (compare-and-swap against concurrent writers).

        Returns:
            The row afterwards, or None if it is gone or changed meanwhile.
        """
        ...

    def delete(self, tenant_id: str, project_id: str, secret_id: str) -> bool:
        """Delete the row. Returns whether it existed."""
        ...

    def count_by_data_key_version(self, tenant_id: str, project_id: str) -> dict[int, int]:
        """How many of the project's secrets each data-key version seals."""
        ...


class CustomerKeyStore(Protocol):
    """Per-tenant customer-managed key configuration (token stored wrapped)."""

    def get(self, tenant_id: str) -> CustomerKeyRecord | None:
        """The tenant's configuration, or None."""
        ...

    def wrapped_tokens(self) -> list[tuple[str, bytes]]:
        """Every configured tenant's ``(tenant_id, wrapped_token)`` (the master-key version
        check of ``keygen --drop-version``; the tokens stay wrapped)."""
        ...

    def put(
        self,
        rec: CustomerKeyRecord,
        rewrapped: Sequence[tuple[DataKeyId, bytes, bytes]],
    ) -> None:
        """Store the configuration and, in the same transaction, swap the tenant's data keys
        to the given ``(id, old_wrapped, new_wrapped)`` wrapped by ``customer``.

        Records a ``customer_key`` change (entity: the tenant).

        Raises:
            FailedPrecondition: Reason ``DATA_KEYS_CHANGED``: a data key changed meanwhile.
        """
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

    def at(self, seq: int) -> ChangeRecord | None:
        """Return the change recorded at ``seq`` (None: never recorded, or pruned). One read
        by primary key."""
        ...

    def latest(self) -> ChangeRecord | None:
        """Return the change with the highest seq (None if none)."""
        ...

    def prune_before(self, cutoff: datetime) -> int:
        """Delete change records older than ``cutoff`` (every replica read them long ago).

        Returns:
            How many were deleted.
        """
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


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Filters of an audit query; empty or None fields do not filter.

    Attributes:
        action: Exact action.
        actor: Exact actor (SPIFFE ID).
        target: Exact target.
        outcome: ``success``, ``failure`` or ``denied``.
        start_time: Events at or after this time.
        end_time: Events before this time.
        project: ``tenants/{tenant}/projects/{project}``: only events whose target is that
            project or a resource under it (the view of a project claim).
    """

    action: str = ""
    actor: str = ""
    target: str = ""
    outcome: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    project: str = ""


class AuditStore(Protocol):
    """The audit chains: events, chain heads and signed checkpoints.

    Appends serialise per tenant *in the database* (a row lock on the tenant's head on
    PostgreSQL, the write lock on SQLite), so several server processes appending to one tenant
    at once still produce one gapless chain. Writes fail fast (bounded lock and statement
    timeouts) with Unavailable rather than hang.
    """

    def append(self, drafts: Sequence[EventDraft]) -> list[ChainEvent]:
        """Chain and store ``drafts`` (any tenants) in one transaction.

        Returns:
            The stored events, in the order of ``drafts``.

        Raises:
            Unavailable: The database is down, refuses the write, or a lock or statement
                timeout expired. Nothing was stored.
        """
        ...

    def drain_outbox(self, limit: int) -> list[ChainEvent]:
        """Chain up to ``limit`` outbox events (oldest first) and delete them, in one transaction.

        The outbox holds the events written in the transactions of the changes they record
        (:mod:`zumik_secrets.storage.outbox`). Each event is chained exactly once, however many
        processes drain at the same time.

        Returns:
            The chained events (empty when the outbox is empty).

        Raises:
            Unavailable: The database is down or a timeout expired. Nothing was moved.
        """
        ...

    def outbox_size(self) -> int:
        """How many events wait in the outbox."""
        ...

    def probe_write(self) -> None:
        """Try an audit insert and roll it back (health probe that stores nothing).

        Raises:
            Unavailable: An append would fail now.
        """
        ...

    def head(self, tenant: str) -> tuple[int, bytes] | None:
        """The tenant's head ``(sequence, hash)``, or None if it never had an event."""
        ...

    def first_sequence(self, tenant: str) -> int | None:
        """Lowest retained sequence number, or None when no event is retained."""
        ...

    def events(
        self, tenant: str, *, after_sequence: int, limit: int, until_sequence: int | None = None
    ) -> list[ChainEvent]:
        """Up to ``limit`` events with ``after < sequence <= until``, ascending."""
        ...

    def event(self, tenant: str, sequence: int) -> ChainEvent | None:
        """One event by position."""
        ...

    def query(
        self, tenant: str, flt: AuditFilter, *, after_sequence: int, limit: int
    ) -> list[ChainEvent]:
        """Up to ``limit`` events matching ``flt`` with ``sequence > after_sequence``, ascending."""
        ...

    def add_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store a checkpoint; if one exists at that tenant and sequence, return it instead."""
        ...

    def checkpoints(
        self, tenant: str, *, from_sequence: int = 0, to_sequence: int | None = None
    ) -> list[Checkpoint]:
        """Checkpoints with ``from <= sequence <= to``, ascending."""
        ...

    def heads_without_checkpoint(self, limit: int) -> list[tuple[str, int, bytes]]:
        """Heads ``(tenant, sequence, hash)`` that no checkpoint covers yet."""
        ...

    def tenants_with_events_before(self, cutoff: datetime) -> list[str]:
        """Tenants (including ``-``) that retain an event older than ``cutoff``."""
        ...

    def prune_point(self, tenant: str, cutoff: datetime) -> tuple[int, bytes] | None:
        """``(sequence, hash)`` of the newest event older than ``cutoff``, or None."""
        ...

    def prune(self, anchor: Checkpoint) -> int:
        """Store ``anchor``, then delete the tenant's events up to and including its sequence
        and the checkpoints before it, in one transaction.

        Returns:
            How many events were deleted.
        """
        ...


class PurgeStore(Protocol):
    """Purge jobs (resumable, one transaction per phase) and signed purge receipts.

    A scope is a tenant (``project_id`` None) or one of its projects. Each phase re-reads the
    job under a lock and does nothing if the job already passed that phase, so two runners of
    one job (a retry racing a slow first attempt) never apply a phase twice.
    """

    def create_job(self, job: PurgeJob) -> PurgeJob:
        """Store a new job in phase ``started`` and record a ``purge`` change (entity
        ``tenant`` or ``tenant/project``) in the same transaction: from this commit on the scope
        is a tombstone (see :meth:`tombstones`).

        Raises:
            AlreadyExists: An unfinished job exists for the same target.
        """
        ...

    def open_job(self, target: str) -> PurgeJob | None:
        """The unfinished job of ``target``, if any."""
        ...

    def get_job(self, receipt_id: str) -> PurgeJob | None:
        """A job by id."""
        ...

    def tombstones(self) -> list[tuple[str, str | None, datetime]]:
        """Every purged (or being purged) scope: ``(tenant_id, project_id or None, first start)``.

        Persistent (purge jobs are never deleted): a purged scope stays closed.
        """
        ...

    def shred(self, receipt_id: str, at: datetime) -> PurgeJob:
        """Phase 1, one transaction: destroy every data-key version of the scope (delete the
        wrapped key, state ``destroyed``), the tenant's customer-key binding (tenant scope) and
        the scope's scheduled fingerprint-key destructions; record a ``data_key`` change per
        (tenant, project, purpose) and a ``customer_key`` change; move the job to ``shredded``.

        Returns:
            The job afterwards (unchanged if it was past ``started``).
        """
        ...

    def delete_rows(self, receipt_id: str, at: datetime) -> PurgeJob:
        """Phase 2, one transaction: delete the scope's API keys, sessions, sealed secrets, data-key
        rows, scheduled destructions and, for a tenant scope, its handles and settings; record an
        ``api_key`` change per key, a ``session`` change per session and a ``tenant_settings``
        change; move the job to ``deleted``.

        Returns:
            The job afterwards (unchanged if it was past ``shredded``).
        """
        ...

    def finish(self, receipt_id: str, receipt: PurgeReceiptRecord, at: datetime) -> PurgeJob:
        """Phase 3, one transaction: store the receipt and move the job to ``done``.

        Returns:
            The job afterwards.
        """
        ...

    def scrub(self) -> None:
        """Best effort: push deleted bytes out of places a file scan could find them (SQLite:
        a TRUNCATE checkpoint of the write-ahead log). A no-op where the backend cannot."""
        ...

    def scope_has_data(self, tenant_id: str, project_id: str | None) -> bool:
        """Whether any row of the scope exists outside the audit and purge tables."""
        ...

    def get_receipt(self, tenant_id: str, receipt_id: str) -> PurgeReceiptRecord | None:
        """A receipt, or None."""
        ...

    def latest_receipt(self, target: str) -> PurgeReceiptRecord | None:
        """The newest receipt of ``target``, or None."""
        ...


class GrantStore(Protocol):
    """Break-glass grants. State changes are conditional updates, so two approvers (or an
    approve racing a revoke) cannot both win."""

    def create(self, grant: GrantRecord) -> None:
        """Store a new ``pending`` grant.

        Raises:
            AlreadyExists: The id is taken.
        """
        ...

    def get(self, grant_id: str) -> GrantRecord | None:
        """A grant by id (any tenant), or None."""
        ...

    def approve(self, grant_id: str, approver: str, approver_cert: str, at: datetime) -> bool:
        """Move a ``pending`` grant to ``active`` (expiring ``at`` + its duration, computed by
        the store) if the approver is neither the requester nor their certificate. Returns
        whether this call did it."""
        ...

    def revoke(self, grant_id: str, by: str, at: datetime) -> bool:
        """Move a ``pending`` or ``active`` grant to ``revoked``. Returns whether this call did."""
        ...

    def list(self, tenant_id: str, limit: int) -> list[GrantRecord]:
        """The tenant's grants, newest first (at most ``limit``)."""
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
    def data_keys(self) -> DataKeyStore:
        """Data keys."""
        ...

    @property
    def sealed_secrets(self) -> SealedSecretStore:
        """Sealed secrets."""
        ...

    @property
    def customer_keys(self) -> CustomerKeyStore:
        """Customer-managed key configuration."""
        ...

    @property
    def fingerprint_schedule(self) -> FingerprintScheduleStore:
        """Scheduled fingerprint-key destructions."""
        ...

    @property
    def handles(self) -> HandleStore:
        """Opaque public handles."""
        ...

    @property
    def changes(self) -> ChangeFeed:
        """Change feed."""
        ...

    @property
    def grants(self) -> GrantStore:
        """Break-glass grants."""
        ...

    @property
    def purges(self) -> PurgeStore:
        """Purge jobs and receipts."""
        ...

    @property
    def audit(self) -> AuditStore:
        """Audit chains."""
        ...

    def migrate(self) -> list[int]:
        """Apply pending migrations in order; safe to run concurrently and repeatedly.

        Returns:
            The versions applied by this call (empty when up to date).
        """
        ...

    def migration_status(self) -> list[MigrationInfo]:
        """Every migration this release knows (applied or pending) and any applied one it does
        not know, ascending by version; changes nothing."""
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
