"""PostgreSQL implementation of :class:`~zumik_secrets.storage.ports.AuditStore`.

Serialisation per tenant happens in the database: an append's first statement per tenant is
``INSERT INTO audit_heads ... ON CONFLICT (tenant) DO UPDATE ... RETURNING seq, hash``, which
creates the head row or takes its row lock, and the lock holds until the transaction commits.
Two server processes appending to one tenant therefore queue on that row, and each sees the
other's committed head: sequence numbers stay gapless. A batch touching several tenants locks
them in sorted order, so two batches cannot deadlock.

Every audit transaction sets ``lock_timeout`` and ``statement_timeout`` (a locked table or a
stuck server fails the write within seconds) and any database error becomes Unavailable: the
recorder fails closed instead of hanging a request thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

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
    from zumik_secrets.storage.postgres.kernel import Conn, PgKernel

BACKEND = "postgresql"
Row = tuple[Any, ...]

LOCK_TIMEOUT_MS = 2000
"""How long an audit write waits for a row or table lock before failing."""
STATEMENT_TIMEOUT_MS = 4000
"""How long one audit statement may run before failing."""

_EV_COLS = (
    "tenant, seq, event_id, time, actor, actor_subject, action, target, outcome, reason,"
    " trace_id, attributes, prev_hash, hash"
)
_CP_COLS = "tenant, seq, head_hash, time, kid, signature"
_TIMEOUTS = (
    f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS};"
    f" SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
)


@contextmanager
def _fail_unavailable() -> Iterator[None]:
    """Any database failure of an audit write is Unavailable (fail closed, retry later).

    Raises:
        Unavailable: on every psycopg error (refused privilege, lock timeout, lost server...).
    """
    try:
        yield
    except psycopg.Error as exc:
        raise c.unavailable(BACKEND) from exc


def _ev(row: Row) -> ChainEvent:
    return ChainEvent(
        tenant=row[0],
        sequence=int(row[1]),
        event_id=row[2],
        time=c.utc(row[3]),
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
    return Checkpoint(row[0], int(row[1]), bytes(row[2]), c.utc(row[3]), row[4], bytes(row[5]))


def _ev_params(ev: ChainEvent) -> tuple[Any, ...]:
    return (
        ev.tenant,
        ev.sequence,
        ev.event_id,
        c.require_aware(ev.time),
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


def _insert_checkpoint(conn: Conn, cp: Checkpoint) -> Checkpoint:
    row = conn.execute(
        f"WITH ins AS (INSERT INTO audit_checkpoints ({_CP_COLS})"  # noqa: S608
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, seq) DO NOTHING"
        f" RETURNING {_CP_COLS})"
        f" SELECT {_CP_COLS} FROM ins UNION ALL"
        f" SELECT {_CP_COLS} FROM audit_checkpoints WHERE tenant = %s AND seq = %s LIMIT 1",
        (
            cp.tenant,
            cp.sequence,
            cp.head_hash,
            c.require_aware(cp.time),
            cp.kid,
            cp.signature,
            cp.tenant,
            cp.sequence,
        ),
    ).fetchone()
    return cp if row is None else _cp(row)


def _draft(row: Row) -> EventDraft:
    return EventDraft(
        tenant=row[0],
        event_id=row[1],
        time=c.utc(row[2]),
        actor=row[3],
        actor_subject=row[4],
        action=row[5],
        target=row[6],
        outcome=row[7],
        reason=row[8],
        trace_id=row[9],
        attributes=attributes_from_json(row[10]),
    )


def _chain(conn: Conn, drafts: Sequence[EventDraft]) -> list[ChainEvent]:
    """Chain ``drafts`` onto their tenants' heads in the caller's transaction."""
    by_tenant: dict[str, list[int]] = {}
    for index, draft in enumerate(drafts):
        by_tenant.setdefault(draft.tenant, []).append(index)
    out: list[ChainEvent | None] = [None] * len(drafts)
    tenants = sorted(by_tenant)
    # Three round trips per batch whatever its size and number of tenants: lock every head
    # (sorted: one lock order for every batch), insert every event and move every head in one
    # statement (then the caller commits).
    rows = conn.execute(
        "INSERT INTO audit_heads AS h (tenant, seq, hash, updated_at)"
        " SELECT t, 0, %s, now() FROM unnest(%s::text[]) AS u(t) ORDER BY t"
        " ON CONFLICT (tenant) DO UPDATE SET updated_at = excluded.updated_at"
        " RETURNING h.tenant, h.seq, h.hash",
        (GENESIS_HASH, tenants),
    ).fetchall()
    heads = {r[0]: (int(r[1]), bytes(r[2])) for r in rows}
    chained_all: list[ChainEvent] = []
    new_heads: list[ChainEvent] = []
    for tenant in tenants:
        indexes = by_tenant[tenant]
        seq, head = heads[tenant]
        chained = extend_chain(seq, head, [drafts[i] for i in indexes])
        chained_all.extend(chained)
        new_heads.append(chained[-1])
        for i, ev in zip(indexes, chained, strict=True):
            out[i] = ev
    columns = list(zip(*(_ev_params(ev) for ev in chained_all), strict=True))
    conn.execute(
        f"WITH ins AS (INSERT INTO audit_events ({_EV_COLS})"  # noqa: S608
        " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[],"
        " %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::text[], %s::text[], %s::text[], %s::bytea[], %s::bytea[]))"
        " UPDATE audit_heads AS h SET seq = u.seq, hash = u.hash"
        " FROM unnest(%s::text[], %s::bigint[], %s::bytea[]) AS u(tenant, seq, hash)"
        " WHERE h.tenant = u.tenant",
        [
            *(list(col) for col in columns),
            [ev.tenant for ev in new_heads],
            [ev.sequence for ev in new_heads],
            [ev.hash for ev in new_heads],
        ],
    )
    return [ev for ev in out if ev is not None]


class _Rollback(Exception):
    """Ends the probe transaction without committing it."""


class PgAuditStore:
    """:class:`~zumik_secrets.storage.ports.AuditStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def append(self, drafts: Sequence[EventDraft]) -> list[ChainEvent]:
        with _fail_unavailable(), self._db.tx() as conn:
            conn.execute(_TIMEOUTS)
            return _chain(conn, drafts)

    def drain_outbox(self, limit: int) -> list[ChainEvent]:
        # Rows another replica is draining are skipped (SKIP LOCKED), so replicas drain in
        # parallel without waiting on each other; chained and deleted in one transaction.
        with _fail_unavailable(), self._db.tx() as conn:
            conn.execute(_TIMEOUTS)
            rows = conn.execute(
                f"SELECT id, {OUTBOX_COLS} FROM audit_outbox"  # noqa: S608
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            ).fetchall()
            if not rows:
                return []
            events = _chain(conn, [_draft(r[1:]) for r in rows])
            conn.execute("DELETE FROM audit_outbox WHERE id = ANY(%s)", ([r[0] for r in rows],))
            return events

    def outbox_size(self) -> int:
        row = self._db.one("SELECT count(*) FROM audit_outbox")
        return c.returned_int(row)

    def probe_write(self) -> None:
        try:
            with _fail_unavailable(), self._db.tx() as conn:
                conn.execute(_TIMEOUTS)
                conn.execute(
                    f"INSERT INTO audit_events ({_EV_COLS}) VALUES"  # noqa: S608
                    " ('~probe', 1, '~probe', now(), '', '', '', '', '', '', '', '{}',"
                    " ''::bytea, ''::bytea)"
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
        until = until_sequence if until_sequence is not None else 2**62
        rows = self._db.all(
            f"SELECT {_EV_COLS} FROM audit_events"  # noqa: S608
            " WHERE tenant = %s AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
            (tenant, after_sequence, until, limit),
        )
        return [_ev(r) for r in rows]

    def event(self, tenant: str, sequence: int) -> ChainEvent | None:
        row = self._db.one(
            f"SELECT {_EV_COLS} FROM audit_events WHERE tenant = %s AND seq = %s",  # noqa: S608
            (tenant, sequence),
        )
        return None if row is None else _ev(row)

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
            where.append("(target = %s OR left(target, %s) = %s)")
            params.extend([flt.project, len(flt.project) + 1, flt.project + "/"])
        if flt.start_time is not None:
            where.append("time >= %s")
            params.append(c.require_aware(flt.start_time))
        if flt.end_time is not None:
            where.append("time < %s")
            params.append(c.require_aware(flt.end_time))
        params.append(limit)
        rows = self._db.all(
            f"SELECT {_EV_COLS} FROM audit_events WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY seq LIMIT %s",
            params,
        )
        return [_ev(r) for r in rows]

    def add_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        with _fail_unavailable(), self._db.tx() as conn:
            conn.execute(_TIMEOUTS)
            return _insert_checkpoint(conn, checkpoint)

    def checkpoints(
        self, tenant: str, *, from_sequence: int = 0, to_sequence: int | None = None
    ) -> list[Checkpoint]:
        until = to_sequence if to_sequence is not None else 2**62
        rows = self._db.all(
            f"SELECT {_CP_COLS} FROM audit_checkpoints"  # noqa: S608
            " WHERE tenant = %s AND seq >= %s AND seq <= %s ORDER BY seq",
            (tenant, from_sequence, until),
        )
        return [_cp(r) for r in rows]

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
            (c.require_aware(cutoff),),
        )
        return [r[0] for r in rows]

    def prune_point(self, tenant: str, cutoff: datetime) -> tuple[int, bytes] | None:
        row = self._db.one(
            "SELECT seq, hash FROM audit_events WHERE tenant = %s AND time < %s"
            " ORDER BY seq DESC LIMIT 1",
            (tenant, c.require_aware(cutoff)),
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def prune(self, anchor: Checkpoint) -> int:
        with _fail_unavailable(), self._db.tx() as conn:
            _insert_checkpoint(conn, anchor)
            cur = conn.execute(
                "DELETE FROM audit_events WHERE tenant = %s AND seq <= %s",
                (anchor.tenant, anchor.sequence),
            )
            conn.execute(
                "DELETE FROM audit_checkpoints WHERE tenant = %s AND seq < %s",
                (anchor.tenant, anchor.sequence),
            )
            return cur.rowcount
