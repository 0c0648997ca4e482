"""The purge store (migration 0005): resumable purge jobs and receipts, on either backend.

Each phase is one write transaction that re-reads the job, does the phase's work and advances
the job, so a crash (``kill -9``) at any instant leaves either the whole phase or none of it.
SQLite's ``BEGIN IMMEDIATE`` excludes every other writer; PostgreSQL reads the job
``FOR UPDATE``, so two runners of one job serialise on its row. Change records come last in
each phase: PostgreSQL's change feed takes an advisory lock that must follow every row lock.

What is left of deleted content differs:

- SQLite zeroes deleted content in the file (``secure_delete``, set on every pooled connection)
  and :meth:`SqlPurgeStore.scrub` truncates the write-ahead log, where the page images written
  before the purge would otherwise survive until the next checkpoint overwrote them.
- PostgreSQL keeps deleted tuples in the heap until VACUUM reclaims the space (and in WAL
  archives and backups): what makes them useless is the shred phase, which deletes the wrapped
  data keys every ciphertext and fingerprint depended on. ``scrub`` has nothing to do.
"""

# The scope fragments are module constants, never input: the f-strings cannot inject.
# ruff: noqa: S608

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage.aggregates import fence
from zumik_secrets.storage.records import PurgeJob, PurgeReceiptRecord, ShreddedKey
from zumik_secrets.storage.sql.kernel import Connection, Kernel

Row = tuple[Any, ...]
_JOB_COLS = (
    "receipt_id, tenant_id, project_id, phase, destroyed, shredded, audit_retention_s,"
    " started_at, updated_at"
)
_RCP_COLS = "tenant_id, receipt_id, target, statement, kid, signature, audit_sequence, purge_time"
_SCOPED_TABLES = (
    "api_keys",
    "sessions",
    "sealed_secrets",
    "data_keys",
    "fingerprint_key_schedule",
    "handles",
)
_TENANT_TABLES = ("tenant_settings", "customer_keys")


def _scope(tenant_id: str, project_id: str | None) -> tuple[str, list[Any]]:
    if project_id is None:
        return "tenant_id = %s", [tenant_id]
    return "tenant_id = %s AND project_id = %s", [tenant_id, project_id]


def _shredded_json(keys: tuple[ShreddedKey, ...]) -> str:
    return json.dumps([[k.project_id, k.purpose, k.version, k.was] for k in keys])


def _counts_json(counts: dict[str, int]) -> str:
    return json.dumps(counts, sort_keys=True)


def _shredded_rows(rows: list[Row]) -> tuple[ShreddedKey, ...]:
    return tuple(ShreddedKey(r[0], r[1], int(r[2]), r[3]) for r in rows)


