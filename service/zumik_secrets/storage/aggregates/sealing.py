"""The data-key, sealed-secret and customer-key stores (migration 0003), on either backend.

Where the backends differ:

- ``DataKeyStore.insert_first``: insert-or-ignore (the dialect's ``insert_ignore``) covers the
  primary key and the one-primary index: the loser of a race inserts nothing and re-reads the
  winner's key.
- ``DataKeyStore.rotate`` serialises concurrent rotations of one (tenant, project, purpose)
  with :meth:`~zumik_secrets.storage.sql.kernel.Kernel.lock_key` (SQLite: the write lock of
  ``BEGIN IMMEDIATE`` already does; PostgreSQL: a transaction-scoped advisory lock), since the
  ``max(version) + 1`` read would otherwise race; ``destroy`` reads the version ``FOR UPDATE``
  (PostgreSQL; SQLite's write transaction excludes every other writer).
- ``SealedSecretStore.replace_ciphertext`` and ``delete`` record a ``sealed_secret`` change
  (``tenant/project/secret_id``) in their transaction when they changed the row, so other
  replicas' Open row caches drop it (app/sealed_secrets.py); an insert records none (no replica
  can hold a row that did not exist).
- ``SealedSecretStore.insert`` (Seal's hot path) goes through
  :meth:`~zumik_secrets.storage.sql.kernel.Kernel.write_hot`: group commit on SQLite; on
  PostgreSQL a transaction that takes the purge fence's shared lock, then inserts.
- Every create (``insert_first``, ``rotate``, ``insert``, ``SqlCustomerKeyStore.put``) is
  fenced against a purge of its scope (aggregates/fence.py): FAILED_PRECONDITION
  ``SCOPE_PURGED``.
"""

# Column lists are module constants, never input: the f-strings below cannot inject.
# ruff: noqa: S608

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.aggregates import fence
from zumik_secrets.storage.ports import DataKeyId
from zumik_secrets.storage.records import CustomerKeyRecord, DataKeyRecord, SealedSecretRecord
from zumik_secrets.storage.sql.kernel import Connection, Kernel

Row = tuple[Any, ...]

_DK_COLS = (
    "tenant_id, project_id, purpose, version, state, wrapped_key, wrapped_by, created_at,"
    " destroyed_at"
)
_DK_KEY = "tenant_id = %s AND project_id = %s AND purpose = %s"


def _entity(tenant_id: str, project_id: str, purpose: str) -> str:
    return f"{tenant_id}/{project_id}/{purpose}"


def secret_entity(tenant_id: str, project_id: str, secret_id: str) -> str:
    """The change-feed entity id of a sealed secret (kind ``sealed_secret``)."""
    return f"{tenant_id}/{project_id}/{secret_id}"


def _primary_key_violation() -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        "the primary data-key version cannot be destroyed; rotate first",
        reason="DATA_KEY_PRIMARY",
    )


