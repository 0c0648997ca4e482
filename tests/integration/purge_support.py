"""Helpers of the purge and retention tests: populate a tenant through the RPCs, capture what
it left in the database, and scan the database (rows and, on SQLite, the raw files)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2
from zumik.secrets.v1 import fingerprint_service_pb2 as fpb
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import seal_service_pb2 as spb
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from tests.fix_server import RunningServer

PROJECTS = ("p1", "p2")
SCOPES = (
    "keys.write",
    "keys.read",
    "sessions.write",
    "secrets.seal",
    "secrets.open",
    "secrets.read",
    "fingerprints.compute",
    "handles.write",
    "handles.read",
    "console",
    "a.b",
)
FP_VALUE = b"alice@example.com"
# Tables a purge keeps on purpose (audit chains, the purge's own records) or that only hold
# short-lived invalidation notices (changes; pruned by the retention run).
KEPT_TABLES = frozenset(
    {"audit_events", "audit_heads", "audit_checkpoints", "purge_jobs", "purge_receipts", "changes"}
)


def tenant_id(prefix: str) -> str:
    """A tenant id unique to this test (so a scan for it cannot hit another test's rows)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Population:
    """What :func:`populate` made for one tenant."""

    tenant: str
    raw_keys: list[str] = field(default_factory=list)
    session_tokens: list[str] = field(default_factory=list)
    secrets: dict[str, bytes] = field(default_factory=dict)  # name -> plaintext
    handles: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # project -> fingerprint

    def expected_counts(self) -> dict[str, int]:
        """The receipt counts a tenant purge of this population must show."""
        return {
            "api_keys": len(self.raw_keys),
            "sessions": len(self.session_tokens),
            "secrets": len(self.secrets),
            "handles": len(self.handles),
            "data_key_versions": 5,  # p1: seal v1, v2, fingerprint v1; p2: seal v1, fingerprint v1
            "seal_keys": 3,
            "fingerprint_keys": 2,
            "customer_keys": 0,
            "tenant_settings": 1,
        }


def claim_stubs(server: RunningServer, tenant: str, project: str, role: str = "console") -> Any:
    # The sessions populate() makes are user-1's: the claim acts for that user (no impersonation).
    return server.stubs(role, claim=server.mint_claim(tenant, project, SCOPES, subject="user-1"))


def populate(server: RunningServer, tenant: str) -> Population:
    """Keys, sessions, secrets (two seal-key versions in p1), fingerprints, handles, settings."""
    pop = Population(tenant)
    control = server.stubs("control-plane")
    control.tenants.UpdateTenantSettings(
        tpb.UpdateTenantSettingsRequest(
            name=f"tenants/{tenant}/settings",
            settings=tpb.TenantSettings(audit_retention=duration_pb2.Duration(seconds=90 * 86400)),
            update_mask=field_mask_pb2.FieldMask(paths=["audit_retention"]),
        ),
        timeout=10,
    )
    for project in PROJECTS:
        parent = f"tenants/{tenant}/projects/{project}"
        stubs = claim_stubs(server, tenant, project)
        for i in range(2):
            created = stubs.keys.CreateApiKey(
                kpb.CreateApiKeyRequest(
                    parent=parent, display_name=f"key {i}", scopes=["secrets.open"]
                ),
                timeout=10,
            )
            pop.raw_keys.append(created.raw_key)
        session = stubs.keys.CreateSession(
            kpb.CreateSessionRequest(parent=parent, user_subject="user-1", scopes=["console"]),
            timeout=10,
        )
        pop.session_tokens.append(session.token)
        for i in range(2):
            plaintext = f"sk-{tenant}-{project}-{i}-{uuid.uuid4().hex}".encode()
            secret = stubs.seal.Seal(
                spb.SealRequest(parent=parent, plaintext=plaintext), timeout=10
            )
            pop.secrets[secret.secret.name] = plaintext
        fp = claim_stubs(server, tenant, project, "executor").fingerprints.Fingerprint(
            fpb.FingerprintRequest(parent=parent, namespace="email", values=[FP_VALUE]),
            timeout=10,
        )
        pop.fingerprints[project] = fp.fingerprints[0]
        if project == "p1":
            control.seal.RotateDataKey(
                spb.RotateDataKeyRequest(parent=parent, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL),
                timeout=10,
            )
            plaintext = f"sk-{tenant}-rotated-{uuid.uuid4().hex}".encode()
            secret = stubs.seal.Seal(
                spb.SealRequest(parent=parent, plaintext=plaintext), timeout=10
            )
            pop.secrets[secret.secret.name] = plaintext
    stubs = claim_stubs(server, tenant, PROJECTS[0])
    for i in range(2):
        minted = stubs.fingerprints.MintHandle(
            fpb.MintHandleRequest(parent=f"tenants/{tenant}", kind="user", reference=f"users/{i}"),
            timeout=10,
        )
        pop.handles.append(minted.handle.name)
    return pop


def verify_key(server: RunningServer, raw_key: str) -> int:
    return int(
        server.stubs("gateway")
        .keys.VerifyApiKey(kpb.VerifyApiKeyRequest(key=raw_key), timeout=10)
        .result
    )


def verify_session(server: RunningServer, token: str) -> int:
    return int(
        server.stubs("gateway")
        .keys.VerifySession(kpb.VerifySessionRequest(token=token), timeout=10)
        .result
    )


def open_secret(server: RunningServer, name: str) -> bytes:
    tenant, project = name.split("/")[1], name.split("/")[3]
    stubs = claim_stubs(server, tenant, project, "executor")
    return bytes(stubs.seal.Open(spb.OpenRequest(name=name), timeout=10).plaintext)


def resolve_handle(server: RunningServer, name: str) -> str:
    tenant = name.split("/")[1]
    stubs = claim_stubs(server, tenant, PROJECTS[0], "executor")
    return str(
        stubs.fingerprints.ResolveHandle(
            fpb.ResolveHandleRequest(name=name), timeout=10
        ).handle.reference
    )


def fingerprint(server: RunningServer, tenant: str, project: str) -> str:
    stubs = claim_stubs(server, tenant, project, "executor")
    return str(
        stubs.fingerprints.Fingerprint(
            fpb.FingerprintRequest(
                parent=f"tenants/{tenant}/projects/{project}", namespace="email", values=[FP_VALUE]
            ),
            timeout=10,
        ).fingerprints[0]
    )


def purge_tenant(
    server: RunningServer, tenant: str, timeout: float = 60
) -> tpb.PurgeTenantResponse:
    name = f"tenants/{tenant}"
    return server.stubs("control-plane").tenants.PurgeTenant(
        tpb.PurgeTenantRequest(name=name, confirm=name), timeout=timeout
    )


def checkpoint_keys_json(server: RunningServer) -> str:
    keys = server.stubs("control-plane").audit.ListCheckpointKeys(
        apb.ListCheckpointKeysRequest(), timeout=10
    )
    return json_format.MessageToJson(keys)


def claim_refused(call: Any) -> None:
    """The call fails because its claim names a purged (or revoked) scope: UNAUTHENTICATED
    ``CLAIM_REVOKED``."""
    from tests.grpc_errors import error_info

    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (err.code(), err.details())  # type: ignore[attr-defined]
        assert error_info(err).reason == "CLAIM_REVOKED"
        return
    raise AssertionError("expected the claim to be refused")


def not_found(call: Any) -> None:
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, (err.code(), err.details())  # type: ignore[attr-defined]
        return
    raise AssertionError("expected NOT_FOUND")


# ------------------------------------------------------------------------------ the database


@contextmanager
def connect(url: str) -> Iterator[Any]:
    """A raw DB-API connection to the server's database (sqlite3 or psycopg, autocommit)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            yield pg


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``%s`` placeholders) and return its rows."""
    with connect(url) as conn:
        if url.startswith("sqlite"):
            sql = sql.replace("%s", "?")
        cur = conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []


def tables(url: str) -> list[str]:
    """Every table of the schema."""
    if url.startswith("sqlite"):
        rows = query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = query(
            url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE'",
        )
    return sorted(str(r[0]) for r in rows)


def _cell_bytes(cell: Any) -> bytes:
    if cell is None:
        return b""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, (list, dict)):
        return json.dumps(cell, default=str).encode()
    return str(cell).encode()


