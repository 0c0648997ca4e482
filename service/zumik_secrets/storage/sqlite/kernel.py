"""SQLite's connection kernel: the pool, the writer lock, transactions and group commit.

Concurrency model: a small lock-protected pool of connections (``check_same_thread=False``), one
borrowed per call, so many server threads read in parallel (WAL readers never block) while writes
serialise in ``BEGIN IMMEDIATE`` transactions that wait up to ``busy_timeout`` for the write lock.
``synchronous=FULL`` makes every acknowledged commit survive power loss or ``kill -9``.

Implements :class:`~zumik_secrets.storage.sql.kernel.Kernel`. Statements take psycopg-style
placeholders: :class:`SqliteConnection` converts them (``storage/sql/dialect.py``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from zumik_secrets.core import deadlines
from zumik_secrets.core.audit_chain import EventDraft
from zumik_secrets.storage import _common as c
from zumik_secrets.storage import observe, outbox
from zumik_secrets.storage.outbox import OUTBOX_COLS
from zumik_secrets.storage.sql.dialect import to_qmark
from zumik_secrets.storage.sql.kernel import Connection, Params
from zumik_secrets.storage.sqlite.dialect import (
    BACKEND,
    SQLITE,
    SqliteDialect,
    domain_error,
    map_db_errors,
    reraise,
)

Row = tuple[Any, ...]
T = TypeVar("T")


class SqliteConnection(observe.SqliteConnection):
    """A pooled connection whose statements take ``%s`` / ``%(name)s`` placeholders."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """See :meth:`sqlite3.Connection.execute`; ``sql`` in psycopg placeholder style."""
        return super().execute(to_qmark(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        """See :meth:`sqlite3.Connection.executemany`; ``sql`` in psycopg placeholder style."""
        return super().executemany(to_qmark(sql), parameters)


def execute_verbatim(conn: sqlite3.Connection, sql: str) -> sqlite3.Cursor:
    """Run SQLite's own SQL text (a migration statement) without placeholder conversion."""
    if isinstance(conn, SqliteConnection):
        return observe.SqliteConnection.execute(conn, sql)
    return conn.execute(sql)


def write_outbox(conn: sqlite3.Connection, drafts: Sequence[EventDraft]) -> None:
    """Write ``drafts`` to the outbox in the caller's transaction (see storage/outbox.py)."""
    if not drafts:
        return
    conn.executemany(
        f"INSERT INTO audit_outbox ({OUTBOX_COLS})"  # noqa: S608
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [outbox.row(d, SQLITE) for d in drafts],
    )


class _Combined:
    """One caller's piece of work in a combined write (see :meth:`SqliteKernel.write_combined`)."""

    __slots__ = ("done", "error", "result", "settled", "taken", "work", "wrote_outbox")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self.work = work
        self.wrote_outbox = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False
        self.settled = False
        self.done = threading.Lock()  # held until settled
        self.done.acquire()

    def outcome(self) -> Any:
        if self.error is not None:
            if isinstance(self.error, sqlite3.Error):
                raise reraise(self.error) from self.error
            raise self.error
        return self.result


class _WithOutbox:
    """``work`` carrying its caller's staged audit events (see
    :meth:`SqliteKernel.write_combined`)."""

    __slots__ = ("outbox_drafts", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], Any], staged: outbox.Staged) -> None:
        self.work = work
        self.outbox_drafts = staged.drafts

    def __call__(self, conn: sqlite3.Connection) -> Any:
        return self.work(conn)


def _settle(batch: list[_Combined], failure: BaseException | None) -> None:
    """Wake every caller of a combined batch; ``failure``: the transaction did not commit."""
    for piece in batch:
        if piece.settled:
            continue
        if failure is not None and piece.error is None:
            piece.result = None
            piece.error = failure
        piece.settled = True
        piece.done.release()


