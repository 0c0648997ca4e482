"""Record builders for the storage tests."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from zumik_secrets.storage.records import ApiKeyRecord, SessionRecord, SigningKeyRecord

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def handle(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(11)}"


def api_key(
    tenant: str = "acme",
    project: str = "web",
    *,
    key_id: str | None = None,
    created: datetime = T0,
    expire: datetime | None = None,
    scopes: tuple[str, ...] = ("secrets.read", "keys:write"),
) -> ApiKeyRecord:
    key_id = key_id or handle("key")
    return ApiKeyRecord(
        key_id=key_id,
        tenant_id=tenant,
        project_id=project,
        display_name="CI key ü",
        env="live",
        masked_prefix=f"zk_live_{key_id[4:]}\u2026",
        salt=secrets.token_bytes(16),
        secret_hash=hashlib.sha256(secrets.token_bytes(8)).digest(),
        scopes=scopes,
        state="active",
        created_at=created,
        expire_time=expire,
        revoke_time=None,
        last_used_at=None,
        rotated_from=None,
    )


def session(
    tenant: str = "acme",
    project: str = "web",
    *,
    user: str = "user-1",
    created: datetime = T0,
    idle: int = 600,
    absolute: datetime | None = None,
) -> SessionRecord:
    return SessionRecord(
        session_id=handle("ses"),
        token_hash=hashlib.sha256(secrets.token_bytes(32)).digest(),
        tenant_id=tenant,
        project_id=project,
        user_subject=user,
        scopes=("console",),
        state="active",
        created_at=created,
        last_seen_at=created,
        idle_timeout_seconds=idle,
        absolute_expire_time=absolute or created + timedelta(hours=12),
        revoke_time=None,
    )


def signing_key(
    purpose: str = "claims", *, created: datetime = T0, kid: str | None = None
) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=kid or secrets.token_hex(8),
        purpose=purpose,
        public_key=secrets.token_bytes(32),
        wrapped_private_key=b"\x01" + secrets.token_bytes(59),
        keyring_version=3,
        state="active",
        created_at=created,
        retire_after=None,
    )
