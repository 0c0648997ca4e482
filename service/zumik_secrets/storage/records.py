"""Records the storage ports read and write.

Every record is an immutable value. Datetimes are timezone-aware and in UTC; adapters refuse naive
datetimes rather than guess a zone. Byte fields hold hashes, salts and *wrapped* keys only: never a
raw secret. ``repr`` of records carrying hashes or wrapped keys hides those fields, so a record that
ends up in a log line or a traceback leaks nothing useful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

TELEMETRY_MODES = ("default", "rich")
SIGNING_KEY_PURPOSES = ("claims", "audit")
SIGNING_KEY_STATES = ("active", "retiring", "retired")
API_KEY_STATES = ("active", "revoked")
SESSION_STATES = ("active", "revoked")
CHANGE_KINDS = (
    "api_key",
    "session",
    "signing_key",
    "tenant_settings",
    "data_key",
    "customer_key",
    "sealed_secret",
)
DATA_KEY_PURPOSES = ("seal", "fingerprint")
DATA_KEY_STATES = ("primary", "enabled", "destroyed")
DATA_KEY_WRAPPERS = ("keyring", "customer")


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """Per-tenant switches.

    Attributes:
        tenant_id: The tenant.
        telemetry_mode: ``"default"`` or ``"rich"`` (non-sensitive request fields in spans).
        updated_at: When the settings last changed.
        audit_retention: How long the tenant's audit events are kept (None: the default).
        revoked_key_retention: How long revoked or expired API keys are kept (None: default).
        session_absolute_lifetime: Default absolute lifetime of new sessions (None: default).
    """

    tenant_id: str
    telemetry_mode: str
    updated_at: datetime
    audit_retention: timedelta | None = None
    revoked_key_retention: timedelta | None = None
    session_absolute_lifetime: timedelta | None = None


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """An Ed25519 signing key, its private half wrapped under a keyring version.

    Attributes:
        kid: Key id (the JWT ``kid``); unique.
        purpose: ``"claims"`` or ``"audit"``.
        public_key: Raw public key bytes.
        wrapped_private_key: The private key sealed under the keyring (never the raw key).
        keyring_version: KEK version that wrapped the private key.
        state: ``"active"``, ``"retiring"`` (verifies, no longer signs) or ``"retired"``.
        created_at: Creation time.
        retire_after: When a retiring key may be retired, if scheduled.
    """

    kid: str
    purpose: str
    public_key: bytes
    wrapped_private_key: bytes = field(repr=False)
    keyring_version: int
    state: str
    created_at: datetime
    retire_after: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored API key: its public id, salted hash and lifecycle.

    Attributes:
        key_id: Handle ``key_<22 base62>``; unique across tenants.
        tenant_id: Owning tenant.
        project_id: Owning project.
        display_name: Human label.
        env: Environment segment of the raw key (``live``, ``test``...).
        masked_prefix: ``zk_<env>_<id>…``, safe to show.
        salt: Per-key random salt.
        secret_hash: SHA-256(salt || secret).
        scopes: Granted scopes.
        state: ``"active"`` or ``"revoked"``.
        created_at: Creation time.
        expire_time: When the key stops verifying, if ever.
        revoke_time: When it was revoked, if it was.
        last_used_at: Last successful verification (written in batches, may lag).
        rotated_from: key_id this key replaced, if created by rotation.
        seq: Insertion order assigned by the store; the pagination cursor.
    """

    key_id: str
    tenant_id: str
    project_id: str
    display_name: str
    env: str
    masked_prefix: str
    salt: bytes = field(repr=False)
    secret_hash: bytes = field(repr=False)
    scopes: tuple[str, ...]
    state: str
    created_at: datetime
    expire_time: datetime | None
    revoke_time: datetime | None
    last_used_at: datetime | None
    rotated_from: str | None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A user session, looked up by the SHA-256 of its bearer token.

    Attributes:
        session_id: Handle ``ses_<22 base62>``.
        token_hash: SHA-256 of the current token; unique. Rotation replaces it.
        tenant_id: Owning tenant.
        project_id: Owning project.
        user_subject: The user the session belongs to.
        scopes: Granted scopes.
        state: ``"active"`` or ``"revoked"``.
        created_at: Creation time.
        last_seen_at: Last use (moves only forward; written in batches, may lag).
        idle_timeout_seconds: Session dies after this long without use.
        absolute_expire_time: Session dies at this time whatever its use.
        revoke_time: When it was revoked, if it was.
        seq: Insertion order assigned by the store.
    """

    session_id: str
    token_hash: bytes = field(repr=False)
    tenant_id: str
    project_id: str
    user_subject: str
    scopes: tuple[str, ...]
    state: str
    created_at: datetime
    last_seen_at: datetime
    idle_timeout_seconds: int
    absolute_expire_time: datetime
    revoke_time: datetime | None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One entry of the change feed, written in the same transaction as the change it reports.

    Attributes:
        seq: Strictly increasing, in commit order.
        kind: One of :data:`CHANGE_KINDS` (and ``"purge"``).
        entity_id: key_id, session_id, kid, tenant_id, ``tenant/project/purpose`` (data_key),
            ``tenant/project/secret_id`` (sealed_secret), ``tenant[/project]`` (purge).
        at: When the change was recorded.
    """

    seq: int
    kind: str
    entity_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DataKeyRecord:
    """One version of a per-(tenant, project, purpose) data key, stored only wrapped.

    Attributes:
        tenant_id: Owning tenant.
        project_id: Owning project.
        purpose: ``"seal"`` or ``"fingerprint"``.
        version: 1, 2, ... per (tenant, project, purpose).
        state: ``"primary"`` (one per triple), ``"enabled"`` or ``"destroyed"``.
        wrapped_key: The key wrapped by ``wrapped_by``; None once destroyed (crypto-shredded).
        wrapped_by: ``"keyring"`` (master keyring) or ``"customer"`` (the tenant's own KMS key).
        created_at: Creation time.
        destroyed_at: When it was destroyed, if it was.
    """

    tenant_id: str
    project_id: str
    purpose: str
    version: int
    state: str
    wrapped_key: bytes | None = field(repr=False)
    wrapped_by: str
    created_at: datetime
    destroyed_at: datetime | None


