"""The audit store (:class:`~zumik_secrets.storage.ports.AuditStore`), on either backend.

How appends to one tenant's chain serialise:

- SQLite: every append runs in one ``BEGIN IMMEDIATE`` transaction. SQLite has a single writer
  per file, so reading the heads, chaining and inserting cannot interleave with another writer,
  in this process or another. A writer waits at most ``busy_timeout`` for the lock and then
  fails Unavailable.
- PostgreSQL: an append's first statement is ``INSERT INTO audit_heads ... ON CONFLICT (tenant)
  DO UPDATE ... RETURNING seq, hash``, which creates each head row or takes its row lock until
  the transaction commits. Two server processes appending to one tenant therefore queue on that
  row, and each sees the other's committed head: sequence numbers stay gapless. A batch touching
  several tenants locks them in sorted order, so two batches cannot deadlock. Every audit write
  sets ``lock_timeout`` and ``statement_timeout`` (a locked table or a stuck server fails the
  write within seconds) and any database error becomes Unavailable
  (:meth:`~zumik_secrets.storage.sql.kernel.Kernel.fail_closed`): the recorder fails closed
  instead of hanging a request thread.

The two backends' chaining statements differ as a whole (SQLite: a statement per tenant and
per row; PostgreSQL: three round trips per batch with arrays); both texts stand below, side by
side, around one chaining algorithm.
"""

# Column lists are module constants, never input: the f-strings below cannot inject.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from zumik_secrets.core.audit_chain import (
    GENESIS_HASH,
    ChainEvent,
    Checkpoint,
    EventDraft,
    extend_chain,
)
from zumik_secrets.storage import _common as c
from zumik_secrets.storage import outbox
from zumik_secrets.storage._audit_json import attributes_from_json, attributes_json
from zumik_secrets.storage.outbox import OUTBOX_COLS
from zumik_secrets.storage.ports import AuditFilter
from zumik_secrets.storage.sql.dialect import Dialect
from zumik_secrets.storage.sql.kernel import Connection, Kernel

Row = tuple[Any, ...]
Heads = dict[str, tuple[int, bytes]]

LOCK_TIMEOUT_MS = 2000
"""How long a PostgreSQL audit write waits for a row or table lock before failing."""
STATEMENT_TIMEOUT_MS = 4000
"""How long one PostgreSQL audit statement may run before failing."""

_EV_COLS = (
    "tenant, seq, event_id, time, actor, actor_subject, action, target, outcome, reason,"
    " trace_id, attributes, prev_hash, hash"
)
_CP_COLS = "tenant, seq, head_hash, time, kid, signature"
_NO_END = 2**62
"""The sequence bound of a read with no upper bound."""

_PG_TIMEOUTS = (
    f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS};"
    f" SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
)

# -- chaining: the statements of each backend, side by side ------------------------------------

_SQLITE_HEAD = "SELECT seq, hash FROM audit_heads WHERE tenant = %s"
_SQLITE_INSERT_EVENT = (
    f"INSERT INTO audit_events ({_EV_COLS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SQLITE_MOVE_HEAD = (
    "INSERT INTO audit_heads (tenant, seq, hash, updated_at) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq,"
    " hash = excluded.hash, updated_at = excluded.updated_at"
)
# Lock every head (creating missing ones) in sorted order: one lock order for every batch.
_PG_LOCK_HEADS = (
    "INSERT INTO audit_heads AS h (tenant, seq, hash, updated_at)"
    " SELECT t, 0, %s, now() FROM unnest(%s::text[]) AS u(t) ORDER BY t"
    " ON CONFLICT (tenant) DO UPDATE SET updated_at = excluded.updated_at"
    " RETURNING h.tenant, h.seq, h.hash"
)
# Insert every event and move every head in one statement.
_PG_INSERT_AND_MOVE = (
    f"WITH ins AS (INSERT INTO audit_events ({_EV_COLS})"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[],"
    " %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[], %s::text[], %s::bytea[], %s::bytea[]))"
    " UPDATE audit_heads AS h SET seq = u.seq, hash = u.hash"
    " FROM unnest(%s::text[], %s::bigint[], %s::bytea[]) AS u(tenant, seq, hash)"
    " WHERE h.tenant = u.tenant"
)


