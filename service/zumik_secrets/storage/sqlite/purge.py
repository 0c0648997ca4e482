"""SQLite adapter of the purge store (migration 0005): resumable purge jobs and receipts.

Each phase is one ``BEGIN IMMEDIATE`` transaction that re-reads the job, does the phase's work
and advances the job, so a ``kill -9`` at any instant leaves either the whole phase or none of
it. Deleted content is zeroed in the file (``secure_delete``, set on every pooled connection)
and :meth:`SqlitePurgeStore.scrub` truncates the write-ahead log, where the page images written
before the purge would otherwise survive until the next checkpoint overwrote them.
"""

# The scope fragments are module constants, never input: the f-strings cannot inject.
# ruff: noqa: S608

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.records import PurgeJob, PurgeReceiptRecord, ShreddedKey
from zumik_secrets.storage.sqlite.kernel import SqliteKernel

Row = tuple[Any, ...]
_JOB_COLS = (
    "receipt_id, tenant_id, project_id, phase, destroyed, shredded, audit_retention_s,"
    " started_at, updated_at"
)
_RCP_COLS = "tenant_id, receipt_id, target, statement, kid, signature, audit_sequence, purge_time"


def _job(row: Row) -> PurgeJob:
    return PurgeJob(
        receipt_id=row[0],
        tenant_id=row[1],
        project_id=row[2],
        phase=row[3],
        destroyed={str(k): int(v) for k, v in json.loads(row[4]).items()},
        shredded=tuple(ShreddedKey(p, u, int(v), w) for p, u, v, w in json.loads(row[5])),
        audit_retention=timedelta(seconds=int(row[6])),
        started_at=c.from_us(row[7]),
        updated_at=c.from_us(row[8]),
    )


def _rcp(row: Row) -> PurgeReceiptRecord:
    return PurgeReceiptRecord(
        tenant_id=row[0],
        receipt_id=row[1],
        target=row[2],
        statement=bytes(row[3]),
        kid=row[4],
        signature=bytes(row[5]),
        audit_sequence=int(row[6]),
        purge_time=c.from_us(row[7]),
    )


def _scope(job: PurgeJob) -> tuple[str, list[Any]]:
    if job.project_id is None:
        return "tenant_id = ?", [job.tenant_id]
    return "tenant_id = ? AND project_id = ?", [job.tenant_id, job.project_id]


def _shredded_json(keys: tuple[ShreddedKey, ...]) -> str:
    return json.dumps([[k.project_id, k.purpose, k.version, k.was] for k in keys])


def _counts_json(counts: dict[str, int]) -> str:
    return json.dumps(counts, sort_keys=True)