@dataclass(frozen=True, slots=True)
class SealedSecretRecord:
    """A sealed secret: metadata and ciphertext (never plaintext).

    Attributes:
        secret_id: Handle ``sec_<22 base62>``; unique.
        tenant_id: Owning tenant.
        project_id: Owning project.
        display_name: Human label.
        metadata: Non-secret key/value pairs.
        version: Version of the plaintext, from 1.
        data_key_version: Version of the seal data key the ciphertext is under.
        size_bytes: Plaintext length.
        ciphertext: The sealed blob (``core.sealing`` format).
        created_at: Creation time.
        updated_at: When the plaintext was last replaced (or rewrapped).
        seq: Insertion order assigned by the store; the pagination cursor.
    """

    secret_id: str
    tenant_id: str
    project_id: str
    display_name: str
    metadata: dict[str, str]
    version: int
    data_key_version: int
    size_bytes: int
    ciphertext: bytes = field(repr=False)
    created_at: datetime
    updated_at: datetime
    seq: int = 0


@dataclass(frozen=True, slots=True)
class CustomerKeyRecord:
    """Where a tenant's customer-managed key lives (OpenBao/Vault Transit).

    Attributes:
        tenant_id: The tenant.
        address: ``https://host:port`` of the tenant's OpenBao or Vault.
        mount: Transit mount path.
        key_name: Transit key name.
        wrapped_token: The access token, wrapped by the master keyring (never stored raw).
        ca_certificate_pem: CA to trust for ``address`` ("" for the system roots).
        updated_at: When the configuration last changed.
    """

    tenant_id: str
    address: str
    mount: str
    key_name: str
    wrapped_token: bytes = field(repr=False)
    ca_certificate_pem: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduledDestroy:
    """A fingerprint-key version due to be destroyed when its rotation overlap window ends.

    Attributes:
        tenant_id: Owning tenant.
        project_id: Owning project.
        version: The data-key version (purpose ``fingerprint``) to destroy.
        destroy_at: When the window ends and linkage breaks.
    """

    tenant_id: str
    project_id: str
    version: int
    destroy_at: datetime


@dataclass(frozen=True, slots=True)
class HandleRecord:
    """An opaque public handle minted for one of a tenant's internal references.

    Attributes:
        tenant_id: Owning tenant (handles are unique per tenant).
        handle: ``<kind>_<22 base62>``, 128 random bits, never derived from the reference.
        kind: The kind prefix.
        reference: The caller's internal reference (1 to 256 printable characters).
        created_at: When it was minted.
        project_id: The project that minted it ("" for handles minted before projects owned
            them, visible only to tenant-wide callers).
    """

    tenant_id: str
    handle: str
    kind: str
    reference: str
    created_at: datetime
    project_id: str = ""


