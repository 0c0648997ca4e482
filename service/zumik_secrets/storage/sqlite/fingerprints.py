"""SQLite adapters of the fingerprint-schedule and handle stores (migration 0004)."""

# The WHERE fragments are module constants, never input: the f-strings cannot inject.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.records import HandleRecord, ScheduledDestroy
from zumik_secrets.storage.sqlite.kernel import SqliteKernel

Row = tuple[Any, ...]
PURPOSE = "fingerprint"


def _sd(row: Row) -> ScheduledDestroy:
    return ScheduledDestroy(row[0], row[1], int(row[2]), c.from_us(row[3]))


class SqliteFingerprintScheduleStore:
    """:class:`~zumik_secrets.storage.ports.FingerprintScheduleStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def schedule(
        self, tenant_id: str, project_id: str, versions: Sequence[int], destroy_at: datetime
    ) -> None:
        at = c.to_us(destroy_at)
        with self._db.write() as conn:
            conn.executemany(
                "INSERT INTO fingerprint_key_schedule (tenant_id, project_id, version, destroy_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, project_id, version)"
                " DO UPDATE SET destroy_at = min(destroy_at, excluded.destroy_at)",
                [(tenant_id, project_id, v, at) for v in versions],
            )
            self._db.record_changes(conn, "data_key", [f"{tenant_id}/{project_id}/{PURPOSE}"])

    def pending(self, tenant_id: str, project_id: str) -> list[ScheduledDestroy]:
        rows = self._db.all(
            "SELECT tenant_id, project_id, version, destroy_at FROM fingerprint_key_schedule"
            " WHERE tenant_id = ? AND project_id = ? ORDER BY version",
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
        now_us = c.to_us(now)
        where = "destroy_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
        params: list[Any] = [now_us, now_us]
        if tenant_id is not None and project_id is not None:
            where += " AND tenant_id = ? AND project_id = ?"
            params += [tenant_id, project_id]
        with self._db.write() as conn:  # BEGIN IMMEDIATE: no two sweepers lease the same row
            rows = conn.execute(
                "SELECT tenant_id, project_id, version, destroy_at FROM fingerprint_key_schedule"
                f" WHERE {where} ORDER BY destroy_at LIMIT ?",
                (*params, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE fingerprint_key_schedule SET lease_until = ? WHERE tenant_id = ?"
                " AND project_id = ? AND version = ?",
                [(c.to_us(lease_until), r[0], r[1], r[2]) for r in rows],
            )
        return [_sd(r) for r in rows]

    def done(self, tenant_id: str, project_id: str, version: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                "DELETE FROM fingerprint_key_schedule WHERE tenant_id = ? AND project_id = ?"
                " AND version = ?",
                (tenant_id, project_id, version),
            )


class SqliteHandleStore:
    """:class:`~zumik_secrets.storage.ports.HandleStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def insert(self, rec: HandleRecord) -> HandleRecord:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO handles (tenant_id, handle, kind, reference, created_at, project_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    rec.tenant_id,
                    rec.handle,
                    rec.kind,
                    rec.reference,
                    c.to_us(rec.created_at),
                    rec.project_id,
                ),
            )
        return rec

    def get(self, tenant_id: str, handle: str) -> HandleRecord | None:
        row = self._db.one(
            "SELECT tenant_id, handle, kind, reference, created_at, project_id FROM handles"
            " WHERE tenant_id = ? AND handle = ?",
            (tenant_id, handle),
        )
        if row is None:
            return None
        return HandleRecord(row[0], row[1], row[2], row[3], c.from_us(row[4]), row[5])
