"""SQLite implementation of :class:`~zumik_secrets.storage.ports.AuditStore`.

Every append runs in one ``BEGIN IMMEDIATE`` transaction: SQLite has a single writer per file, so
reading the heads, chaining and inserting cannot interleave with another writer, in this process
or another. A writer waits at most ``busy_timeout`` for the lock and then fails Unavailable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from zumik_secrets.core.audit_chain import (
    GENESIS_HASH,
    ChainEvent,
    Checkpoint,
    EventDraft,
    extend_chain,
)
from zumik_secrets.storage import _common as c
from zumik_secrets.storage._audit_json import attributes_from_json, attributes_json
from zumik_secrets.storage.outbox import OUTBOX_COLS
from zumik_secrets.storage.ports import AuditFilter

if TYPE_CHECKING:
    from zumik_secrets.storage.sqlite.kernel import SqliteKernel

Row = tuple[Any, ...]

_EV_COLS = (
    "tenant, seq, event_id, time, actor, actor_subject, action, target, outcome, reason,"
    " trace_id, attributes, prev_hash, hash"
)
_CP_COLS = "tenant, seq, head_hash, time, kid, signature"


def _ev(row: Row) -> ChainEvent:
    return ChainEvent(
        tenant=row[0],
        sequence=int(row[1]),
        event_id=row[2],
        time=c.from_us(row[3]),
        actor=row[4],
        actor_subject=row[5],
        action=row[6],
        target=row[7],
        outcome=row[8],
        reason=row[9],
        trace_id=row[10],
        attributes=attributes_from_json(row[11]),
        prev_hash=bytes(row[12]),
        hash=bytes(row[13]),
    )


def _cp(row: Row) -> Checkpoint:
    return Checkpoint(row[0], int(row[1]), bytes(row[2]), c.from_us(row[3]), row[4], bytes(row[5]))


def _ev_params(ev: ChainEvent) -> tuple[Any, ...]:
    return (
        ev.tenant,
        ev.sequence,
        ev.event_id,
        c.to_us(ev.time),
        ev.actor,
        ev.actor_subject,
        ev.action,
        ev.target,
        ev.outcome,
        ev.reason,
        ev.trace_id,
        attributes_json(ev.attributes),
        ev.prev_hash,
        ev.hash,
    )


def _insert_checkpoint(conn: sqlite3.Connection, cp: Checkpoint) -> Checkpoint:
    conn.execute(
        f"INSERT INTO audit_checkpoints ({_CP_COLS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608
        " ON CONFLICT (tenant, seq) DO NOTHING",
        (cp.tenant, cp.sequence, cp.head_hash, c.to_us(cp.time), cp.kid, cp.signature),
    )
    row = conn.execute(
        f"SELECT {_CP_COLS} FROM audit_checkpoints WHERE tenant = ? AND seq = ?",  # noqa: S608
        (cp.tenant, cp.sequence),
    ).fetchone()
    return cp if row is None else _cp(row)


def _draft(row: Row) -> EventDraft:
    return EventDraft(
        tenant=row[0],
        event_id=row[1],
        time=c.from_us(row[2]),
        actor=row[3],
        actor_subject=row[4],
        action=row[5],
        target=row[6],
        outcome=row[7],
        reason=row[8],
        trace_id=row[9],
        attributes=attributes_from_json(row[10]),
    )


def _chain(conn: sqlite3.Connection, drafts: Sequence[EventDraft]) -> list[ChainEvent]:
    """Chain ``drafts`` onto their tenants' heads in the caller's write transaction."""
    by_tenant: dict[str, list[int]] = {}
    for index, draft in enumerate(drafts):
        by_tenant.setdefault(draft.tenant, []).append(index)
    out: list[ChainEvent | None] = [None] * len(drafts)
    now = c.to_us(c.now())
    for tenant in sorted(by_tenant):
        indexes = by_tenant[tenant]
        row = conn.execute(
            "SELECT seq, hash FROM audit_heads WHERE tenant = ?", (tenant,)
        ).fetchone()
        seq, head = (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))
        chained = extend_chain(seq, head, [drafts[i] for i in indexes])
        conn.executemany(
            f"INSERT INTO audit_events ({_EV_COLS})"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_ev_params(ev) for ev in chained],
        )
        last = chained[-1]
        conn.execute(
            "INSERT INTO audit_heads (tenant, seq, hash, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq,"
            " hash = excluded.hash, updated_at = excluded.updated_at",
            (tenant, last.sequence, last.hash, now),
        )
        for i, ev in zip(indexes, chained, strict=True):
            out[i] = ev
    return [ev for ev in out if ev is not None]


class _Rollback(Exception):
    """Ends the probe transaction without committing it."""


class SqliteAuditStore:
    """:class:`~zumik_secrets.storage.ports.AuditStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def append(self, drafts: Sequence[EventDraft]) -> list[ChainEvent]:
        with self._db.write() as conn:
            return _chain(conn, drafts)

    def drain_outbox(self, limit: int) -> list[ChainEvent]:
        # One writer per file: the rows read here cannot be drained by anyone else meanwhile.
        with self._db.write() as conn:
            rows = conn.execute(
                f"SELECT id, {OUTBOX_COLS} FROM audit_outbox ORDER BY id LIMIT ?",  # noqa: S608
                (limit,),
            ).fetchall()
            if not rows:
                return []
            events = _chain(conn, [_draft(r[1:]) for r in rows])
            conn.executemany("DELETE FROM audit_outbox WHERE id = ?", [(r[0],) for r in rows])
            return events

    def outbox_size(self) -> int:
        row = self._db.one("SELECT count(*) FROM audit_outbox")
        return c.returned_int(row)

    def probe_write(self) -> None:
        try:
            with self._db.write() as conn:
                conn.execute(
                    f"INSERT INTO audit_events ({_EV_COLS})"  # noqa: S608
                    " VALUES ('~probe', 1, '~probe', 0, '', '', '', '', '', '', '', '{}',"
                    " x'', x'')"
                )
                raise _Rollback
        except _Rollback:
            pass

    def head(self, tenant: str) -> tuple[int, bytes] | None:
        row = self._db.one("SELECT seq, hash FROM audit_heads WHERE tenant = ?", (tenant,))
        return None if row is None else (int(row[0]), bytes(row[1]))

    def first_sequence(self, tenant: str) -> int | None:
        row = self._db.one("SELECT min(seq) FROM audit_events WHERE tenant = ?", (tenant,))
        return None if row is None or row[0] is None else int(row[0])

    def events(
        self, tenant: str, *, after_sequence: int, limit: int, until_sequence: int | None = None
    ) -> list[ChainEvent]:
        until = until_sequence if until_sequence is not None else 2**62
        rows = self._db.all(
            f"SELECT {_EV_COLS} FROM audit_events"  # noqa: S608
            " WHERE tenant = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (tenant, after_sequence, until, limit),
        )
        return [_ev(r) for r in rows]

    def event(self, tenant: str, sequence: int) -> ChainEvent | None:
        row = self._db.one(
            f"SELECT {_EV_COLS} FROM audit_events WHERE tenant = ? AND seq = ?",  # noqa: S608
            (tenant, sequence),
        )
        return None if row is None else _ev(row)

    def query(
        self, tenant: str, flt: AuditFilter, *, after_sequence: int, limit: int
    ) -> list[ChainEvent]:
        where = ["tenant = ?", "seq > ?"]
        params: list[Any] = [tenant, after_sequence]
        for column, value in (
            ("action", flt.action),
            ("actor", flt.actor),
            ("target", flt.target),
            ("outcome", flt.outcome),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if flt.project:
            where.append("(target = ? OR substr(target, 1, ?) = ?)")
            params.extend([flt.project, len(flt.project) + 1, flt.project + "/"])
        if flt.start_time is not None:
            where.append("time >= ?")
            params.append(c.to_us(flt.start_time))
        if flt.end_time is not None:
            where.append("time < ?")
            params.append(c.to_us(flt.end_time))
        params.append(limit)
        rows = self._db.all(
            f"SELECT {_EV_COLS} FROM audit_events WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY seq LIMIT ?",
            params,
        )
        return [_ev(r) for r in rows]

    def add_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        with self._db.write() as conn:
            return _insert_checkpoint(conn, checkpoint)

    def checkpoints(
        self, tenant: str, *, from_sequence: int = 0, to_sequence: int | None = None
    ) -> list[Checkpoint]:
        until = to_sequence if to_sequence is not None else 2**62
        rows = self._db.all(
            f"SELECT {_CP_COLS} FROM audit_checkpoints"  # noqa: S608
            " WHERE tenant = ? AND seq >= ? AND seq <= ? ORDER BY seq",
            (tenant, from_sequence, until),
        )
        return [_cp(r) for r in rows]

    def heads_without_checkpoint(self, limit: int) -> list[tuple[str, int, bytes]]:
        rows = self._db.all(
            "SELECT h.tenant, h.seq, h.hash FROM audit_heads h WHERE h.seq > coalesce("
            " (SELECT max(k.seq) FROM audit_checkpoints k WHERE k.tenant = h.tenant), 0)"
            " ORDER BY h.tenant LIMIT ?",
            (limit,),
        )
        return [(r[0], int(r[1]), bytes(r[2])) for r in rows]

    def tenants_with_events_before(self, cutoff: datetime) -> list[str]:
        rows = self._db.all(
            "SELECT DISTINCT tenant FROM audit_events WHERE time < ? ORDER BY tenant",
            (c.to_us(cutoff),),
        )
        return [r[0] for r in rows]

    def prune_point(self, tenant: str, cutoff: datetime) -> tuple[int, bytes] | None:
        row = self._db.one(
            "SELECT seq, hash FROM audit_events WHERE tenant = ? AND time < ?"
            " ORDER BY seq DESC LIMIT 1",
            (tenant, c.to_us(cutoff)),
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def prune(self, anchor: Checkpoint) -> int:
        with self._db.write() as conn:
            _insert_checkpoint(conn, anchor)
            cur = conn.execute(
                "DELETE FROM audit_events WHERE tenant = ? AND seq <= ?",
                (anchor.tenant, anchor.sequence),
            )
            conn.execute(
                "DELETE FROM audit_checkpoints WHERE tenant = ? AND seq < ?",
                (anchor.tenant, anchor.sequence),
            )
            return cur.rowcount