PURGE_PHASES = ("started", "shredded", "deleted", "done")


@dataclass(frozen=True, slots=True)
class ShreddedKey:
    """One data-key version a purge destroyed.

    Attributes:
        project_id: Its project.
        purpose: ``"seal"`` or ``"fingerprint"``.
        version: The version.
        was: Its state before the purge (``"destroyed"``: its material was already gone).
    """

    project_id: str
    purpose: str
    version: int
    was: str


@dataclass(frozen=True, slots=True)
class PurgeJob:
    """The progress of one purge, so an interrupted purge resumes where it stopped.

    Attributes:
        receipt_id: ``rcp_<22 base62>``: the job's id and its receipt's.
        tenant_id: The tenant purged (or whose project is purged).
        project_id: The project purged, or None for a whole-tenant purge.
        phase: ``started`` -> ``shredded`` (data keys destroyed) -> ``deleted`` (rows deleted)
            -> ``done`` (audited, receipt stored).
        destroyed: Counts by kind, filled in by the phases.
        shredded: The data-key versions destroyed by the shred phase.
        audit_retention: The tenant's audit retention when the purge began (the receipt promises
            the scope's audit events are kept that long; the settings row itself is purged).
        started_at: When the job was created.
        updated_at: When it last advanced.
    """

    receipt_id: str
    tenant_id: str
    project_id: str | None
    phase: str
    destroyed: dict[str, int]
    shredded: tuple[ShreddedKey, ...]
    audit_retention: timedelta
    started_at: datetime
    updated_at: datetime

    @property
    def target(self) -> str:
        """``tenants/{t}`` or ``tenants/{t}/projects/{p}``."""
        if self.project_id is None:
            return f"tenants/{self.tenant_id}"
        return f"tenants/{self.tenant_id}/projects/{self.project_id}"


@dataclass(frozen=True, slots=True)
class PurgeReceiptRecord:
    """A signed purge receipt as stored (kept after the tenant is gone; it holds no secret).

    Attributes:
        tenant_id: The tenant.
        receipt_id: ``rcp_<22 base62>``.
        target: What was purged.
        statement: The canonical statement (UTF-8 JSON, see ``core.purge_receipts``).
        kid: The audit checkpoint key that signed it.
        signature: Ed25519 over ``statement``.
        audit_sequence: Sequence number of the purge event in the tenant's audit chain.
        purge_time: When the purge completed.
    """

    tenant_id: str
    receipt_id: str
    target: str
    statement: bytes
    kid: str
    signature: bytes
    audit_sequence: int
    purge_time: datetime


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """One break-glass grant (migration 0008). Holds no secret: the id only works for its
    requester's certificate identity.

    Attributes:
        grant_id: ``bg_<22 base62>``.
        tenant_id: The one tenant the grant covers.
        permission_set: Name of the policy's permission set.
        requester: Operator SPIFFE ID that asked (the only one who can use it).
        requester_cert: SHA-256 hex of the requester's client certificate.
        reason: Free text why (checked for secrets before it is stored).
        ticket: Incident or change ticket reference.
        duration: Lifetime asked for (at most the set's maximum), counted from approval.
        state: ``pending``, ``active`` or ``revoked`` as stored (expiry is computed).
        requested_at: When it was asked for.
        approver: Operator SPIFFE ID that approved ("" while pending).
        approver_cert: SHA-256 hex of the approver's certificate ("" while pending).
        approved_at: When approved.
        expires_at: approved_at + duration.
        revoked_by: Who revoked it ("" unless revoked).
        revoked_at: When revoked.
    """

    grant_id: str
    tenant_id: str
    permission_set: str
    requester: str
    requester_cert: str
    reason: str
    ticket: str
    duration: timedelta
    state: str
    requested_at: datetime
    approver: str = ""
    approver_cert: str = ""
    approved_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_by: str = ""
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MigrationInfo:
    """One schema migration as ``migrate --status`` shows it.

    Attributes:
        version: The file's number (``0006_x.sql`` is 6).
        name: The rest of the file name.
        phase: ``expand`` (adds only: the previous release keeps working on the new schema) or
            ``contract`` (removes what the previous release no longer uses), from the file's
            ``-- phase:`` header line; ``expand`` when absent.
        sql: The migration's text.
        applied_at: When it was applied, or None if it is pending.
    """

    version: int
    name: str
    phase: str
    sql: str = field(repr=False)
    applied_at: datetime | None = None