def _sqlite_heads(d: Dialect, conn: Connection, tenants: list[str]) -> Heads:
    heads: Heads = {}
    for tenant in tenants:
        row = conn.execute(_SQLITE_HEAD, (tenant,)).fetchone()
        heads[tenant] = (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))
    return heads


def _sqlite_store(
    d: Dialect, conn: Connection, events: list[ChainEvent], new_heads: list[ChainEvent]
) -> None:
    conn.executemany(_SQLITE_INSERT_EVENT, [_ev_params(d, ev) for ev in events])
    now = d.time_in(c.now())
    conn.executemany(
        _SQLITE_MOVE_HEAD, [(ev.tenant, ev.sequence, ev.hash, now) for ev in new_heads]
    )


def _pg_heads(d: Dialect, conn: Connection, tenants: list[str]) -> Heads:
    rows = conn.execute(_PG_LOCK_HEADS, (GENESIS_HASH, tenants)).fetchall()
    return {r[0]: (int(r[1]), bytes(r[2])) for r in rows}


def _pg_store(
    d: Dialect, conn: Connection, events: list[ChainEvent], new_heads: list[ChainEvent]
) -> None:
    columns = zip(*(_ev_params(d, ev) for ev in events), strict=True)
    conn.execute(
        _PG_INSERT_AND_MOVE,
        [
            *(list(col) for col in columns),
            [ev.tenant for ev in new_heads],
            [ev.sequence for ev in new_heads],
            [ev.hash for ev in new_heads],
        ],
    )


# -- the rest of the checkpoint and outbox statements that differ ------------------------------

_SQLITE_INSERT_CHECKPOINT = (
    f"INSERT INTO audit_checkpoints ({_CP_COLS}) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (tenant, seq) DO NOTHING"
)
_SQLITE_GET_CHECKPOINT = f"SELECT {_CP_COLS} FROM audit_checkpoints WHERE tenant = %s AND seq = %s"
# One round trip: the row inserted, or the one already there.
_PG_INSERT_CHECKPOINT = (
    f"WITH ins AS (INSERT INTO audit_checkpoints ({_CP_COLS})"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, seq) DO NOTHING"
    f" RETURNING {_CP_COLS})"
    f" SELECT {_CP_COLS} FROM ins UNION ALL"
    f" SELECT {_CP_COLS} FROM audit_checkpoints WHERE tenant = %s AND seq = %s LIMIT 1"
)


def _sqlite_insert_checkpoint(conn: Connection, params: tuple[Any, ...]) -> Row | None:
    conn.execute(_SQLITE_INSERT_CHECKPOINT, params)
    row: Row | None = conn.execute(_SQLITE_GET_CHECKPOINT, params[:2]).fetchone()
    return row


def _pg_insert_checkpoint(conn: Connection, params: tuple[Any, ...]) -> Row | None:
    row: Row | None = conn.execute(_PG_INSERT_CHECKPOINT, (*params, *params[:2])).fetchone()
    return row


# -- conversions ------------------------------------------------------------------------------