class SqlitePurgeStore:
    """:class:`~zumik_secrets.storage.ports.PurgeStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    @staticmethod
    def _locked_job(conn: sqlite3.Connection, receipt_id: str) -> PurgeJob:
        row = conn.execute(
            f"SELECT {_JOB_COLS} FROM purge_jobs WHERE receipt_id = ?", (receipt_id,)
        ).fetchone()
        if row is None:
            raise errors.NotFound("purge job not found", reason="PURGE_JOB_NOT_FOUND")
        return _job(row)

    @staticmethod
    def _advance(
        conn: sqlite3.Connection,
        job: PurgeJob,
        phase: str,
        destroyed: dict[str, int],
        shredded: tuple[ShreddedKey, ...],
        at: datetime,
    ) -> PurgeJob:
        conn.execute(
            "UPDATE purge_jobs SET phase = ?, destroyed = ?, shredded = ?, updated_at = ?"
            " WHERE receipt_id = ?",
            (phase, _counts_json(destroyed), _shredded_json(shredded), c.to_us(at), job.receipt_id),
        )
        return PurgeJob(
            job.receipt_id,
            job.tenant_id,
            job.project_id,
            phase,
            destroyed,
            shredded,
            job.audit_retention,
            job.started_at,
            at,
        )

    def create_job(self, job: PurgeJob) -> PurgeJob:
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO purge_jobs ({_JOB_COLS}, target)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.receipt_id,
                    job.tenant_id,
                    job.project_id,
                    job.phase,
                    _counts_json(job.destroyed),
                    _shredded_json(job.shredded),
                    int(job.audit_retention.total_seconds()),
                    c.to_us(job.started_at),
                    c.to_us(job.updated_at),
                    job.target,
                ),
            )
            scope = job.tenant_id if job.project_id is None else f"{job.tenant_id}/{job.project_id}"
            self._db.record_changes(conn, "purge", [scope])
        return job

    def open_job(self, target: str) -> PurgeJob | None:
        row = self._db.one(
            f"SELECT {_JOB_COLS} FROM purge_jobs WHERE target = ? AND phase != 'done'", (target,)
        )
        return None if row is None else _job(row)

    def tombstones(self) -> list[tuple[str, str | None, datetime]]:
        rows = self._db.all(
            "SELECT tenant_id, project_id, min(started_at) FROM purge_jobs"
            " GROUP BY tenant_id, project_id"
        )
        return [(row[0], row[1], c.from_us(row[2])) for row in rows]

    def get_job(self, receipt_id: str) -> PurgeJob | None:
        row = self._db.one(
            f"SELECT {_JOB_COLS} FROM purge_jobs WHERE receipt_id = ?", (receipt_id,)
        )
        return None if row is None else _job(row)

    def shred(self, receipt_id: str, at: datetime) -> PurgeJob:
        with self._db.write() as conn:
            job = self._locked_job(conn, receipt_id)
            if job.phase != "started":
                return job
            where, params = _scope(job)
            rows = conn.execute(
                f"SELECT project_id, purpose, version, state FROM data_keys WHERE {where}"
                " ORDER BY project_id, purpose, version",
                params,
            ).fetchall()
            conn.execute(
                "UPDATE data_keys SET state = 'destroyed', wrapped_key = NULL,"
                f" destroyed_at = coalesce(destroyed_at, ?) WHERE {where}",
                [c.to_us(at), *params],
            )
            shredded = tuple(ShreddedKey(r[0], r[1], int(r[2]), r[3]) for r in rows)
            customer = 0
            if job.project_id is None:
                customer = conn.execute(
                    "DELETE FROM customer_keys WHERE tenant_id = ?", (job.tenant_id,)
                ).rowcount
            conn.execute(f"DELETE FROM fingerprint_key_schedule WHERE {where}", params)
            triples = sorted({f"{job.tenant_id}/{k.project_id}/{k.purpose}" for k in shredded})
            self._db.record_changes(conn, "data_key", triples)
            if customer:
                self._db.record_changes(conn, "customer_key", [job.tenant_id])
            destroyed = dict(job.destroyed)
            destroyed["customer_keys"] = customer
            return self._advance(conn, job, "shredded", destroyed, shredded, at)

    def delete_rows(self, receipt_id: str, at: datetime) -> PurgeJob:
        with self._db.write() as conn:
            job = self._locked_job(conn, receipt_id)
            if job.phase != "shredded":
                return job
            where, params = _scope(job)
            # Versions created after the shred phase (a racing first use) lose their key here.
            late = conn.execute(
                f"SELECT project_id, purpose, version, state FROM data_keys WHERE {where}"
                " AND state != 'destroyed' ORDER BY project_id, purpose, version",
                params,
            ).fetchall()
            shredded = job.shredded + tuple(ShreddedKey(r[0], r[1], int(r[2]), r[3]) for r in late)
            key_ids = [
                str(r[0])
                for r in conn.execute(
                    f"DELETE FROM api_keys WHERE {where} RETURNING key_id", params
                ).fetchall()
            ]
            session_ids = [
                str(r[0])
                for r in conn.execute(
                    f"DELETE FROM sessions WHERE {where} RETURNING session_id", params
                ).fetchall()
            ]
            secrets = conn.execute(f"DELETE FROM sealed_secrets WHERE {where}", params).rowcount
            conn.execute(f"DELETE FROM data_keys WHERE {where}", params)
            conn.execute(f"DELETE FROM fingerprint_key_schedule WHERE {where}", params)
            handles = conn.execute(f"DELETE FROM handles WHERE {where}", params).rowcount
            settings = 0
            if job.project_id is None:
                settings = conn.execute(
                    "DELETE FROM tenant_settings WHERE tenant_id = ?", (job.tenant_id,)
                ).rowcount
                customer = conn.execute(
                    "DELETE FROM customer_keys WHERE tenant_id = ?", (job.tenant_id,)
                ).rowcount
                if customer:
                    self._db.record_changes(conn, "customer_key", [job.tenant_id])
            self._db.record_changes(conn, "api_key", sorted(key_ids))
            self._db.record_changes(conn, "session", sorted(session_ids))
            if late:
                triples = sorted({f"{job.tenant_id}/{r[0]}/{r[1]}" for r in late})
                self._db.record_changes(conn, "data_key", triples)
            if settings:
                self._db.record_changes(conn, "tenant_settings", [job.tenant_id])
            destroyed = dict(job.destroyed)
            destroyed.update(
                api_keys=len(key_ids),
                sessions=len(session_ids),
                secrets=secrets,
                handles=handles,
                tenant_settings=settings,
            )
            return self._advance(conn, job, "deleted", destroyed, shredded, at)

    def finish(self, receipt_id: str, receipt: PurgeReceiptRecord, at: datetime) -> PurgeJob:
        with self._db.write() as conn:
            job = self._locked_job(conn, receipt_id)
            if job.phase == "done":
                return job
            conn.execute(
                f"INSERT INTO purge_receipts ({_RCP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, receipt_id) DO NOTHING",
                (
                    receipt.tenant_id,
                    receipt.receipt_id,
                    receipt.target,
                    receipt.statement,
                    receipt.kid,
                    receipt.signature,
                    receipt.audit_sequence,
                    c.to_us(receipt.purge_time),
                ),
            )
            return self._advance(conn, job, "done", job.destroyed, job.shredded, at)

    def scrub(self) -> None:
        # TRUNCATE copies the log into the (secure_delete-zeroed) file and empties the log, so
        # page images from before the purge do not linger in the -wal file.
        with self._db.read() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def scope_has_data(self, tenant_id: str, project_id: str | None) -> bool:
        tables = [
            "api_keys",
            "sessions",
            "sealed_secrets",
            "data_keys",
            "fingerprint_key_schedule",
            "handles",
        ]
        if project_id is None:
            where, params = "tenant_id = ?", [tenant_id]
            tables += ["tenant_settings", "customer_keys"]
        else:
            where, params = "tenant_id = ? AND project_id = ?", [tenant_id, project_id]
        query = " UNION ALL ".join(
            f"SELECT 1 FROM (SELECT 1 FROM {t} WHERE {where} LIMIT 1)" for t in tables
        )
        return self._db.one(query, params * len(tables)) is not None

    def get_receipt(self, tenant_id: str, receipt_id: str) -> PurgeReceiptRecord | None:
        row = self._db.one(
            f"SELECT {_RCP_COLS} FROM purge_receipts WHERE tenant_id = ? AND receipt_id = ?",
            (tenant_id, receipt_id),
        )
        return None if row is None else _rcp(row)

    def latest_receipt(self, target: str) -> PurgeReceiptRecord | None:
        row = self._db.one(
            f"SELECT {_RCP_COLS} FROM purge_receipts WHERE target = ?"
            " ORDER BY purge_time DESC, receipt_id DESC LIMIT 1",
            (target,),
        )
        return None if row is None else _rcp(row)
