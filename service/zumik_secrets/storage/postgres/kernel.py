"""PostgreSQL's connection kernel: the pool, transactions, advisory locks, the breaker, the
change feed's append and the staged audit outbox.

Connections are autocommit (a pooled connection left in an implicit transaction cost 45% of a PK
select here); multi-statement writes use explicit ``conn.transaction()``. Connect and pool
timeouts are a few seconds so a down database fails fast with Unavailable instead of hanging a
server thread.

Change feed: every transaction that records a change first takes a transaction-scoped advisory
lock, so ``changes.seq`` order equals commit order (a poller never skips a late-committing lower
seq), then ``pg_notify('zumik_changes', <seq>)`` so listeners on other replicas wake within
milliseconds of the commit (storage/postgres/listener.py).

Implements :class:`~zumik_secrets.storage.sql.kernel.Kernel`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg_pool
import psycopg_pool.base

from zumik_secrets.core import deadlines
from zumik_secrets.core.audit_chain import EventDraft
from zumik_secrets.storage import _common as c
from zumik_secrets.storage import outbox
from zumik_secrets.storage.breaker import CircuitBreaker
from zumik_secrets.storage.observe import PgCursor
from zumik_secrets.storage.outbox import OUTBOX_COLS
from zumik_secrets.storage.postgres.dialect import (
    BACKEND,
    POSTGRES,
    PgDialect,
    fail_unavailable,
    map_db_errors,
)
from zumik_secrets.storage.postgres.listener import NOTIFY_CHANNEL, PgChangeListener
from zumik_secrets.storage.sql.kernel import Connection, Params

Row = tuple[Any, ...]

# Advisory lock keys (arbitrary constants, spelled from ASCII so they are recognisable in pg_locks).
MIGRATION_LOCK = 0x7A756D696B6D6967  # "zumikmig"
_CHANGES_LOCK = 0x7A756D696B636867  # "zumikchg"

RECONNECT_INTERVAL_S = 0.5
"""Seconds between the pool's reconnection attempts while the database is down (issue 24).

psycopg_pool doubles the delay after each failed attempt (1 s, 2 s, 4 s ... up to its
reconnect timeout), so the time to recover grew with the outage (17.6 s after a 40 s outage).
The pool offers no cap, so the backoff policy class it uses is set to a constant interval;
this process has no other psycopg pool.
"""
psycopg_pool.base.AttemptWithBackoff.INITIAL_DELAY = RECONNECT_INTERVAL_S
psycopg_pool.base.AttemptWithBackoff.DELAY_BACKOFF = 1.0

_log = logging.getLogger(__name__)


class PgConnection(psycopg.Connection[Row]):
    """A pooled connection; adds ``executemany`` (psycopg has it on cursors only)."""

    def executemany(self, sql: str, params: Iterable[Any], /) -> None:
        """Run ``sql`` once per parameter set (psycopg pipelines them)."""
        with self.cursor() as cur:
            cur.executemany(sql, params)


Conn = PgConnection


_SHORT_DEADLINE_S = 2.0
"""A caller with less time left than this gets a transaction-local ``statement_timeout`` (one
more round trip, paid only by calls that are short of time)."""

_TRIAL_CHECKOUT_S = 0.25
"""Longest pool wait of the breaker's half-open trial call."""

_CANCEL_SLACK_S = 0.05
"""Kept back from a deadline-bound statement timeout for the round trip of the error."""


