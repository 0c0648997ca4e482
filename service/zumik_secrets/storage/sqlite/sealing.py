"""SQLite adapters of the data-key, sealed-secret and customer-key stores (migration 0003)."""

# Column lists are module constants, never input: the f-strings below cannot inject.
# ruff: noqa: S608

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.ports import DataKeyId
from zumik_secrets.storage.records import CustomerKeyRecord, DataKeyRecord, SealedSecretRecord
from zumik_secrets.storage.sqlite.kernel import SqliteKernel

Row = tuple[Any, ...]

_DK_COLS = (
    "tenant_id, project_id, purpose, version, state, wrapped_key, wrapped_by, created_at,"
    " destroyed_at"
)


def _dk(row: Row | None) -> DataKeyRecord:
    if row is None:
        raise RuntimeError("statement returned no row")
    return DataKeyRecord(
        tenant_id=row[0],
        project_id=row[1],
        purpose=row[2],
        version=int(row[3]),
        state=row[4],
        wrapped_key=None if row[5] is None else bytes(row[5]),
        wrapped_by=row[6],
        created_at=c.from_us(row[7]),
        destroyed_at=c.opt_from_us(row[8]),
    )


def _entity(tenant_id: str, project_id: str, purpose: str) -> str:
    return f"{tenant_id}/{project_id}/{purpose}"


def _primary_key_violation() -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        "the primary data-key version cannot be destroyed; rotate first",
        reason="DATA_KEY_PRIMARY",
    )