class SqlDataKeyStore:
    """:class:`~zumik_secrets.storage.ports.DataKeyStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def _dk(self, row: Row | None) -> DataKeyRecord:
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
            created_at=self._d.time_out(row[7]),
            destroyed_at=self._d.opt_time_out(row[8]),
        )

    def insert_first(self, rec: DataKeyRecord) -> None:
        with self._db.transaction() as conn:
            # The claim tombstones cannot stop a call that raced a purge (authorised before it
            # began, or on another replica inside the change-feed bound): the fence does.
            fence.check(self._db, conn, rec.tenant_id, rec.project_id)
            conn.execute(
                self._d.insert_ignore(
                    f"INTO data_keys ({_DK_COLS}) VALUES (%s, %s, %s, 1, 'primary', %s, %s, %s,"
                    " NULL)"
                ),
                (
                    rec.tenant_id,
                    rec.project_id,
                    rec.purpose,
                    rec.wrapped_key,
                    rec.wrapped_by,
                    self._d.time_in(rec.created_at),
                ),
            )

    def get(
        self, tenant_id: str, project_id: str, purpose: str, version: int
    ) -> DataKeyRecord | None:
        row = self._db.one(
            f"SELECT {_DK_COLS} FROM data_keys WHERE {_DK_KEY} AND version = %s",
            (tenant_id, project_id, purpose, version),
        )
        return None if row is None else self._dk(row)

    def primary(self, tenant_id: str, project_id: str, purpose: str) -> DataKeyRecord | None:
        row = self._db.one(
            f"SELECT {_DK_COLS} FROM data_keys WHERE {_DK_KEY} AND state = 'primary'",
            (tenant_id, project_id, purpose),
        )
        return None if row is None else self._dk(row)

    def list(
        self, tenant_id: str, project_id: str, purpose: str, *, page_size: int, after_version: int
    ) -> list[DataKeyRecord]:
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE {_DK_KEY} AND version > %s"
            " ORDER BY version LIMIT %s",
            (tenant_id, project_id, purpose, after_version, page_size),
        )
        return [self._dk(r) for r in rows]

    def rotate(
        self,
        tenant_id: str,
        project_id: str,
        purpose: str,
        make_wrapped: Callable[[int], tuple[bytes, str]],
        at: datetime,
    ) -> DataKeyRecord:
        triple = (tenant_id, project_id, purpose)
        with self._db.transaction() as conn:
            # A new version is created in the scope: fenced (first, as every create).
            fence.check(self._db, conn, tenant_id, project_id)
            # Concurrent rotations of one triple queue here (the max + 1 below would race).
            self._db.lock_key(conn, "zumik-dek/" + _entity(*triple))
            row = conn.execute(
                f"SELECT coalesce(max(version), 0) FROM data_keys WHERE {_DK_KEY}", triple
            ).fetchone()
            version = c.returned_int(row) + 1
            wrapped, wrapped_by = make_wrapped(version)
            conn.execute(
                f"UPDATE data_keys SET state = 'enabled' WHERE {_DK_KEY} AND state = 'primary'",
                triple,
            )
            new = conn.execute(
                f"INSERT INTO data_keys ({_DK_COLS})"
                " VALUES (%s, %s, %s, %s, 'primary', %s, %s, %s, NULL)"
                f" RETURNING {_DK_COLS}",
                (*triple, version, wrapped, wrapped_by, self._d.time_in(at)),
            ).fetchone()
            self._db.record_changes(conn, "data_key", [_entity(*triple)])
            return self._dk(new)

    def destroy(
        self, tenant_id: str, project_id: str, purpose: str, version: int, at: datetime
    ) -> DataKeyRecord | None:
        key = (tenant_id, project_id, purpose, version)
        with self._db.transaction() as conn:
            row = conn.execute(
                f"SELECT {_DK_COLS} FROM data_keys WHERE {_DK_KEY} AND version = %s"
                + self._d.for_update,
                key,
            ).fetchone()
            if row is None:
                return None
            current = self._dk(row)
            if current.state == "primary":
                raise _primary_key_violation()
            if current.state == "destroyed":
                return current
            row = conn.execute(
                "UPDATE data_keys SET state = 'destroyed', wrapped_key = NULL, destroyed_at = %s"
                f" WHERE {_DK_KEY} AND version = %s RETURNING {_DK_COLS}",
                (self._d.time_in(at), *key),
            ).fetchone()
            self._db.record_changes(conn, "data_key", [_entity(tenant_id, project_id, purpose)])
            return self._dk(row)

    def list_wrapped(self, *, after: DataKeyId | None, limit: int) -> Sequence[DataKeyRecord]:
        start = after or ("", "", "", 0)
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE state <> 'destroyed'"
            " AND (tenant_id, project_id, purpose, version) > (%s, %s, %s, %s)"
            " ORDER BY tenant_id, project_id, purpose, version LIMIT %s",
            (*start, limit),
        )
        return [self._dk(r) for r in rows]

    def list_tenant(self, tenant_id: str) -> Sequence[DataKeyRecord]:
        rows = self._db.all(
            f"SELECT {_DK_COLS} FROM data_keys WHERE tenant_id = %s AND state <> 'destroyed'"
            " ORDER BY project_id, purpose, version",
            (tenant_id,),
        )
        return [self._dk(r) for r in rows]

    def replace_wrapped(
        self, key: DataKeyId, old_wrapped: bytes, new_wrapped: bytes, wrapped_by: str
    ) -> bool:
        with self._db.transaction() as conn:
            return _swap_wrapped(conn, key, old_wrapped, new_wrapped, wrapped_by)


def _swap_wrapped(
    conn: Connection, key: DataKeyId, old_wrapped: bytes, new_wrapped: bytes, wrapped_by: str
) -> bool:
    cur = conn.execute(
        f"UPDATE data_keys SET wrapped_key = %s, wrapped_by = %s WHERE {_DK_KEY}"
        " AND version = %s AND wrapped_key = %s",
        (new_wrapped, wrapped_by, *key, old_wrapped),
    )
    return cur.rowcount == 1


_SS_COLS = (
    "secret_id, tenant_id, project_id, display_name, metadata, version, data_key_version,"
    " size_bytes, ciphertext, created_at, updated_at, seq"
)
# Seal's insert, fenced in the statement itself (no row: the scope was purged); write_hot takes
# the fence's shared lock before it (aggregates/fence.py).
_SS_INSERT = (
    "INSERT INTO sealed_secrets (secret_id, tenant_id, project_id, display_name, metadata,"
    " version, data_key_version, size_bytes, ciphertext, created_at, updated_at)"
    f" SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s WHERE {fence.NOT_PURGED} RETURNING seq"
)
_SS_KEY = "secret_id = %s AND tenant_id = %s AND project_id = %s"


class SqlSealedSecretStore:
    """:class:`~zumik_secrets.storage.ports.SealedSecretStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def _ss(self, row: Row) -> SealedSecretRecord:
        d = self._d
        return SealedSecretRecord(
            secret_id=row[0],
            tenant_id=row[1],
            project_id=row[2],
            display_name=row[3],
            metadata={str(k): str(v) for k, v in d.json_out(row[4]).items()},
            version=int(row[5]),
            data_key_version=int(row[6]),
            size_bytes=int(row[7]),
            ciphertext=bytes(row[8]),
            created_at=d.time_out(row[9]),
            updated_at=d.time_out(row[10]),
            seq=int(row[11]),
        )

    def insert(self, rec: SealedSecretRecord) -> SealedSecretRecord:
        d = self._d
        row = self._db.write_hot(
            _SS_INSERT,
            (
                rec.secret_id,
                rec.tenant_id,
                rec.project_id,
                rec.display_name,
                d.json_in(dict(rec.metadata)),
                rec.version,
                rec.data_key_version,
                rec.size_bytes,
                rec.ciphertext,
                d.time_in(rec.created_at),
                d.time_in(rec.updated_at),
                *fence.params(rec.tenant_id, rec.project_id),
            ),
            shared_lock=fence.lock_key(rec.tenant_id),
        )
        if row is None:
            raise fence.scope_purged()
        return dataclasses.replace(rec, seq=c.returned_int(row))

    def get(self, tenant_id: str, project_id: str, secret_id: str) -> SealedSecretRecord | None:
        row = self._db.one(
            f"SELECT {_SS_COLS} FROM sealed_secrets WHERE {_SS_KEY}",
            (secret_id, tenant_id, project_id),
        )
        return None if row is None else self._ss(row)

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
            extra = " AND data_key_version <> %s"
            params.append(not_on_version)
        rows = self._db.all(
            f"SELECT {_SS_COLS} FROM sealed_secrets WHERE tenant_id = %s AND project_id = %s"
            f" AND seq > %s{extra} ORDER BY seq LIMIT %s",
            (*params, page_size),
        )
        return [self._ss(r) for r in rows]

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
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE sealed_secrets SET version = %s, data_key_version = %s, size_bytes = %s,"
                f" ciphertext = %s, updated_at = %s WHERE {_SS_KEY}"
                f" AND version = %s AND data_key_version = %s RETURNING {_SS_COLS}",
                (
                    version,
                    data_key_version,
                    size_bytes,
                    ciphertext,
                    self._d.time_in(at),
                    rec.secret_id,
                    rec.tenant_id,
                    rec.project_id,
                    rec.version,
                    rec.data_key_version,
                ),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(
                conn, "sealed_secret", [secret_entity(rec.tenant_id, rec.project_id, rec.secret_id)]
            )
            return self._ss(row)

    def delete(self, tenant_id: str, project_id: str, secret_id: str) -> bool:
        with self._db.transaction() as conn:
            cur = conn.execute(
                f"DELETE FROM sealed_secrets WHERE {_SS_KEY}", (secret_id, tenant_id, project_id)
            )
            if cur.rowcount != 1:
                return False
            self._db.record_changes(
                conn, "sealed_secret", [secret_entity(tenant_id, project_id, secret_id)]
            )
            return True

    def count_by_data_key_version(self, tenant_id: str, project_id: str) -> dict[int, int]:
        rows = self._db.all(
            "SELECT data_key_version, count(*) FROM sealed_secrets WHERE tenant_id = %s"
            " AND project_id = %s GROUP BY data_key_version",
            (tenant_id, project_id),
        )
        return {int(r[0]): int(r[1]) for r in rows}


_CK_COLS = "tenant_id, address, mount, key_name, wrapped_token, ca_certificate_pem, updated_at"


class SqlCustomerKeyStore:
    """:class:`~zumik_secrets.storage.ports.CustomerKeyStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def get(self, tenant_id: str) -> CustomerKeyRecord | None:
        row = self._db.one(
            f"SELECT {_CK_COLS} FROM customer_keys WHERE tenant_id = %s", (tenant_id,)
        )
        if row is None:
            return None
        return CustomerKeyRecord(
            row[0], row[1], row[2], row[3], bytes(row[4]), row[5], self._d.time_out(row[6])
        )

    def wrapped_tokens(self) -> list[tuple[str, bytes]]:
        rows = self._db.all("SELECT tenant_id, wrapped_token FROM customer_keys ORDER BY tenant_id")
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def put(
        self,
        rec: CustomerKeyRecord,
        rewrapped: Sequence[tuple[DataKeyId, bytes, bytes]],
    ) -> None:
        with self._db.transaction() as conn:
            fence.check(self._db, conn, rec.tenant_id, None)
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
                    self._d.time_in(rec.updated_at),
                ),
            )
            self._db.record_changes(conn, "customer_key", [rec.tenant_id])