def _ev(d: Dialect, row: Row) -> ChainEvent:
    return ChainEvent(
        tenant=row[0],
        sequence=int(row[1]),
        event_id=row[2],
        time=d.time_out(row[3]),
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


def _ev_params(d: Dialect, ev: ChainEvent) -> tuple[Any, ...]:
    return (
        ev.tenant,
        ev.sequence,
        ev.event_id,
        d.time_in(ev.time),
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


def _cp(d: Dialect, row: Row) -> Checkpoint:
    return Checkpoint(row[0], int(row[1]), bytes(row[2]), d.time_out(row[3]), row[4], bytes(row[5]))


class _Rollback(Exception):
    """Ends the probe transaction without committing it."""


class SqlAuditStore:
    """:class:`~zumik_secrets.storage.ports.AuditStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        d = self._d = db.dialect
        # SQLite: busy_timeout bounds the wait for the write lock.
        self._timeouts = d.pick(sqlite=None, postgresql=_PG_TIMEOUTS)
        self._heads: Callable[[Dialect, Connection, list[str]], Heads] = d.pick(
            sqlite=_sqlite_heads, postgresql=_pg_heads
        )
        self._store: Callable[[Dialect, Connection, list[ChainEvent], list[ChainEvent]], None]
        self._store = d.pick(sqlite=_sqlite_store, postgresql=_pg_store)
        self._insert_checkpoint_row = d.pick(
            sqlite=_sqlite_insert_checkpoint, postgresql=_pg_insert_checkpoint
        )

    @contextmanager
    def _write(self, *, timeouts: bool = True) -> Iterator[Connection]:
        """A write transaction that fails closed (see the module docstring)."""
        with self._db.fail_closed(), self._db.transaction() as conn:
            if timeouts and self._timeouts is not None:
                conn.execute(self._timeouts)
            yield conn

    def _chain(self, conn: Connection, drafts: Sequence[EventDraft]) -> list[ChainEvent]:
        """Chain ``drafts`` onto their tenants' heads in the caller's write transaction."""
        by_tenant: dict[str, list[int]] = {}
        for index, draft in enumerate(drafts):
            by_tenant.setdefault(draft.tenant, []).append(index)
        tenants = sorted(by_tenant)
        heads = self._heads(self._d, conn, tenants)
        out: list[ChainEvent | None] = [None] * len(drafts)
        chained_all: list[ChainEvent] = []
        new_heads: list[ChainEvent] = []
        for tenant in tenants:
            indexes = by_tenant[tenant]
            chained = extend_chain(*heads[tenant], [drafts[i] for i in indexes])
            chained_all.extend(chained)
            new_heads.append(chained[-1])
            for i, ev in zip(indexes, chained, strict=True):
                out[i] = ev
        self._store(self._d, conn, chained_all, new_heads)
        return [ev for ev in out if ev is not None]

    def _insert_checkpoint(self, conn: Connection, cp: Checkpoint) -> Checkpoint:
        time = self._d.time_in(cp.time)
        row = self._insert_checkpoint_row(
            conn, (cp.tenant, cp.sequence, cp.head_hash, time, cp.kid, cp.signature)
        )
        return cp if row is None else _cp(self._d, row)

    def append(self, drafts: Sequence[EventDraft]) -> list[ChainEvent]:
        with self._write() as conn:
            return self._chain(conn, drafts)

    def drain_outbox(self, limit: int) -> list[ChainEvent]:
        # SQLite: one writer per file, the rows read here cannot be drained by anyone else
        # meanwhile. PostgreSQL: rows another replica is draining are skipped (SKIP LOCKED),
        # so replicas drain in parallel without waiting on each other.
        # The batch is taken and deleted in one statement (one round trip fewer than a select
        # and a delete), chained in id order below in the same transaction: chained and gone,
        # or neither.
        lock = " FOR UPDATE SKIP LOCKED" if self._d.skip_locked else ""
        with self._write() as conn:
            rows = conn.execute(
                "DELETE FROM audit_outbox WHERE id IN"
                f" (SELECT id FROM audit_outbox ORDER BY id LIMIT %s{lock})"
                f" RETURNING id, {OUTBOX_COLS}",
                (limit,),
            ).fetchall()
            if not rows:
                return []
            rows.sort(key=lambda r: int(r[0]))
            return self._chain(conn, [outbox.draft(r[1:], self._d) for r in rows])

    def outbox_size(self) -> int:
        return c.returned_int(self._db.one("SELECT count(*) FROM audit_outbox"))

    def probe_write(self) -> None:
        try:
            with self._write() as conn:
                conn.execute(
                    f"INSERT INTO audit_events ({_EV_COLS}) VALUES"
                    " ('~probe', 1, '~probe', %s, '', '', '', '', '', '', '', '{}', %s, %s)",
                    (self._d.time_in(c.now()), b"", b""),
                )
                raise _Rollback
        except _Rollback:
            pass

    def head(self, tenant: str) -> tuple[int, bytes] | None:
        row = self._db.one("SELECT seq, hash FROM audit_heads WHERE tenant = %s", (tenant,))
        return None if row is None else (int(row[0]), bytes(row[1]))

    def first_sequence(self, tenant: str) -> int | None:
        row = self._db.one("SELECT min(seq) FROM audit_events WHERE tenant = %s", (tenant,))
        return None if row is None or row[0] is None else int(row[0])

    def events(
        self, tenant: str, *, after_sequence: int, limit: int, until_sequence: int | None = None
    ) -> list[ChainEvent]:
        until = until_sequence if until_sequence is not None else _NO_END
        rows = self._db.all(
            f"SELECT {_EV_COLS} FROM audit_events"
            " WHERE tenant = %s AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
            (tenant, after_sequence, until, limit),
        )
        return [_ev(self._d, r) for r in rows]

    def event(self, tenant: str, sequence: int) -> ChainEvent | None:
        row = self._db.one(
            f"SELECT {_EV_COLS} FROM audit_events WHERE tenant = %s AND seq = %s",
            (tenant, sequence),
        )
        return None if row is None else _ev(self._d, row)

    def query(
        self, tenant: str, flt: AuditFilter, *, after_sequence: int, limit: int
    ) -> list[ChainEvent]:
        where = ["tenant = %s", "seq > %s"]
        params: list[Any] = [tenant, after_sequence]
        for column, value in (
            ("action", flt.action),
            ("actor", flt.actor),
            ("target", flt.target),
            ("outcome", flt.outcome),
        ):
            if value:
                where.append(f"{column} = %s")
                params.append(value)
        if flt.project:
            where.append("(target = %s OR substr(target, 1, %s) = %s)")
            params.extend([flt.project, len(flt.project) + 1, flt.project + "/"])
        if flt.start_time is not None:
            where.append("time >= %s")
            params.append(self._d.time_in(flt.start_time))
        if flt.end_time is not None:
            where.append("time < %s")
            params.append(self._d.time_in(flt.end_time))
        params.append(limit)
        rows = self._db.all(
            f"SELECT {_EV_COLS} FROM audit_events WHERE {' AND '.join(where)}"
            " ORDER BY seq LIMIT %s",
            params,
        )
        return [_ev(self._d, r) for r in rows]

    def add_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        with self._write() as conn:
            return self._insert_checkpoint(conn, checkpoint)

    def checkpoints(
        self, tenant: str, *, from_sequence: int = 0, to_sequence: int | None = None
    ) -> list[Checkpoint]:
        until = to_sequence if to_sequence is not None else _NO_END
        rows = self._db.all(
            f"SELECT {_CP_COLS} FROM audit_checkpoints"
            " WHERE tenant = %s AND seq >= %s AND seq <= %s ORDER BY seq",
            (tenant, from_sequence, until),
        )
        return [_cp(self._d, r) for r in rows]

    def heads_without_checkpoint(self, limit: int) -> list[tuple[str, int, bytes]]:
        rows = self._db.all(
            "SELECT h.tenant, h.seq, h.hash FROM audit_heads h WHERE h.seq > coalesce("
            " (SELECT max(k.seq) FROM audit_checkpoints k WHERE k.tenant = h.tenant), 0)"
            " ORDER BY h.tenant LIMIT %s",
            (limit,),
        )
        return [(r[0], int(r[1]), bytes(r[2])) for r in rows]

    def tenants_with_events_before(self, cutoff: datetime) -> list[str]:
        rows = self._db.all(
            "SELECT DISTINCT tenant FROM audit_events WHERE time < %s ORDER BY tenant",
            (self._d.time_in(cutoff),),
        )
        return [r[0] for r in rows]

    def prune_point(self, tenant: str, cutoff: datetime) -> tuple[int, bytes] | None:
        row = self._db.one(
            "SELECT seq, hash FROM audit_events WHERE tenant = %s AND time < %s"
            " ORDER BY seq DESC LIMIT 1",
            (tenant, self._d.time_in(cutoff)),
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def prune(self, anchor: Checkpoint) -> int:
        # No statement timeout: deleting a long history may take longer than an append.
        with self._write(timeouts=False) as conn:
            self._insert_checkpoint(conn, anchor)
            cur = conn.execute(
                "DELETE FROM audit_events WHERE tenant = %s AND seq <= %s",
                (anchor.tenant, anchor.sequence),
            )
            conn.execute(
                "DELETE FROM audit_checkpoints WHERE tenant = %s AND seq < %s",
                (anchor.tenant, anchor.sequence),
            )
            return cur.rowcount