class SqliteDataKeyStore:
    """:class:`~zumik_secrets.storage.ports.DataKeyStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def insert_first(self, rec: DataKeyRecord) -> None:
        with self._db.write() as conn:
            # Defence in depth behind the claim tombstones: a late call that raced a purge
            # (on another replica, inside the change-feed bound) re-creates no data key.
            purged = conn.execute(
                "SELECT 1 FROM purge_jobs WHERE tenant_id = ?"
                " AND (project_id IS NULL OR project_id = ?) LIMIT 1",
                (rec.tenant_id, rec.project_id),
            ).fetchone()
            if purged is not None:
                raise errors.FailedPrecondition(
                    "the tenant or project was purged; nothing can be created in it again",
                    reason="SCOPE_PURGED",
                )
            # OR IGNORE covers both the primary key and the one-primary index: the loser of a
            # race inserts nothing and re-reads the winner's key.
            conn.execute(
                f"INSERT OR IGNORE INTO data_keys ({_DK_COLS}) VALUES (?, ?, ?, 1, 'primary', ?,"
                " ?, ?, NULL)",
                (
                    rec.tenant_id,
                    rec.project_id,
                    rec.purpose,
                    rec.wrapped_key,
                    rec.wrapped_by,
                    c.to_us(rec.created_at),
                ),
            )

    def get(
        self, tenant_id: str, project_id: str, purpose: str, version: int
    ) -> DataKeyRecord | None:
        row = self._db.one(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = ? AND project_id = ?"
            " AND purpose = ? AND version = ?",
            (tenant_id, project_id, purpose, version),
        )
        return None if row is None else _dk(row)

    def primary(self, tenant_id: str, project_id: str, purpose: str) -> DataKeyRecord | None:
        row = self._db.one(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = ? AND project_id = ?"
            " AND purpose = ? AND state = 'primary'",
            (tenant_id, project_id, purpose),
        )
        return None if row is None else _dk(row)

    def list(
        self, tenant_id: str, project_id: str, purpose: str, *, page_size: int, after_version: int
    ) -> list[DataKeyRecord]:
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = ? AND project_id = ?"
            " AND purpose = ? AND version > ? ORDER BY version LIMIT ?",
            (tenant_id, project_id, purpose, after_version, page_size),
        )
        return [_dk(r) for r in rows]

    def rotate(
        self,
        tenant_id: str,
        project_id: str,
        purpose: str,
        make_wrapped: Callable[[int], tuple[bytes, str]],
        at: datetime,
    ) -> DataKeyRecord:
        with self._db.write() as conn:  # BEGIN IMMEDIATE serialises concurrent rotations
            row = conn.execute(
                "SELECT coalesce(max(version), 0) FROM data_keys WHERE tenant_id = ?"
                " AND project_id = ? AND purpose = ?",
                (tenant_id, project_id, purpose),
            ).fetchone()
            version = c.returned_int(row) + 1
            wrapped, wrapped_by = make_wrapped(version)
            conn.execute(
                "UPDATE data_keys SET state = 'enabled' WHERE tenant_id = ? AND project_id = ?"
                " AND purpose = ? AND state = 'primary'",
                (tenant_id, project_id, purpose),
            )
            new = conn.execute(
                f"INSERT INTO data_keys ({_DK_COLS}) VALUES (?, ?, ?, ?, 'primary', ?, ?, ?, NULL)"
                f" RETURNING {_DK_COLS}",
                (tenant_id, project_id, purpose, version, wrapped, wrapped_by, c.to_us(at)),
            ).fetchone()
            self._db.record_changes(conn, "data_key", [_entity(tenant_id, project_id, purpose)])
            return _dk(new)

    def destroy(
        self, tenant_id: str, project_id: str, purpose: str, version: int, at: datetime
    ) -> DataKeyRecord | None:
        key = (tenant_id, project_id, purpose, version)
        with self._db.write() as conn:
            row = conn.execute(
                f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = ? AND project_id = ?"
                " AND purpose = ? AND version = ?",
                key,
            ).fetchone()
            if row is None:
                return None
            current = _dk(row)
            if current.state == "primary":
                raise _primary_key_violation()
            if current.state == "destroyed":
                return current
            row = conn.execute(
                "UPDATE data_keys SET state = 'destroyed', wrapped_key = NULL, destroyed_at = ?"
                " WHERE tenant_id = ? AND project_id = ? AND purpose = ? AND version = ?"
                f" RETURNING {_DK_COLS}",
                (c.to_us(at), *key),
            ).fetchone()
            self._db.record_changes(conn, "data_key", [_entity(tenant_id, project_id, purpose)])
            return _dk(row)

    def list_wrapped(self, *, after: DataKeyId | None, limit: int) -> Sequence[DataKeyRecord]:
        start = after or ("", "", "", 0)
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE state != 'destroyed'"
            " AND (tenant_id, project_id, purpose, version) > (?, ?, ?, ?)"
            " ORDER BY tenant_id, project_id, purpose, version LIMIT ?",
            (*start, limit),
        )
        return [_dk(r) for r in rows]

    def list_tenant(self, tenant_id: str) -> Sequence[DataKeyRecord]:
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = ? AND state != 'destroyed'"
            " ORDER BY project_id, purpose, version",
            (tenant_id,),
        )
        return [_dk(r) for r in rows]

    def replace_wrapped(
        self, key: DataKeyId, old_wrapped: bytes, new_wrapped: bytes, wrapped_by: str
    ) -> bool:
        with self._db.write() as conn:
            return _swap_wrapped(conn, key, old_wrapped, new_wrapped, wrapped_by)


def _swap_wrapped(
    conn: sqlite3.Connection,
    key: DataKeyId,
    old_wrapped: bytes,
    new_wrapped: bytes,
    wrapped_by: str,
) -> bool:
    cur = conn.execute(
        "UPDATE data_keys SET wrapped_key = ?, wrapped_by = ? WHERE tenant_id = ?"
        " AND project_id = ? AND purpose = ? AND version = ? AND wrapped_key = ?",
        (new_wrapped, wrapped_by, *key, old_wrapped),
    )
    return cur.rowcount == 1


_SS_COLS = (
    "secret_id, tenant_id, project_id, display_name, metadata, version, data_key_version,"
    " size_bytes, ciphertext, created_at, updated_at, seq"
)


def _ss(row: Row) -> SealedSecretRecord:
    return SealedSecretRecord(
        secret_id=row[0],
        tenant_id=row[1],
        project_id=row[2],
        display_name=row[3],
        metadata={str(k): str(v) for k, v in json.loads(row[4]).items()},
        version=int(row[5]),
        data_key_version=int(row[6]),
        size_bytes=int(row[7]),
        ciphertext=bytes(row[8]),
        created_at=c.from_us(row[9]),
        updated_at=c.from_us(row[10]),
        seq=int(row[11]),
    )


class SqliteSealedSecretStore:
    """:class:`~zumik_secrets.storage.ports.SealedSecretStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def insert(self, rec: SealedSecretRecord) -> SealedSecretRecord:
        # Group commit: concurrent Seals share one transaction and one fsync.
        seq: int = self._db.write_combined(lambda conn: self._insert(conn, rec))
        return dataclasses.replace(rec, seq=seq)

    @staticmethod
    def _insert(conn: sqlite3.Connection, rec: SealedSecretRecord) -> int:
        row = conn.execute(
            "INSERT INTO sealed_secrets (secret_id, tenant_id, project_id, display_name,"
            " metadata, version, data_key_version, size_bytes, ciphertext, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (
                rec.secret_id,
                rec.tenant_id,
                rec.project_id,
                rec.display_name,
                json.dumps(rec.metadata, sort_keys=True, separators=(",", ":")),
                rec.version,
                rec.data_key_version,
                rec.size_bytes,
                rec.ciphertext,
                c.to_us(rec.created_at),
                c.to_us(rec.updated_at),
            ),
        ).fetchone()
        return c.returned_int(row)

    def get(self, tenant_id: str, project_id: str, secret_id: str) -> SealedSecretRecord | None:
        row = self._db.one(
            f"SELECT {_SS_COLS} FROM sealed_secrets WHERE secret_id = ? AND tenant_id = ?"
            " AND project_id = ?",
            (secret_id, tenant_id, project_id),
        )
        return None if row is None else _ss(row)

    def list(
        self,
        tenant_id: str,
        project_id: str,
        *,
        page_size: int,
        after_seq: int,
        not_on_version: int | None = None,
    ) -> list[SealedSecretRecord]:
        extra, params = "", [tenant_id, project_id, after_seq]
        if not_on_version is not None:
            extra = " AND data_key_version != ?"
            params.append(not_on_version)
        rows = self._db.all(
            f"SELECT {_SS_COLS} FROM sealed_secrets WHERE tenant_id = ? AND project_id = ?"
            f" AND seq > ?{extra} ORDER BY seq LIMIT ?",
            (*params, page_size),
        )
        return [_ss(r) for r in rows]

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
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE sealed_secrets SET version = ?, data_key_version = ?, size_bytes = ?,"
                " ciphertext = ?, updated_at = ? WHERE secret_id = ? AND tenant_id = ?"
                " AND project_id = ? AND version = ? AND data_key_version = ?"
                f" RETURNING {_SS_COLS}",
                (
                    version,
                    data_key_version,
                    size_bytes,
                    ciphertext,
                    c.to_us(at),
                    rec.secret_id,
                    rec.tenant_id,
                    rec.project_id,
                    rec.version,
                    rec.data_key_version,
                ),
            ).fetchone()
            return None if row is None else _ss(row)

    def delete(self, tenant_id: str, project_id: str, secret_id: str) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "DELETE FROM sealed_secrets WHERE secret_id = ? AND tenant_id = ?"
                " AND project_id = ?",
                (secret_id, tenant_id, project_id),
            )
            return cur.rowcount == 1

    def count_by_data_key_version(self, tenant_id: str, project_id: str) -> dict[int, int]:
        rows = self._db.all(
            "SELECT data_key_version, count(*) FROM sealed_secrets WHERE tenant_id = ?"
            " AND project_id = ? GROUP BY data_key_version",
            (tenant_id, project_id),
        )
        return {int(r[0]): int(r[1]) for r in rows}


_CK_COLS = "tenant_id, address, mount, key_name, wrapped_token, ca_certificate_pem, updated_at"


class SqliteCustomerKeyStore:
    """:class:`~zumik_secrets.storage.ports.CustomerKeyStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def get(self, tenant_id: str) -> CustomerKeyRecord | None:
        row = self._db.one(
            f"SELECT {_CK_COLS} FROM customer_keys WHERE tenant_id = ?", (tenant_id,)
        )
        if row is None:
            return None
        return CustomerKeyRecord(
            row[0], row[1], row[2], row[3], bytes(row[4]), row[5], c.from_us(row[6])
        )

    def wrapped_tokens(self) -> list[tuple[str, bytes]]:
        return [
            (str(r[0]), bytes(r[1]))
            for r in self._db.all(
                "SELECT tenant_id, wrapped_token FROM customer_keys ORDER BY tenant_id"
            )
        ]

    def put(
        self,
        rec: CustomerKeyRecord,
        rewrapped: Sequence[tuple[DataKeyId, bytes, bytes]],
    ) -> None:
        with self._db.write() as conn:
            for key, old, new in rewrapped:
                if key[0] != rec.tenant_id or not _swap_wrapped(conn, key, old, new, "customer"):
                    raise errors.FailedPrecondition(
                        "the tenant's data keys changed during the configuration; retry",
                        reason="DATA_KEYS_CHANGED",
                    )
            conn.execute(
                f"INSERT INTO customer_keys ({_CK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id) DO UPDATE SET address = excluded.address,"
                " mount = excluded.mount, key_name = excluded.key_name,"
                " wrapped_token = excluded.wrapped_token,"
                " ca_certificate_pem = excluded.ca_certificate_pem,"
                " updated_at = excluded.updated_at",
                (
                    rec.tenant_id,
                    rec.address,
                    rec.mount,
                    rec.key_name,
                    rec.wrapped_token,
                    rec.ca_certificate_pem,
                    c.to_us(rec.updated_at),
                ),
            )
            self._db.record_changes(conn, "customer_key", [rec.tenant_id])