class _Write:
    """``with db.transaction() as conn``: a pooled connection inside ``BEGIN IMMEDIATE``.

    A class rather than nested generator context managers: every write runs through here
    (reads through :meth:`SqliteKernel.one` and :meth:`SqliteKernel.all`, also without them),
    and the generator machinery was a measurable part of a Seal (profiled in bench/).
    """

    __slots__ = ("_changes", "_conn", "_db")

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db
        self._conn: sqlite3.Connection | None = None
        self._changes = 0

    def __enter__(self) -> sqlite3.Connection:
        db = self._db
        # Writers of this process queue on a lock (woken in turn) before they ask SQLite, whose
        # busy handler polls with growing sleeps: under contention that polling made Seal's p99
        # hundreds of milliseconds. Other processes still meet at SQLite's lock (busy_timeout).
        if not db.writer.acquire(timeout=deadlines.budget(db.busy_timeout_s)):
            raise c.unavailable(BACKEND)
        try:
            conn = db.checkout()
        except sqlite3.Error as exc:
            db.writer.release()
            raise reraise(exc) from exc
        try:
            # IMMEDIATE takes the write lock up front (waiting busy_timeout), so a transaction
            # never fails half-way trying to upgrade a read lock.
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            try:
                db.checkin(conn)
            except sqlite3.Error:
                pass  # the original error is the one to report
            finally:
                db.writer.release()
            raise reraise(exc) from exc
        self._conn = conn
        self._changes = conn.total_changes
        return conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        conn = self._conn
        if conn is None:  # __enter__ failed: nothing borrowed
            return
        self._conn = None
        staged = outbox.pending() if exc is None else None
        try:
            if exc is None:
                # The audit events staged for this change commit with it (only if it changed
                # a row: a call that found nothing to change records no change).
                if staged is not None and conn.total_changes != self._changes:
                    write_outbox(conn, staged.drafts)
                else:
                    staged = None
                conn.execute("COMMIT")
                if staged is not None:
                    outbox.written(staged)
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the original error is reported
                    conn.execute("ROLLBACK")
            raise reraise(error) from (exc or error)
        finally:
            try:
                self._db.checkin(conn)
            except sqlite3.Error as error:
                raise reraise(error) from error
            finally:
                self._db.writer.release()
        if isinstance(exc, sqlite3.Error):
            mapped = domain_error(exc)
            if mapped is not None:
                raise mapped from exc


