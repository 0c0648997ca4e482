"""PostgreSQL adapters of the data-key, sealed-secret and customer-key stores (migration 0003)."""

# Column lists are module constants, never input: the f-strings below cannot inject.
# ruff: noqa: S608

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from zumik_secrets.core import errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage import outbox
from zumik_secrets.storage.ports import DataKeyId
from zumik_secrets.storage.postgres.kernel import Conn, PgKernel, outbox_cte
from zumik_secrets.storage.records import CustomerKeyRecord, DataKeyRecord, SealedSecretRecord

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
        created_at=c.utc(row[7]),
        destroyed_at=c.opt_utc(row[8]),
    )


def _entity(tenant_id: str, project_id: str, purpose: str) -> str:
    return f"{tenant_id}/{project_id}/{purpose}"


def _primary_key_violation() -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        "the primary data-key version cannot be destroyed; rotate first",
        reason="DATA_KEY_PRIMARY",
    )


class PgDataKeyStore:
    """:class:`~zumik_secrets.storage.ports.DataKeyStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def insert_first(self, rec: DataKeyRecord) -> None:
        with self._db.tx() as conn:
            # Defence in depth behind the claim tombstones: a late call that raced a purge
            # (on another replica, inside the change-feed bound) re-creates no data key.
            purged = conn.execute(
                "SELECT 1 FROM purge_jobs WHERE tenant_id = %s"
                " AND (project_id IS NULL OR project_id = %s) LIMIT 1",
                (rec.tenant_id, rec.project_id),
            ).fetchone()
            if purged is not None:
                raise errors.FailedPrecondition(
                    "the tenant or project was purged; nothing can be created in it again",
                    reason="SCOPE_PURGED",
                )
            # ON CONFLICT DO NOTHING (no target) covers both the primary key and the
            # one-primary index: the loser of a race inserts nothing and re-reads the winner's.
            conn.execute(
                f"INSERT INTO data_keys ({_DK_COLS}) VALUES (%s, %s, %s, 1, 'primary', %s,"
                " %s, %s, NULL) ON CONFLICT DO NOTHING",
                (
                    rec.tenant_id,
                    rec.project_id,
                    rec.purpose,
                    rec.wrapped_key,
                    rec.wrapped_by,
                    c.require_aware(rec.created_at),
                ),
            )

    def get(
        self, tenant_id: str, project_id: str, purpose: str, version: int
    ) -> DataKeyRecord | None:
        row = self._db.one(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = %s AND project_id = %s"
            " AND purpose = %s AND version = %s",
            (tenant_id, project_id, purpose, version),
        )
        return None if row is None else _dk(row)

    def primary(self, tenant_id: str, project_id: str, purpose: str) -> DataKeyRecord | None:
        row = self._db.one(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = %s AND project_id = %s"
            " AND purpose = %s AND state = 'primary'",
            (tenant_id, project_id, purpose),
        )
        return None if row is None else _dk(row)

    def list(
        self, tenant_id: str, project_id: str, purpose: str, *, page_size: int, after_version: int
    ) -> list[DataKeyRecord]:
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = %s AND project_id = %s"
            " AND purpose = %s AND version > %s ORDER BY version LIMIT %s",
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
        with self._db.tx() as conn:
            # A transaction-scoped advisory lock per triple serialises concurrent rotations
            # (the max+1 read below would otherwise race).
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                ("zumik-dek/" + _entity(tenant_id, project_id, purpose),),
            )
            row = conn.execute(
                "SELECT coalesce(max(version), 0) FROM data_keys WHERE tenant_id = %s"
                " AND project_id = %s AND purpose = %s",
                (tenant_id, project_id, purpose),
            ).fetchone()
            version = c.returned_int(row) + 1
            wrapped, wrapped_by = make_wrapped(version)
            conn.execute(
                "UPDATE data_keys SET state = 'enabled' WHERE tenant_id = %s AND project_id = %s"
                " AND purpose = %s AND state = 'primary'",
                (tenant_id, project_id, purpose),
            )
            new = conn.execute(
                f"INSERT INTO data_keys ({_DK_COLS})"
                " VALUES (%s, %s, %s, %s, 'primary', %s, %s, %s, NULL)"
                f" RETURNING {_DK_COLS}",
                (tenant_id, project_id, purpose, version, wrapped, wrapped_by, c.require_aware(at)),
            ).fetchone()
            self._db.record_changes(conn, "data_key", [_entity(tenant_id, project_id, purpose)])
            return _dk(new)

    def destroy(
        self, tenant_id: str, project_id: str, purpose: str, version: int, at: datetime
    ) -> DataKeyRecord | None:
        key = (tenant_id, project_id, purpose, version)
        with self._db.tx() as conn:
            row = conn.execute(
                f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = %s AND project_id = %s"
                " AND purpose = %s AND version = %s FOR UPDATE",
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
                "UPDATE data_keys SET state = 'destroyed', wrapped_key = NULL, destroyed_at = %s"
                " WHERE tenant_id = %s AND project_id = %s AND purpose = %s AND version = %s"
                f" RETURNING {_DK_COLS}",
                (c.require_aware(at), *key),
            ).fetchone()
            self._db.record_changes(conn, "data_key", [_entity(tenant_id, project_id, purpose)])
            return _dk(row)

    def list_wrapped(self, *, after: DataKeyId | None, limit: int) -> Sequence[DataKeyRecord]:
        start = after or ("", "", "", 0)
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE state != 'destroyed'"
            " AND (tenant_id, project_id, purpose, version) > (%s, %s, %s, %s)"
            " ORDER BY tenant_id, project_id, purpose, version LIMIT %s",
            (*start, limit),
        )
        return [_dk(r) for r in rows]

    def list_tenant(self, tenant_id: str) -> Sequence[DataKeyRecord]:
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = %s AND state != 'destroyed'"
            " ORDER BY project_id, purpose, version",
            (tenant_id,),
        )
        return [_dk(r) for r in rows]

    def replace_wrapped(
        self, key: DataKeyId, old_wrapped: bytes, new_wrapped: bytes, wrapped_by: str
    ) -> bool:
        with self._db.tx() as conn:
            return _swap_wrapped(conn, key, old_wrapped, new_wrapped, wrapped_by)


def _swap_wrapped(
    conn: Conn,
    key: DataKeyId,
    old_wrapped: bytes,
    new_wrapped: bytes,
    wrapped_by: str,
) -> bool:
    cur = conn.execute(
        "UPDATE data_keys SET wrapped_key = %s, wrapped_by = %s WHERE tenant_id = %s"
        " AND project_id = %s AND purpose = %s AND version = %s AND wrapped_key = %s",
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
        metadata={str(k): str(v) for k, v in dict(row[4]).items()},
        version=int(row[5]),
        data_key_version=int(row[6]),
        size_bytes=int(row[7]),
        ciphertext=bytes(row[8]),
        created_at=c.utc(row[9]),
        updated_at=c.utc(row[10]),
        seq=int(row[11]),
    )


class PgSealedSecretStore:
    """:class:`~zumik_secrets.storage.ports.SealedSecretStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def insert(self, rec: SealedSecretRecord) -> SealedSecretRecord:
        insert = (
            "INSERT INTO sealed_secrets (secret_id, tenant_id, project_id, display_name,"
            " metadata, version, data_key_version, size_bytes, ciphertext, created_at,"
            " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq"
        )
        params: list[Any] = [
            rec.secret_id,
            rec.tenant_id,
            rec.project_id,
            rec.display_name,
            Jsonb(dict(rec.metadata)),
            rec.version,
            rec.data_key_version,
            rec.size_bytes,
            rec.ciphertext,
            c.require_aware(rec.created_at),
            c.require_aware(rec.updated_at),
        ]
        staged = outbox.pending()
        if staged is None:
            with self._db.tx() as conn:
                row = conn.execute(insert, params).fetchone()
            return dataclasses.replace(rec, seq=c.returned_int(row))
        # The hot path of Seal: the row and its audit event in one statement (one round trip).
        events_sql, events_params = outbox_cte(staged.drafts)
        with self._db.autocommit() as conn:
            row = conn.execute(
                f"WITH ins AS ({insert}), ob AS ({events_sql}) SELECT seq FROM ins",
                [*params, *events_params],
            ).fetchone()
        outbox.written(staged)
        return dataclasses.replace(rec, seq=c.returned_int(row))

    def get(self, tenant_id: str, project_id: str, secret_id: str) -> SealedSecretRecord | None:
        row = self._db.one(
            f"SELECT {_SS_COLS} FROM sealed_secrets WHERE secret_id = %s AND tenant_id = %s"
            " AND project_id = %s",
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
            extra = " AND data_key_version != %s"
            params.append(not_on_version)
        rows = self._db.all(
            f"SELECT {_SS_COLS} FROM sealed_secrets WHERE tenant_id = %s AND project_id = %s"
            f" AND seq > %s{extra} ORDER BY seq LIMIT %s",
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
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE sealed_secrets SET version = %s, data_key_version = %s, size_bytes = %s,"
                " ciphertext = %s, updated_at = %s WHERE secret_id = %s AND tenant_id = %s"
                " AND project_id = %s AND version = %s AND data_key_version = %s"
                f" RETURNING {_SS_COLS}",
                (
                    version,
                    data_key_version,
                    size_bytes,
                    ciphertext,
                    c.require_aware(at),
                    rec.secret_id,
                    rec.tenant_id,
                    rec.project_id,
                    rec.version,
                    rec.data_key_version,
                ),
            ).fetchone()
            return None if row is None else _ss(row)

    def delete(self, tenant_id: str, project_id: str, secret_id: str) -> bool:
        with self._db.tx() as conn:
            cur = conn.execute(
                "DELETE FROM sealed_secrets WHERE secret_id = %s AND tenant_id = %s"
                " AND project_id = %s",
                (secret_id, tenant_id, project_id),
            )
            return cur.rowcount == 1

    def count_by_data_key_version(self, tenant_id: str, project_id: str) -> dict[int, int]:
        rows = self._db.all(
            "SELECT data_key_version, count(*) FROM sealed_secrets WHERE tenant_id = %s"
            " AND project_id = %s GROUP BY data_key_version",
            (tenant_id, project_id),
        )
        return {int(r[0]): int(r[1]) for r in rows}


_CK_COLS = "tenant_id, address, mount, key_name, wrapped_token, ca_certificate_pem, updated_at"


class PgCustomerKeyStore:
    """:class:`~zumik_secrets.storage.ports.CustomerKeyStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def get(self, tenant_id: str) -> CustomerKeyRecord | None:
        row = self._db.one(
            f"SELECT {_CK_COLS} FROM customer_keys WHERE tenant_id = %s", (tenant_id,)
        )
        if row is None:
            return None
        return CustomerKeyRecord(
            row[0], row[1], row[2], row[3], bytes(row[4]), row[5], c.utc(row[6])
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
        with self._db.tx() as conn:
            for key, old, new in rewrapped:
                if key[0] != rec.tenant_id or not _swap_wrapped(conn, key, old, new, "customer"):
                    raise errors.FailedPrecondition(
                        "the tenant's data keys changed during the configuration; retry",
                        reason="DATA_KEYS_CHANGED",
                    )
            conn.execute(
                f"INSERT INTO customer_keys ({_CK_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
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
                    c.require_aware(rec.updated_at),
                ),
            )
            self._db.record_changes(conn, "customer_key", [rec.tenant_id])
