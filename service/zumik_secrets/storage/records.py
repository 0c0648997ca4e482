"""Records the storage ports read and write.

Every record is an immutable value. Datetimes are timezone-aware and in UTC; adapters refuse naive
datetimes rather than guess a zone. Byte fields hold hashes, salts and *wrapped* keys only: never a
raw secret. ``repr`` of records carrying hashes or wrapped keys hides those fields, so a record that
ends up in a log line or a traceback leaks nothing useful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

TELEMETRY_MODES = ("default", "rich")
SIGNING_KEY_PURPOSES = ("claims", "audit")
SIGNING_KEY_STATES = ("active", "retiring", "retired")
API_KEY_STATES = ("active", "revoked")
SESSION_STATES = ("active", "revoked")
CHANGE_KINDS = ("api_key", "session", "signing_key", "tenant_settings")


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """Per-tenant switches.

    Attributes:
        tenant_id: The tenant.
        telemetry_mode: ``"default"`` or ``"rich"`` (non-sensitive request fields in spans).
        updated_at: When the settings last changed.
    """

    tenant_id: str
    telemetry_mode: str
    updated_at: datetime


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
        kind: ``"api_key"``, ``"session"``, ``"signing_key"`` or ``"tenant_settings"``.
        entity_id: key_id, session_id, kid or tenant_id.
        at: When the change was recorded.
    """

    seq: int
    kind: str
    entity_id: str
    at: datetime