def private_file(path: str) -> None:
    """Make the database file 0600 before SQLite opens it (its -wal and -shm files take the
    database file's mode), creating it empty with that mode when missing; an existing file
    with looser permissions is narrowed to 0600."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        for name in (path, f"{path}-wal", f"{path}-shm"):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name).st_mode & 0o077:
                    os.chmod(name, 0o600)
        return
    os.close(fd)


class SqliteKernel:
    """The connection pool and transaction helpers (the SQLite :class:`Kernel`)."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self.busy_timeout_s = busy_timeout_ms / 1000
        #: Held by this process's one writer (see :class:`_Write`).
        self.writer = threading.Lock()
        self._combine_lock = threading.Lock()
        self._combined: list[_Combined] = []
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        #: The dialect of aggregate modules' queries (storage/sql/dialect.py).
        self.dialect: SqliteDialect = SQLITE

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # a pooled connection moves between threads, one at a time
            factory=SqliteConnection,  # statement spans while tracing (storage/observe.py)
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Deleted rows are overwritten with zeros, not left in free pages: a purge must leave
        # nothing of a tenant in the file (the WAL is truncated after a purge, see purge.py).
        conn.execute("PRAGMA secure_delete = ON")
        return conn

    def init_file(self) -> None:
        """Switch the file to WAL once (persistent), before any pooled use."""
        with map_db_errors(), self._connection() as conn:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise sqlite3.OperationalError("could not enable WAL journal mode")

    def _is_closed(self) -> bool:
        return self._closed

    def checkout(self) -> sqlite3.Connection:
        """Borrow a pooled connection (give it back with :meth:`checkin`).

        Raises:
            sqlite3.ProgrammingError: the store is closed.
            sqlite3.OperationalError: a new connection could not be opened.
        """
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
            with self._lock:
                self._all.append(conn)
        return conn

    def checkin(self, conn: sqlite3.Connection) -> None:
        """Return a borrowed connection (rolled back if a transaction was left open)."""
        if conn.in_transaction:
            conn.rollback()
        with self._lock:
            # Re-read under the lock: close() may have run while the caller held conn.
            closed = self._is_closed()
            if not closed:
                self._idle.append(conn)
        if closed:
            conn.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = self.checkout()
        try:
            yield conn
        finally:
            self.checkin(conn)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for single-statement reads (autocommit)."""
        with map_db_errors(), self._connection() as conn:
            yield conn

    def change(self) -> _Write:
        """One data-changing statement: a ``BEGIN IMMEDIATE`` transaction like any write."""
        return _Write(self)

    def transaction(self) -> _Write:
        """A connection inside ``BEGIN IMMEDIATE``; commits on success, rolls back on error."""
        return _Write(self)

    def write_hot(
        self, sql: str, params: Sequence[Any], *, shared_lock: str | None = None
    ) -> Row | None:
        """One hot ``INSERT ... RETURNING`` through group commit (:meth:`write_combined`);
        ``shared_lock`` needs nothing (see :meth:`lock_key`)."""
        row: Row | None = self.write_combined(lambda conn: conn.execute(sql, params).fetchone())
        return row

    def record_changes(self, conn: Connection, kind: str, entity_ids: Sequence[str]) -> None:
        """Append to the change feed in ``conn``'s transaction (SQLite cannot notify: pollers
        read it)."""
        at = c.to_us(c.now())
        conn.executemany(
            "INSERT INTO changes (kind, entity_id, at) VALUES (%s, %s, %s)",
            [(kind, eid, at) for eid in entity_ids],
        )

    def lock_key(self, conn: Connection, key: str, *, shared: bool = False) -> None:
        """Nothing to take, shared or not: ``BEGIN IMMEDIATE`` already serialises every writer
        of the file."""

    def listen(self, callback: Callable[[], None]) -> None:
        """SQLite cannot push: always None (poll the change feed's latest seq)."""
        return None

    def write_combined(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(conn)`` in a write transaction that it may share with other callers'.

        Group commit for hot single-row writes (Seal's insert): whoever holds the writer lock
        runs every piece queued meanwhile in one ``BEGIN IMMEDIATE`` transaction, each in its
        own savepoint (a failing piece rolls back alone and its caller gets its error), and
        commits once: one fsync for the batch instead of one per call. Callers whose piece was
        run by another return as soon as it is committed. Durability is unchanged: a caller
        returns only after the commit that holds its row.

        Returns:
            What ``work`` returned.

        Raises:
            Unavailable: the lock or the database was not available within busy_timeout, or
                the shared commit failed.
            AlreadyExists: ``work`` hit a UNIQUE constraint.
        """
        staged = outbox.pending()
        piece: Callable[[sqlite3.Connection], Any] = work
        if staged is not None:
            # The piece may run in another caller's thread: carry this caller's staged audit
            # events into it (written in the piece's savepoint, so with its row or not at all).
            piece = _WithOutbox(work, staged)
        wait = deadlines.budget(self.busy_timeout_s)
        deadline = time.monotonic() + wait
        item = _Combined(piece)
        with self._combine_lock:
            self._combined.append(item)
        if self.writer.acquire(timeout=wait):
            try:
                if not item.taken:
                    self._run_combined()
            finally:
                self.writer.release()
        else:
            with self._combine_lock:
                if not item.taken:
                    self._combined.remove(item)
                    raise c.unavailable(BACKEND)
        # Settled already when this caller ran the batch or an earlier holder did; otherwise
        # the holder that took it is still committing.
        if not item.done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise c.unavailable(BACKEND)
        result: T = item.outcome()
        if staged is not None and item.wrote_outbox:
            outbox.written(staged)
        return result

    def _run_combined(self) -> None:
        """Run every queued piece in one transaction (the writer lock is held)."""
        with self._combine_lock:
            batch, self._combined = self._combined, []
            for piece in batch:
                piece.taken = True
        try:
            conn = self.checkout()
        except sqlite3.Error as exc:
            _settle(batch, exc)
            return
        failure: BaseException | None = None
        committed = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for piece in batch:
                conn.execute("SAVEPOINT combined")
                try:
                    before = conn.total_changes
                    piece.result = piece.work(conn)
                    staged_work = getattr(piece.work, "outbox_drafts", None)
                    if staged_work is not None and conn.total_changes != before:
                        write_outbox(conn, staged_work)
                        piece.wrote_outbox = True
                except Exception as exc:  # noqa: BLE001 - the piece's caller gets it
                    conn.execute("ROLLBACK TO combined")
                    piece.error = exc
                    piece.wrote_outbox = False
                conn.execute("RELEASE combined")
            conn.execute("COMMIT")
            committed = True
        except BaseException as exc:
            failure = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            try:
                self.checkin(conn)
            except sqlite3.Error as exc:
                if not committed and failure is None:
                    failure = exc
            _settle(batch, None if committed else failure)

    def one(self, sql: str, params: Params = ()) -> Row | None:
        try:
            conn = self.checkout()
            try:
                row: Row | None = conn.execute(sql, params).fetchone()
                return row
            finally:
                self.checkin(conn)
        except sqlite3.Error as exc:
            raise reraise(exc) from exc

    def all(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            conn = self.checkout()
            try:
                return list(conn.execute(sql, params).fetchall())
            finally:
                self.checkin(conn)
        except sqlite3.Error as exc:
            raise reraise(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._all = []
        for conn in idle:
            conn.close()

    # -- added by S2

    def fail_closed(self) -> contextlib.nullcontext[None]:
        """Nothing to add: :meth:`transaction` maps every sqlite3 error it can (a lock held
        past ``busy_timeout`` is Unavailable already)."""
        return contextlib.nullcontext()