class SqlPurgeStore:
    """:class:`~zumik_secrets.storage.ports.PurgeStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def _job(self, row: Row) -> PurgeJob:
        return PurgeJob(
            receipt_id=row[0],
            tenant_id=row[1],
            project_id=row[2],
            phase=row[3],
            destroyed={str(k): int(v) for k, v in json.loads(row[4]).items()},
            shredded=tuple(ShreddedKey(p, u, int(v), w) for p, u, v, w in json.loads(row[5])),
            audit_retention=timedelta(seconds=int(row[6])),
            started_at=self._d.time_out(row[7]),
            updated_at=self._d.time_out(row[8]),
        )

    def _rcp(self, row: Row) -> PurgeReceiptRecord:
        return PurgeReceiptRecord(
            tenant_id=row[0],
            receipt_id=row[1],
            target=row[2],
            statement=bytes(row[3]),
            kid=row[4],
            signature=bytes(row[5]),
            audit_sequence=int(row[6]),
            purge_time=self._d.time_out(row[7]),
        )

    def _locked_job(self, conn: Connection, receipt_id: str) -> PurgeJob:
        row = conn.execute(
            f"SELECT {_JOB_COLS} FROM purge_jobs WHERE receipt_id = %s" + self._d.for_update,
            (receipt_id,),
        ).fetchone()
        if row is None:
            raise errors.NotFound("purge job not found", reason="PURGE_JOB_NOT_FOUND")
        return self._job(row)

    def _advance(
        self,
        conn: Connection,
        job: PurgeJob,
        phase: str,
        destroyed: dict[str, int],
        shredded: tuple[ShreddedKey, ...],
        at: datetime,
    ) -> PurgeJob:
        conn.execute(
            "UPDATE purge_jobs SET phase = %s, destroyed = %s, shredded = %s, updated_at = %s"
            " WHERE receipt_id = %s",
            (
                phase,
                _counts_json(destroyed),
                _shredded_json(shredded),
                self._d.time_in(at),
                job.receipt_id,
            ),
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
        with self._db.transaction() as conn:
            # Creates of the tenant in flight commit first (and are deleted and counted by
            # delete_rows); later ones see this job and are refused (aggregates/fence.py).
            fence.exclude(self._db, conn, job.tenant_id)
            conn.execute(
                f"INSERT INTO purge_jobs ({_JOB_COLS}, target)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job.receipt_id,
                    job.tenant_id,
                    job.project_id,
                    job.phase,
                    _counts_json(job.destroyed),
                    _shredded_json(job.shredded),
                    int(job.audit_retention.total_seconds()),
                    self._d.time_in(job.started_at),
                    self._d.time_in(job.updated_at),
                    job.target,
                ),
            )
            scope = job.tenant_id if job.project_id is None else f"{job.tenant_id}/{job.project_id}"
            self._db.record_changes(conn, "purge", [scope])
        return job

    def open_job(self, target: str) -> PurgeJob | None:
        row = self._db.one(
            f"SELECT {_JOB_COLS} FROM purge_jobs WHERE target = %s AND phase <> 'done'", (target,)
        )
        return None if row is None else self._job(row)

    def tombstones(self) -> list[tuple[str, str | None, datetime]]:
        rows = self._db.all(
            "SELECT tenant_id, project_id, min(started_at) FROM purge_jobs"
            " GROUP BY tenant_id, project_id"
        )
        return [(row[0], row[1], self._d.time_out(row[2])) for row in rows]

    def get_job(self, receipt_id: str) -> PurgeJob | None:
        row = self._db.one(
            f"SELECT {_JOB_COLS} FROM purge_jobs WHERE receipt_id = %s", (receipt_id,)
        )
        return None if row is None else self._job(row)

    def shred(self, receipt_id: str, at: datetime) -> PurgeJob:
        db = self._db
        with db.transaction() as conn:
            job = self._locked_job(conn, receipt_id)
            if job.phase != "started":
                return job
            where, params = _scope(job.tenant_id, job.project_id)
            rows = conn.execute(
                f"SELECT project_id, purpose, version, state FROM data_keys WHERE {where}"
                " ORDER BY project_id, purpose, version" + self._d.for_update,
                params,
            ).fetchall()
            conn.execute(
                "UPDATE data_keys SET state = 'destroyed', wrapped_key = NULL,"
                f" destroyed_at = coalesce(destroyed_at, %s) WHERE {where}",
                [self._d.time_in(at), *params],
            )
            shredded = _shredded_rows(rows)
            customer = 0
            if job.project_id is None:
                customer = conn.execute(
                    "DELETE FROM customer_keys WHERE tenant_id = %s", (job.tenant_id,)
                ).rowcount
            conn.execute(f"DELETE FROM fingerprint_key_schedule WHERE {where}", params)
            destroyed = dict(job.destroyed)
            destroyed["customer_keys"] = customer
            advanced = self._advance(conn, job, "shredded", destroyed, shredded, at)
            triples = sorted({f"{job.tenant_id}/{s.project_id}/{s.purpose}" for s in shredded})
            db.record_changes(conn, "data_key", triples)
            if customer:
                db.record_changes(conn, "customer_key", [job.tenant_id])
            return advanced

    def delete_rows(self, receipt_id: str, at: datetime) -> PurgeJob:
        db = self._db
        with db.transaction() as conn:
            job = self._locked_job(conn, receipt_id)
            if job.phase != "shredded":
                return job
            # No create of the scope commits after the deletes below (the counts are what was
            # really deleted): the fence's exclusive lock waits for those in flight, and every
            # later one sees the job. Taken before the deletes' snapshots (own statement).
            fence.exclude(db, conn, job.tenant_id)
            where, params = _scope(job.tenant_id, job.project_id)
            # Versions created after the shred phase (a racing first use) lose their key here.
            late = conn.execute(
                f"SELECT project_id, purpose, version, state FROM data_keys WHERE {where}"
                " AND state <> 'destroyed' ORDER BY project_id, purpose, version",
                params,
            ).fetchall()
            shredded = job.shredded + _shredded_rows(late)
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
            settings = customer = 0
            if job.project_id is None:
                settings = conn.execute(
                    "DELETE FROM tenant_settings WHERE tenant_id = %s", (job.tenant_id,)
                ).rowcount
                customer = conn.execute(
                    "DELETE FROM customer_keys WHERE tenant_id = %s", (job.tenant_id,)
                ).rowcount
            destroyed = dict(job.destroyed)
            destroyed.update(
                api_keys=len(key_ids),
                sessions=len(session_ids),
                secrets=secrets,
                handles=handles,
                tenant_settings=settings,
            )
            advanced = self._advance(conn, job, "deleted", destroyed, shredded, at)
            db.record_changes(conn, "api_key", sorted(key_ids))
            db.record_changes(conn, "session", sorted(session_ids))
            if late:
                triples = sorted({f"{job.tenant_id}/{r[0]}/{r[1]}" for r in late})
                db.record_changes(conn, "data_key", triples)
            if customer:
                db.record_changes(conn, "customer_key", [job.tenant_id])
            if settings:
                db.record_changes(conn, "tenant_settings", [job.tenant_id])
            return advanced

    def finish(self, receipt_id: str, receipt: PurgeReceiptRecord, at: datetime) -> PurgeJob:
        with self._db.transaction() as conn:
            job = self._locked_job(conn, receipt_id)
            if job.phase == "done":
                return job
            conn.execute(
                f"INSERT INTO purge_receipts ({_RCP_COLS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, receipt_id) DO NOTHING",
                (
                    receipt.tenant_id,
                    receipt.receipt_id,
                    receipt.target,
                    receipt.statement,
                    receipt.kid,
                    receipt.signature,
                    receipt.audit_sequence,
                    self._d.time_in(receipt.purge_time),
                ),
            )
            return self._advance(conn, job, "done", job.destroyed, job.shredded, at)

    def scrub(self) -> None:
        statement = self._d.pick(
            # TRUNCATE copies the log into the (secure_delete-zeroed) file and empties the log,
            # so page images from before the purge do not linger in the -wal file.
            sqlite="PRAGMA wal_checkpoint(TRUNCATE)",
            postgresql=None,  # see the module docstring for what remains and why it is inert
        )
        if statement is not None:
            with self._db.read() as conn:
                conn.execute(statement).fetchall()

    def scope_has_data(self, tenant_id: str, project_id: str | None) -> bool:
        tables = _SCOPED_TABLES + (_TENANT_TABLES if project_id is None else ())
        where, params = _scope(tenant_id, project_id)
        query = " OR ".join(f"EXISTS (SELECT 1 FROM {t} WHERE {where})" for t in tables)
        row = self._db.one(f"SELECT {query}", params * len(tables))
        return bool(row and row[0])

    def get_receipt(self, tenant_id: str, receipt_id: str) -> PurgeReceiptRecord | None:
        row = self._db.one(
            f"SELECT {_RCP_COLS} FROM purge_receipts WHERE tenant_id = %s AND receipt_id = %s",
            (tenant_id, receipt_id),
        )
        return None if row is None else self._rcp(row)

    def latest_receipt(self, target: str) -> PurgeReceiptRecord | None:
        row = self._db.one(
            f"SELECT {_RCP_COLS} FROM purge_receipts WHERE target = %s"
            " ORDER BY purge_time DESC, receipt_id DESC LIMIT 1",
            (target,),
        )
        return None if row is None else self._rcp(row)