def rows_containing(url: str, needles: Iterable[bytes], skip: frozenset[str]) -> list[str]:
    """``table: column`` of every cell (outside ``skip``) holding one of ``needles``."""
    wanted = [n for n in needles if n]
    hits: list[str] = []
    for table in tables(url):
        if table in skip:
            continue
        with connect(url) as conn:
            cur = conn.execute(f"SELECT * FROM {table}")  # noqa: S608 - table names from the schema
            names = [d[0] for d in cur.description]
            for row in cur.fetchall():
                for name, cell in zip(names, row, strict=True):
                    data = _cell_bytes(cell)
                    if any(n in data for n in wanted):
                        hits.append(f"{table}.{name}")
    return sorted(set(hits))


def sqlite_files(url: str) -> list[Path]:
    base = Path(url.removeprefix("sqlite:///"))
    return [p for p in (base, Path(f"{base}-wal"), Path(f"{base}-shm")) if p.exists()]


def captured_secrets_of(url: str, tenant: str) -> dict[str, list[bytes]]:
    """What must not survive a purge of ``tenant``, read straight from the database."""
    return {
        "wrapped_keys": [
            bytes(r[0])
            for r in query(
                url,
                "SELECT wrapped_key FROM data_keys WHERE tenant_id = %s"
                " AND wrapped_key IS NOT NULL",
                (tenant,),
            )
        ],
        "ciphertexts": [
            bytes(r[0])
            for r in query(
                url, "SELECT ciphertext FROM sealed_secrets WHERE tenant_id = %s", (tenant,)
            )
        ],
        "key_hashes": [
            bytes(r[0])
            for r in query(url, "SELECT secret_hash FROM api_keys WHERE tenant_id = %s", (tenant,))
        ],
        "token_hashes": [
            bytes(r[0])
            for r in query(url, "SELECT token_hash FROM sessions WHERE tenant_id = %s", (tenant,))
        ],
    }
