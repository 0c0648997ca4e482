"""PostgreSQL adapters of the fingerprint-schedule and handle stores (migration 0004)."""

# The WHERE fragments are module constants, never input: the f-strings cannot inject.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.postgres.kernel import PgKernel
from zumik_secrets.storage.records import HandleRecord, ScheduledDestroy

Row = tuple[Any, ...]
PURPOSE = "fingerprint"


def _sd(row: Row) -> ScheduledDestroy:
    return ScheduledDestroy(row[0], row[1], int(row[2]), c.utc(row[3]))


class PgFingerprintScheduleStore:
    """:class:`~zumik_secrets.storage.ports.FingerprintScheduleStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def schedule(
        self, tenant_id: str, project_id: str, versions: Sequence[int], destroy_at: datetime
    ) -> None:
        at = c.require_aware(destroy_at)
        with self._db.tx() as conn:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO fingerprint_key_schedule"
                    " (tenant_id, project_id, version, destroy_at) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (tenant_id, project_id, version) DO UPDATE SET destroy_at ="
                    " least(fingerprint_key_schedule.destroy_at, excluded.destroy_at)",
                    [(tenant_id, project_id, v, at) for v in versions],
                )
            self._db.record_changes(conn, "data_key", [f"{tenant_id}/{project_id}/{PURPOSE}"])

    def pending(self, tenant_id: str, project_id: str) -> list[ScheduledDestroy]:
        rows = self._db.all(
            "SELECT tenant_id, project_id, version, destroy_at FROM fingerprint_key_schedule"
            " WHERE tenant_id = %s AND project_id = %s ORDER BY version",
            (tenant_id, project_id),
        )
        return [_sd(r) for r in rows]

    def claim_due(
        self,
        now: datetime,
        lease_until: datetime,
        *,
        tenant_id: str | None = None,
        project_id: str | None = None,
        limit: int = 100,
    ) -> list[ScheduledDestroy]:
        now = c.require_aware(now)
        where = "destroy_at <= %s AND (lease_until IS NULL OR lease_until <= %s)"
        params: list[Any] = [now, now]
        if tenant_id is not None and project_id is not None:
            where += " AND tenant_id = %s AND project_id = %s"
            params += [tenant_id, project_id]
        with self._db.tx() as conn:
            # SKIP LOCKED: concurrent sweepers on other replicas take other rows, never these.
            rows = conn.execute(
                "UPDATE fingerprint_key_schedule s SET lease_until = %s FROM ("
                " SELECT tenant_id, project_id, version FROM fingerprint_key_schedule"
                f" WHERE {where} ORDER BY destroy_at LIMIT %s FOR UPDATE SKIP LOCKED) d"
                " WHERE s.tenant_id = d.tenant_id AND s.project_id = d.project_id"
                " AND s.version = d.version"
                " RETURNING s.tenant_id, s.project_id, s.version, s.destroy_at",
                (c.require_aware(lease_until), *params, limit),
            ).fetchall()
        return sorted((_sd(r) for r in rows), key=lambda r: r.destroy_at)

    def done(self, tenant_id: str, project_id: str, version: int) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "DELETE FROM fingerprint_key_schedule WHERE tenant_id = %s AND project_id = %s"
                " AND version = %s",
                (tenant_id, project_id, version),
            )


class PgHandleStore:
    """:class:`~zumik_secrets.storage.ports.HandleStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def insert(self, rec: HandleRecord) -> HandleRecord:
        with self._db.tx() as conn:
            conn.execute(
                "INSERT INTO handles (tenant_id, handle, kind, reference, created_at, project_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    rec.tenant_id,
                    rec.handle,
                    rec.kind,
                    rec.reference,
                    c.require_aware(rec.created_at),
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
        return HandleRecord(row[0], row[1], row[2], row[3], c.utc(row[4]), row[5])
