"""The fingerprint-key destruction schedule and handles
(:class:`~zumik_secrets.storage.ports.FingerprintScheduleStore`,
:class:`~zumik_secrets.storage.ports.HandleStore`, migration 0004)."""

# The WHERE fragments are module constants, never input: the f-strings cannot inject.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from zumik_secrets.storage.aggregates import fence
from zumik_secrets.storage.records import HandleRecord, ScheduledDestroy
from zumik_secrets.storage.sql.dialect import Dialect
from zumik_secrets.storage.sql.kernel import Kernel, Row

PURPOSE = "fingerprint"
_SD_COLS = "tenant_id, project_id, version, destroy_at"


def _scheduled(d: Dialect, row: Row) -> ScheduledDestroy:
    return ScheduledDestroy(row[0], row[1], int(row[2]), d.time_out(row[3]))


class SqlFingerprintScheduleStore:
    """:class:`~zumik_secrets.storage.ports.FingerprintScheduleStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def schedule(
        self, tenant_id: str, project_id: str, versions: Sequence[int], destroy_at: datetime
    ) -> None:
        d = self._d
        at = d.time_in(destroy_at)
        earliest = d.least("fingerprint_key_schedule.destroy_at", "excluded.destroy_at")
        with self._db.transaction() as conn:
            fence.check(self._db, conn, tenant_id, project_id)
            conn.executemany(
                f"INSERT INTO fingerprint_key_schedule ({_SD_COLS}) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, project_id, version)"
                f" DO UPDATE SET destroy_at = {earliest}",
                [(tenant_id, project_id, v, at) for v in versions],
            )
            self._db.record_changes(conn, "data_key", [f"{tenant_id}/{project_id}/{PURPOSE}"])

    def pending(self, tenant_id: str, project_id: str) -> list[ScheduledDestroy]:
        rows = self._db.all(
            f"SELECT {_SD_COLS} FROM fingerprint_key_schedule"
            " WHERE tenant_id = %s AND project_id = %s ORDER BY version",
            (tenant_id, project_id),
        )
        return [_scheduled(self._d, r) for r in rows]

    def claim_due(
        self,
        now: datetime,
        lease_until: datetime,
        *,
        tenant_id: str | None = None,
        project_id: str | None = None,
        limit: int = 100,
    ) -> list[ScheduledDestroy]:
        d = self._d
        now_db, lease = d.time_in(now), d.time_in(lease_until)
        where = "destroy_at <= %s AND (lease_until IS NULL OR lease_until <= %s)"
        params: list[Any] = [now_db, now_db]
        if tenant_id is not None and project_id is not None:
            where += " AND tenant_id = %s AND project_id = %s"
            params += [tenant_id, project_id]
        with self._db.transaction() as conn:
            if d.skip_locked:
                # SKIP LOCKED: concurrent sweepers on other replicas take other rows, never these.
                rows = conn.execute(
                    "UPDATE fingerprint_key_schedule s SET lease_until = %s FROM ("
                    " SELECT tenant_id, project_id, version FROM fingerprint_key_schedule"
                    f" WHERE {where} ORDER BY destroy_at LIMIT %s FOR UPDATE SKIP LOCKED) d"
                    " WHERE s.tenant_id = d.tenant_id AND s.project_id = d.project_id"
                    " AND s.version = d.version"
                    " RETURNING s.tenant_id, s.project_id, s.version, s.destroy_at",
                    (lease, *params, limit),
                ).fetchall()
                return sorted((_scheduled(d, r) for r in rows), key=lambda r: r.destroy_at)
            # The transaction excludes every other writer: no two sweepers lease the same row.
            rows = conn.execute(
                f"SELECT {_SD_COLS} FROM fingerprint_key_schedule"
                f" WHERE {where} ORDER BY destroy_at LIMIT %s",
                (*params, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE fingerprint_key_schedule SET lease_until = %s WHERE tenant_id = %s"
                " AND project_id = %s AND version = %s",
                [(lease, r[0], r[1], r[2]) for r in rows],
            )
        return [_scheduled(d, r) for r in rows]

    def done(self, tenant_id: str, project_id: str, version: int) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "DELETE FROM fingerprint_key_schedule WHERE tenant_id = %s AND project_id = %s"
                " AND version = %s",
                (tenant_id, project_id, version),
            )


class SqlHandleStore:
    """:class:`~zumik_secrets.storage.ports.HandleStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def insert(self, rec: HandleRecord) -> HandleRecord:
        with self._db.transaction() as conn:
            # A handle minted without a project ('') is the tenant's: only a tenant purge
            # covers it.
            fence.check(self._db, conn, rec.tenant_id, rec.project_id)
            conn.execute(
                "INSERT INTO handles (tenant_id, handle, kind, reference, created_at, project_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    rec.tenant_id,
                    rec.handle,
                    rec.kind,
                    rec.reference,
                    self._d.time_in(rec.created_at),
                    rec.project_id,
                ),
            )
        return rec

    def get(self, tenant_id: str, handle: str) -> HandleRecord | None:
        row = self._db.one(
            "SELECT tenant_id, handle, kind, reference, created_at, project_id FROM handles"
            " WHERE tenant_id = %s AND handle = %s",
            (tenant_id, handle),
        )
        if row is None:
            return None
        return HandleRecord(row[0], row[1], row[2], row[3], self._d.time_out(row[4]), row[5])