class PgKernel:
    """Pool plus read/transaction helpers (the PostgreSQL :class:`Kernel`).

    Every wait is bounded by the caller's deadline (:mod:`zumik_secrets.core.deadlines`): the
    pool checkout by the remaining time, and, when less than ``_SHORT_DEADLINE_S`` is left, the
    statements by a transaction-local ``statement_timeout``. A circuit breaker fails calls
    at once while the database is known to be down.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int,
        max_size: int,
        connect_timeout: int,
        pool_timeout: float,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
        # PgCursor: statement spans while tracing (storage/observe.py).
        kwargs: dict[str, Any] = {"autocommit": True, "cursor_factory": PgCursor}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = connect_timeout
        if "application_name" not in params:
            kwargs["application_name"] = "zumik-secrets"
        #: The database, for connections outside the pool (readiness probe, listener).
        self.conninfo = conninfo
        #: Connection options for a probe connection (its own connect timeout).
        self.connect_kwargs = {k: v for k, v in kwargs.items() if k != "connect_timeout"}
        self._listen_kwargs = {k: v for k, v in kwargs.items() if k != "autocommit"}
        self._connect_timeout = float(connect_timeout)
        self.pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            conninfo,
            connection_class=PgConnection,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=pool_timeout,
            open=False,
            name="zumik-secrets",
            # Never give up reconnecting (an outage longer than this would otherwise leave the
            # pool shrunk until demand regrows it).
            reconnect_timeout=24 * 3600.0,
        )
        # Do not wait: a store whose database is down still opens, and calls fail with
        # Unavailable until it comes back (health reports NOT_SERVING meanwhile).
        self.pool.open(wait=False)
        self._timeout = pool_timeout
        self.breaker = breaker or CircuitBreaker(make_error=lambda: c.unavailable(BACKEND))
        #: The dialect of aggregate modules' queries (storage/sql/dialect.py).
        self.dialect: PgDialect = POSTGRES

    def _checkout_timeout(self) -> float:
        self.breaker.before()
        wait = deadlines.budget(self._timeout)
        if self.breaker.state != "closed":
            # The half-open trial: the pool is still reconnecting, do not hold a worker long.
            wait = min(wait, _TRIAL_CHECKOUT_S)
        return wait

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        left = deadlines.remaining()
        if outbox.pending() is not None or (left is not None and left < _SHORT_DEADLINE_S):
            # Staged audit events need a transaction to commit with; a short deadline needs a
            # transaction-local statement timeout.
            with self.transaction() as conn:
                yield conn
            return
        with (
            map_db_errors(self.breaker),
            self.pool.connection(timeout=self._checkout_timeout()) as conn,
        ):
            yield conn

    @contextmanager
    def _autocommit(self) -> Iterator[Conn]:
        """A pooled connection in autocommit, whatever is staged (for one-statement changes
        that write their staged events themselves, see ``outbox_cte``)."""
        with (
            map_db_errors(self.breaker),
            self.pool.connection(timeout=self._checkout_timeout()) as conn,
        ):
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """A pooled connection inside ``conn.transaction()``; staged audit events are written
        before the commit if the transaction changed a row."""
        staged: outbox.Staged | None = None
        with (
            map_db_errors(self.breaker),
            self.pool.connection(timeout=self._checkout_timeout()) as conn,
        ):
            with conn.transaction():
                left = deadlines.remaining()
                if left is not None and left < _SHORT_DEADLINE_S:
                    ms = max(1, int((left - _CANCEL_SLACK_S) * 1000))
                    conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(ms),))
                yield conn
                staged = outbox.pending()
                if staged is not None and not _write_staged(conn, staged):
                    staged = None
            # Committed (the transaction block would have raised otherwise).
            if staged is not None:
                outbox.written(staged)

    def one(self, sql: str, params: Params = ()) -> Row | None:
        with self._conn() as conn:
            return conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Params = ()) -> list[Row]:
        with self._conn() as conn:
            return conn.execute(sql, params).fetchall()

    def read(self) -> AbstractContextManager[Conn]:
        """A pooled connection in autocommit (a transaction if audit events are staged)."""
        return self._conn()

    def change(self) -> AbstractContextManager[Conn]:
        """One data-changing statement: autocommit, one round trip (a transaction if audit
        events are staged or the deadline is short)."""
        return self._conn()

    def write_hot(
        self, sql: str, params: Sequence[Any], *, shared_lock: str | None = None
    ) -> Row | None:
        """One ``INSERT ... RETURNING``; with staged audit events, one statement that writes
        them too (a data-modifying CTE: one round trip, both or neither).

        With ``shared_lock``: a transaction, the shared advisory lock first and then the
        statement, whose snapshot is taken once the lock is held (see
        :meth:`Kernel.lock_key`); staged events are written in it if a row was inserted.
        """
        staged = outbox.pending()
        if staged is None or shared_lock is not None:
            with self.transaction() as conn:
                if shared_lock is not None:
                    self.lock_key(conn, shared_lock, shared=True)
                return conn.execute(sql, params).fetchone()
        events_sql, events_params = outbox_cte(staged.drafts)
        with self._autocommit() as conn:
            row = conn.execute(
                f"WITH ins AS ({sql}), ob AS ({events_sql}) SELECT * FROM ins",  # noqa: S608
                [*params, *events_params],
            ).fetchone()
        outbox.written(staged)
        return row

    def record_changes(self, conn: Connection, kind: str, entity_ids: Sequence[str]) -> None:
        """See :func:`record_changes`."""
        record_changes(conn, kind, entity_ids)

    def lock_key(self, conn: Connection, key: str, *, shared: bool = False) -> None:
        """A transaction-scoped advisory lock on ``key`` (hashed to 64 bits), shared or
        exclusive."""
        if shared:
            conn.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))", (key,))
        else:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    def listen(self, callback: Callable[[], None]) -> PgChangeListener:
        """Start a listener; waits (up to the connect timeout) for its first connection attempt.

        If the database is down the listener keeps retrying in the background and fires the
        callback once it connects; callers should poll the change feed meanwhile.
        """
        listener = PgChangeListener(self.conninfo, self._listen_kwargs, callback)
        listener.first_attempt_done.wait(self._connect_timeout + 1)
        if not listener.ready.is_set():
            _log.warning("change listener not connected yet; it keeps retrying")
        return listener

    def fail_closed(self) -> AbstractContextManager[None]:
        """Every psycopg error inside is Unavailable (see :func:`fail_unavailable`)."""
        return fail_unavailable()


def _write_staged(conn: Conn, staged: outbox.Staged) -> bool:
    """Write the staged audit events if this transaction changed anything; True if written.

    A transaction is assigned an id only by its first write or row lock, so a call that found
    nothing to change (a revoke of a missing key) writes no event.
    """
    return write_outbox(conn, staged.drafts, only_if_changed=True)


def record_changes(conn: Connection, kind: str, entity_ids: Sequence[str]) -> None:
    """Append changes and notify, inside the caller's transaction. Call it last in a transaction
    (after every row lock is taken) so the advisory lock cannot take part in a deadlock."""
    if not entity_ids:
        return
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CHANGES_LOCK,))
    row = conn.execute(
        "WITH ins AS (INSERT INTO changes (kind, entity_id, at)"
        " SELECT %s, unnest(%s::text[]), now() RETURNING seq)"
        " SELECT max(seq) FROM ins",
        (kind, list(entity_ids)),
    ).fetchone()
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(c.returned_int(row))))


def write_outbox(conn: Conn, drafts: Sequence[EventDraft], *, only_if_changed: bool) -> bool:
    """Write ``drafts`` to the outbox in the caller's transaction (see storage/outbox.py).

    Args:
        conn: A connection inside a transaction.
        drafts: The events.
        only_if_changed: Write only if the transaction has written (or locked) a row already.

    Returns:
        Whether the events were written.
    """
    if not drafts:
        return False
    columns = list(zip(*(outbox.row(d, POSTGRES) for d in drafts), strict=True))
    cur = conn.execute(
        f"INSERT INTO audit_outbox ({OUTBOX_COLS})"  # noqa: S608
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[],"
        " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
        + (" WHERE pg_current_xact_id_if_assigned() IS NOT NULL" if only_if_changed else ""),
        [list(col) for col in columns],
    )
    return cur.rowcount > 0


def outbox_cte(drafts: Sequence[EventDraft]) -> tuple[str, list[Any]]:
    """A data-modifying CTE that writes ``drafts`` to the outbox, and its parameters.

    For a hot single-statement change (Seal's insert): ``WITH ins AS (...), ob AS (<this>)
    SELECT ...`` makes the change and writes its events in one statement, one round trip,
    atomically (both or neither), instead of BEGIN, INSERT, INSERT, COMMIT.
    """
    columns = list(zip(*(outbox.row(d, POSTGRES) for d in drafts), strict=True))
    return (
        f"INSERT INTO audit_outbox ({OUTBOX_COLS})"  # noqa: S608
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[],"
        " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])",
        [list(col) for col in columns],
    )
