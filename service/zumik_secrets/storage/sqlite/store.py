"""SQLite implementation of the storage ports.

Concurrency model: a small lock-protected pool of connections (``check_same_thread=False``), one
borrowed per call, so many server threads read in parallel (WAL readers never block) while writes
serialise in ``BEGIN IMMEDIATE`` transactions that wait up to ``busy_timeout`` for the write lock.
``synchronous=FULL`` makes every acknowledged commit survive power loss or ``kill -9``.

Representation: times are INTEGER microseconds since the Unix epoch (UTC); scopes are JSON text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from zumik_secrets.core import deadlines, errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage import outbox
from zumik_secrets.storage.observe import SqliteConnection
from zumik_secrets.storage.records import (
    ApiKeyRecord,
    ChangeRecord,
    MigrationInfo,
    SessionRecord,
    SigningKeyRecord,
    TenantSettings,
)
from zumik_secrets.storage.sqlite.audit import SqliteAuditStore, write_outbox

BACKEND = "sqlite"
Row = tuple[Any, ...]


def _domain_error(exc: sqlite3.Error) -> Exception | None:
    """The domain error for a sqlite3 error at the adapter boundary (None: re-raise as is).

    AlreadyExists for a failed UNIQUE or PRIMARY KEY constraint; Unavailable for a database
    locked past busy_timeout, unreadable, or closed (OperationalError, ProgrammingError).
    """
    if isinstance(exc, sqlite3.IntegrityError):
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            return c.already_exists()
        return None
    if isinstance(exc, sqlite3.OperationalError | sqlite3.ProgrammingError):
        return c.unavailable(BACKEND)
    return None


def _reraise(exc: sqlite3.Error) -> Exception:
    """What to raise for ``exc``: its domain error, or a copy of it (never ``exc`` itself).

    ``raise exc from exc`` would make an error its own cause; the copy keeps the message and
    type and chains to the original.
    """
    mapped = _domain_error(exc)
    if mapped is not None:
        return mapped
    return type(exc)(*exc.args)


@contextmanager
def map_db_errors() -> Iterator[None]:
    """Translate sqlite3 errors into domain errors at the adapter boundary.

    Raises:
        AlreadyExists: A UNIQUE or PRIMARY KEY constraint failed.
        Unavailable: The database is locked past busy_timeout, unreadable, or closed.
        InvalidArgument: ``VALUE_OUT_OF_RANGE``: an integer too large for the database.
    """
    try:
        yield
    except sqlite3.Error as exc:
        mapped = _domain_error(exc)
        if mapped is None:
            raise
        raise mapped from exc
    except OverflowError as exc:
        # An integer SQLite cannot hold (>= 2^63) reached a query: bad input, never INTERNAL.
        raise c.out_of_range() from exc


class _Combined:
    """One caller's piece of work in a combined write (see :meth:`_Db.write_combined`)."""

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
                raise _reraise(self.error) from self.error
            raise self.error
        return self.result


class _WithOutbox:
    """``work`` carrying the staged audit events of its caller (see :meth:`_Db.write_combined`)."""

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
    """``with db.write() as conn``: a pooled connection inside ``BEGIN IMMEDIATE``.

    A class rather than nested generator context managers: every write runs through here (reads
    through :meth:`_Db.one` and :meth:`_Db.all`, also without them), and the generator machinery
    was a measurable part of a Seal (profiled in bench/).
    """

    __slots__ = ("_changes", "_conn", "_db")

    def __init__(self, db: _Db) -> None:
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
            raise _reraise(exc) from exc
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
            raise _reraise(exc) from exc
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
            raise _reraise(error) from (exc or error)
        finally:
            try:
                self._db.checkin(conn)
            except sqlite3.Error as error:
                raise _reraise(error) from error
            finally:
                self._db.writer.release()
        if isinstance(exc, sqlite3.Error):
            mapped = _domain_error(exc)
            if mapped is not None:
                raise mapped from exc


def _private_file(path: str) -> None:
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


class _Db:
    """The connection pool and transaction helpers."""

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
        with map_db_errors(), self.connection() as conn:
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
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = self.checkout()
        try:
            yield conn
        finally:
            self.checkin(conn)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for single-statement reads (autocommit)."""
        with map_db_errors(), self.connection() as conn:
            yield conn

    def write(self) -> _Write:
        """A connection inside ``BEGIN IMMEDIATE``; commits on success, rolls back on error."""
        return _Write(self)

    def write_combined(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
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
        if staged is not None:
            # The piece may run in another caller's thread: carry this caller's staged audit
            # events into it (written in the piece's savepoint, so with its row or not at all).
            work = _WithOutbox(work, staged)
        wait = deadlines.budget(self.busy_timeout_s)
        deadline = time.monotonic() + wait
        item = _Combined(work)
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
        result = item.outcome()
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

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:
            conn = self.checkout()
            try:
                row: Row | None = conn.execute(sql, params).fetchone()
                return row
            finally:
                self.checkin(conn)
        except sqlite3.Error as exc:
            raise _reraise(exc) from exc

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            conn = self.checkout()
            try:
                return list(conn.execute(sql, params).fetchall())
            finally:
                self.checkin(conn)
        except sqlite3.Error as exc:
            raise _reraise(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._all = []
        for conn in idle:
            conn.close()


def _record_changes(conn: sqlite3.Connection, kind: str, entity_ids: Sequence[str]) -> None:
    at = c.to_us(c.now())
    conn.executemany(
        "INSERT INTO changes (kind, entity_id, at) VALUES (?, ?, ?)",
        [(kind, eid, at) for eid in entity_ids],
    )


def _scopes_out(scopes: tuple[str, ...]) -> str:
    return json.dumps(list(scopes), separators=(",", ":"))


def _scopes_in(text: str) -> tuple[str, ...]:
    return tuple(str(s) for s in json.loads(text))


class SqliteTenantSettingsStore:
    """:class:`~zumik_secrets.storage.ports.TenantSettingsStore` on SQLite."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    def get(self, tenant_id: str) -> TenantSettings | None:
        row = self._db.one(
            "SELECT tenant_id, telemetry_mode, updated_at, audit_retention_s,"
            " revoked_key_retention_s, session_absolute_lifetime_s FROM tenant_settings"
            " WHERE tenant_id = ?",
            (tenant_id,),
        )
        if row is None:
            return None
        return TenantSettings(
            row[0], row[1], c.from_us(row[2]), *(c.opt_seconds(v) for v in row[3:6])
        )

    def put(self, settings: TenantSettings) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO tenant_settings (tenant_id, telemetry_mode, updated_at,"
                " audit_retention_s, revoked_key_retention_s, session_absolute_lifetime_s)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET"
                " telemetry_mode = excluded.telemetry_mode, updated_at = excluded.updated_at,"
                " audit_retention_s = excluded.audit_retention_s,"
                " revoked_key_retention_s = excluded.revoked_key_retention_s,"
                " session_absolute_lifetime_s = excluded.session_absolute_lifetime_s",
                (
                    settings.tenant_id,
                    settings.telemetry_mode,
                    c.to_us(settings.updated_at),
                    c.opt_to_seconds(settings.audit_retention),
                    c.opt_to_seconds(settings.revoked_key_retention),
                    c.opt_to_seconds(settings.session_absolute_lifetime),
                ),
            )
            _record_changes(conn, "tenant_settings", [settings.tenant_id])


_SK_COLS = (
    "kid, purpose, public_key, wrapped_private_key, keyring_version, state, created_at,"
    " retire_after"
)


def _sk(row: Row) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=row[0],
        purpose=row[1],
        public_key=bytes(row[2]),
        wrapped_private_key=bytes(row[3]),
        keyring_version=row[4],
        state=row[5],
        created_at=c.from_us(row[6]),
        retire_after=c.opt_from_us(row[7]),
    )


class SqliteSigningKeyStore:
    """:class:`~zumik_secrets.storage.ports.SigningKeyStore` on SQLite."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    def add(self, rec: SigningKeyRecord) -> None:
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO signing_keys ({_SK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.kid,
                    rec.purpose,
                    rec.public_key,
                    rec.wrapped_private_key,
                    rec.keyring_version,
                    rec.state,
                    c.to_us(rec.created_at),
                    c.opt_to_us(rec.retire_after),
                ),
            )

    def list(self, purpose: str) -> list[SigningKeyRecord]:
        rows = self._db.all(
            f"SELECT {_SK_COLS} FROM signing_keys WHERE purpose = ? ORDER BY created_at, kid",
            (purpose,),
        )
        return [_sk(r) for r in rows]

    def set_state(
        self, kid: str, state: str, retire_after: datetime | None
    ) -> SigningKeyRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                f"UPDATE signing_keys SET state = ?, retire_after = ? WHERE kid = ?"
                f" RETURNING {_SK_COLS}",
                (state, c.opt_to_us(retire_after), kid),
            ).fetchone()
            if row is None:
                return None
            _record_changes(conn, "signing_key", [kid])
            return _sk(row)

    def replace_wrapped(
        self, kid: str, old_wrapped: bytes, new_wrapped: bytes, keyring_version: int
    ) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE signing_keys SET wrapped_private_key = ?, keyring_version = ?"
                " WHERE kid = ? AND wrapped_private_key = ?",
                (new_wrapped, keyring_version, kid, old_wrapped),
            )
            return cur.rowcount == 1


_AK_COLS = (
    "key_id, tenant_id, project_id, display_name, env, masked_prefix, salt, secret_hash, scopes,"
    " state, created_at, expire_time, revoke_time, last_used_at, rotated_from, seq"
)


def _ak(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        tenant_id=row[1],
        project_id=row[2],
        display_name=row[3],
        env=row[4],
        masked_prefix=row[5],
        salt=bytes(row[6]),
        secret_hash=bytes(row[7]),
        scopes=_scopes_in(row[8]),
        state=row[9],
        created_at=c.from_us(row[10]),
        expire_time=c.opt_from_us(row[11]),
        revoke_time=c.opt_from_us(row[12]),
        last_used_at=c.opt_from_us(row[13]),
        rotated_from=row[14],
        seq=row[15],
    )


class SqliteApiKeyStore:
    """:class:`~zumik_secrets.storage.ports.ApiKeyStore` on SQLite."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    @staticmethod
    def _insert(conn: sqlite3.Connection, rec: ApiKeyRecord) -> ApiKeyRecord:
        row = conn.execute(
            "INSERT INTO api_keys (key_id, tenant_id, project_id, display_name, env,"
            " masked_prefix, salt, secret_hash, scopes, state, created_at, expire_time,"
            " revoke_time, last_used_at, rotated_from)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (
                rec.key_id,
                rec.tenant_id,
                rec.project_id,
                rec.display_name,
                rec.env,
                rec.masked_prefix,
                rec.salt,
                rec.secret_hash,
                _scopes_out(rec.scopes),
                rec.state,
                c.to_us(rec.created_at),
                c.opt_to_us(rec.expire_time),
                c.opt_to_us(rec.revoke_time),
                c.opt_to_us(rec.last_used_at),
                rec.rotated_from,
            ),
        ).fetchone()
        return dataclasses.replace(rec, seq=c.returned_int(row))

    @staticmethod
    def _get(
        conn: sqlite3.Connection, tenant_id: str, project_id: str, key_id: str
    ) -> ApiKeyRecord | None:
        row = conn.execute(
            f"SELECT {_AK_COLS} FROM api_keys"
            " WHERE key_id = ? AND tenant_id = ? AND project_id = ?",
            (key_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _ak(row)

    def insert(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        with self._db.write() as conn:
            return self._insert(conn, rec)

    def get_by_id(self, key_id: str) -> ApiKeyRecord | None:
        row = self._db.one(f"SELECT {_AK_COLS} FROM api_keys WHERE key_id = ?", (key_id,))
        return None if row is None else _ak(row)

    def get(self, tenant_id: str, project_id: str, key_id: str) -> ApiKeyRecord | None:
        with self._db.read() as conn:
            return self._get(conn, tenant_id, project_id, key_id)

    def list(
        self,
        tenant_id: str,
        project_id: str,
        *,
        page_size: int,
        after_seq: int | None,
        include_revoked: bool,
    ) -> list[ApiKeyRecord]:
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        state_filter = "" if include_revoked else " AND state = 'active'"
        rows = self._db.all(
            f"SELECT {_AK_COLS} FROM api_keys WHERE tenant_id = ? AND project_id = ?"
            f" AND seq > ?{state_filter} ORDER BY seq LIMIT ?",
            (tenant_id, project_id, after_seq or 0, page_size),
        )
        return [_ak(r) for r in rows]

    def revoke(
        self, tenant_id: str, project_id: str, key_id: str, at: datetime
    ) -> ApiKeyRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET state = 'revoked', revoke_time = ?"
                " WHERE key_id = ? AND tenant_id = ? AND project_id = ? AND state = 'active'"
                f" RETURNING {_AK_COLS}",
                (c.to_us(at), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return self._get(conn, tenant_id, project_id, key_id)
            _record_changes(conn, "api_key", [key_id])
            return _ak(row)

    def set_expiry(
        self, tenant_id: str, project_id: str, key_id: str, expire_time: datetime | None
    ) -> ApiKeyRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET expire_time = ?"
                " WHERE key_id = ? AND tenant_id = ? AND project_id = ?"
                f" RETURNING {_AK_COLS}",
                (c.opt_to_us(expire_time), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return None
            _record_changes(conn, "api_key", [key_id])
            return _ak(row)

    def insert_rotation(
        self, new_rec: ApiKeyRecord, old_key_id: str, old_expire_time: datetime
    ) -> ApiKeyRecord:
        rotated_at = c.to_us(new_rec.created_at)
        old_expire = c.to_us(old_expire_time)
        with self._db.write() as conn:
            old = self._get(conn, new_rec.tenant_id, new_rec.project_id, old_key_id)
            if old is None:
                raise errors.NotFound("API key not found", reason="API_KEY_NOT_FOUND")
            if old.state != "active":
                raise errors.FailedPrecondition(
                    "API key is revoked and cannot be rotated", reason="API_KEY_REVOKED"
                )
            if old_expire <= rotated_at:
                conn.execute(
                    "UPDATE api_keys SET state = 'revoked', revoke_time = ? WHERE key_id = ?",
                    (rotated_at, old_key_id),
                )
            else:
                # A rotation shortens the old key's life, never extends it.
                conn.execute(
                    "UPDATE api_keys SET expire_time = min(coalesce(expire_time, ?), ?)"
                    " WHERE key_id = ?",
                    (old_expire, old_expire, old_key_id),
                )
            inserted = self._insert(conn, dataclasses.replace(new_rec, rotated_from=old_key_id))
            _record_changes(conn, "api_key", [old_key_id])
            return inserted

    def record_last_used(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        params = [(c.to_us(at), key_id, c.to_us(at)) for key_id, at in updates.items()]
        with self._db.write() as conn:
            conn.executemany(
                "UPDATE api_keys SET last_used_at = ?"
                " WHERE key_id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                params,
            )

    def delete_revoked_before(self, cutoff: datetime) -> int:
        cut = c.to_us(cutoff)
        with self._db.write() as conn:
            cur = conn.execute(
                "DELETE FROM api_keys WHERE (state = 'revoked' AND revoke_time < ?)"
                " OR (expire_time IS NOT NULL AND expire_time < ?)",
                (cut, cut),
            )
            return cur.rowcount

    def delete_dead_keys(
        self, now: datetime, default_retention: timedelta, *, tenant_id: str | None = None
    ) -> int:
        # The cutoff is per row: now minus its tenant's retention (or the default).
        cutoff = (
            "(? - coalesce((SELECT ts.revoked_key_retention_s FROM tenant_settings ts"
            " WHERE ts.tenant_id = api_keys.tenant_id), ?) * 1000000)"
        )
        where = (
            f"((state = 'revoked' AND revoke_time < {cutoff})"
            f" OR (expire_time IS NOT NULL AND expire_time < {cutoff}))"
        )
        now_us, default_s = c.to_us(now), int(default_retention.total_seconds())
        params: list[Any] = [now_us, default_s, now_us, default_s]
        if tenant_id is not None:
            where += " AND tenant_id = ?"
            params.append(tenant_id)
        with self._db.write() as conn:
            return conn.execute(f"DELETE FROM api_keys WHERE {where}", params).rowcount


_SE_COLS = (
    "session_id, token_hash, tenant_id, project_id, user_subject, scopes, state, created_at,"
    " last_seen_at, idle_timeout_seconds, absolute_expire_time, revoke_time, seq"
)


def _se(row: Row) -> SessionRecord:
    return SessionRecord(
        session_id=row[0],
        token_hash=bytes(row[1]),
        tenant_id=row[2],
        project_id=row[3],
        user_subject=row[4],
        scopes=_scopes_in(row[5]),
        state=row[6],
        created_at=c.from_us(row[7]),
        last_seen_at=c.from_us(row[8]),
        idle_timeout_seconds=row[9],
        absolute_expire_time=c.from_us(row[10]),
        revoke_time=c.opt_from_us(row[11]),
        seq=row[12],
    )


class SqliteSessionStore:
    """:class:`~zumik_secrets.storage.ports.SessionStore` on SQLite."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    @staticmethod
    def _get(
        conn: sqlite3.Connection, tenant_id: str, project_id: str, session_id: str
    ) -> SessionRecord | None:
        row = conn.execute(
            f"SELECT {_SE_COLS} FROM sessions"
            " WHERE session_id = ? AND tenant_id = ? AND project_id = ?",
            (session_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _se(row)

    def insert(self, rec: SessionRecord) -> SessionRecord:
        with self._db.write() as conn:
            row = conn.execute(
                "INSERT INTO sessions (session_id, token_hash, tenant_id, project_id,"
                " user_subject, scopes, state, created_at, last_seen_at, idle_timeout_seconds,"
                " absolute_expire_time, revoke_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                (
                    rec.session_id,
                    rec.token_hash,
                    rec.tenant_id,
                    rec.project_id,
                    rec.user_subject,
                    _scopes_out(rec.scopes),
                    rec.state,
                    c.to_us(rec.created_at),
                    c.to_us(rec.last_seen_at),
                    rec.idle_timeout_seconds,
                    c.to_us(rec.absolute_expire_time),
                    c.opt_to_us(rec.revoke_time),
                ),
            ).fetchone()
            return dataclasses.replace(rec, seq=c.returned_int(row))

    def get_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        row = self._db.one(f"SELECT {_SE_COLS} FROM sessions WHERE token_hash = ?", (token_hash,))
        return None if row is None else _se(row)

    def get_by_id(self, session_id: str) -> SessionRecord | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_SE_COLS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return None if row is None else _se(row)

    def get(self, tenant_id: str, project_id: str, session_id: str) -> SessionRecord | None:
        with self._db.read() as conn:
            return self._get(conn, tenant_id, project_id, session_id)

    def touch(self, session_id: str, last_seen_at: datetime) -> None:
        self.touch_many({session_id: last_seen_at})

    def touch_many(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        params = [(c.to_us(at), sid, c.to_us(at)) for sid, at in updates.items()]
        with self._db.write() as conn:
            conn.executemany(
                "UPDATE sessions SET last_seen_at = ? WHERE session_id = ? AND last_seen_at < ?",
                params,
            )

    def replace_token(
        self,
        tenant_id: str,
        project_id: str,
        session_id: str,
        new_token_hash: bytes,
        scopes: tuple[str, ...],
        at: datetime,
    ) -> SessionRecord | None:
        at_us = c.to_us(at)
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE sessions SET token_hash = ?, scopes = ?,"
                " last_seen_at = max(last_seen_at, ?)"
                " WHERE session_id = ? AND tenant_id = ? AND project_id = ? AND state = 'active'"
                f" RETURNING {_SE_COLS}",
                (new_token_hash, _scopes_out(scopes), at_us, session_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return None
            _record_changes(conn, "session", [session_id])
            return _se(row)

    def revoke(
        self, tenant_id: str, project_id: str, session_id: str, at: datetime
    ) -> SessionRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE sessions SET state = 'revoked', revoke_time = ?"
                " WHERE session_id = ? AND tenant_id = ? AND project_id = ? AND state = 'active'"
                f" RETURNING {_SE_COLS}",
                (c.to_us(at), session_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return self._get(conn, tenant_id, project_id, session_id)
            _record_changes(conn, "session", [session_id])
            return _se(row)

    def revoke_user(self, tenant_id: str, project_id: str, user_subject: str, at: datetime) -> int:
        with self._db.write() as conn:
            rows = conn.execute(
                "UPDATE sessions SET state = 'revoked', revoke_time = ?"
                " WHERE tenant_id = ? AND project_id = ? AND user_subject = ?"
                " AND state = 'active' RETURNING session_id",
                (c.to_us(at), tenant_id, project_id, user_subject),
            ).fetchall()
            ids = sorted(str(r[0]) for r in rows)
            _record_changes(conn, "session", ids)
            return len(ids)

    def delete_expired(self, now: datetime, *, tenant_id: str | None = None) -> int:
        now_us = c.to_us(now)
        where = (
            "(state = 'revoked' OR absolute_expire_time <= ?"
            " OR last_seen_at + idle_timeout_seconds * 1000000 <= ?)"
        )
        params: list[Any] = [now_us, now_us]
        if tenant_id is not None:
            where += " AND tenant_id = ?"
            params.append(tenant_id)
        with self._db.write() as conn:
            return conn.execute(f"DELETE FROM sessions WHERE {where}", params).rowcount


class SqliteChangeFeed:
    """:class:`~zumik_secrets.storage.ports.ChangeFeed` on SQLite (poll only)."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    def latest_seq(self) -> int:
        # max() over the INTEGER PRIMARY KEY is one b-tree descent.
        row = self._db.one("SELECT coalesce(max(seq), 0) FROM changes")
        return 0 if row is None else int(row[0])

    def since(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        rows = self._db.all(
            "SELECT seq, kind, entity_id, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [ChangeRecord(r[0], r[1], r[2], c.from_us(r[3])) for r in rows]

    def prune_before(self, cutoff: datetime) -> int:
        with self._db.write() as conn:
            return conn.execute("DELETE FROM changes WHERE at < ?", (c.to_us(cutoff),)).rowcount

    def listen(self, callback: Callable[[], None]) -> None:
        """SQLite cannot push: always None (poll :meth:`latest_seq`)."""
        return None


def _split_statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit on its own)."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf)
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise RuntimeError("migration ends with an incomplete statement")
    return statements


class SqliteStore:
    """The whole store on one SQLite file.

    Args:
        path: Database file; its parent directory must exist.
        busy_timeout_ms: How long a writer waits for the write lock before Unavailable.
    """

    backend = BACKEND

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        _private_file(str(path))
        self._db = _Db(str(path), busy_timeout_ms)
        self._db.init_file()
        self.tenants = SqliteTenantSettingsStore(self._db)
        self.signing_keys = SqliteSigningKeyStore(self._db)
        self.api_keys = SqliteApiKeyStore(self._db)
        self.sessions = SqliteSessionStore(self._db)
        self.changes = SqliteChangeFeed(self._db)
        self.audit = SqliteAuditStore(self._db)
        # Imported here: the sealing adapters build on this module's helpers.
        from zumik_secrets.storage.sqlite import sealing

        self.data_keys = sealing.SqliteDataKeyStore(self._db)
        self.sealed_secrets = sealing.SqliteSealedSecretStore(self._db)
        self.customer_keys = sealing.SqliteCustomerKeyStore(self._db)
        from zumik_secrets.storage.sqlite import fingerprints

        self.fingerprint_schedule = fingerprints.SqliteFingerprintScheduleStore(self._db)
        self.handles = fingerprints.SqliteHandleStore(self._db)
        from zumik_secrets.storage.sqlite import grants

        self.grants = grants.SqliteGrantStore(self._db)
        from zumik_secrets.storage.sqlite import purge

        self.purges = purge.SqlitePurgeStore(self._db)

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    def migrate(self) -> list[int]:
        """Apply pending migrations, all in one ``BEGIN IMMEDIATE`` transaction.

        The write lock serialises concurrent callers; the second one finds nothing to do.

        Returns:
            The versions applied by this call.

        Raises:
            Unavailable: The file is locked past busy_timeout or unreadable.
        """
        migrations = c.load_migrations("zumik_secrets.storage.sqlite")
        applied_now: list[int] = []
        with self._db.write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at INTEGER NOT NULL) STRICT"
            )
            done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
            for m in migrations:
                if m.version in done:
                    continue
                for stmt in _split_statements(m.sql):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, c.to_us(c.now())),
                )
                applied_now.append(m.version)
        return applied_now

    def migration_status(self) -> list[MigrationInfo]:
        """Every migration this release knows, applied or pending, read without changing
        anything (``migrate --status`` and ``--dry-run``).

        Raises:
            Unavailable: The file cannot be read.
        """
        migrations = c.load_migrations("zumik_secrets.storage.sqlite")
        exists = self._db.one(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        )
        applied: dict[int, datetime] = {}
        if exists:
            for version, at in self._db.all("SELECT version, applied_at FROM schema_migrations"):
                applied[int(version)] = c.from_us(at)
        return c.migration_status(migrations, applied)

    def check_ready(self) -> None:
        """Read the schema version (a round trip through the pool).

        Raises:
            Unavailable: The database cannot be read.
        """
        self._db.one("SELECT 1 FROM sqlite_master LIMIT 1")

    def close(self) -> None:
        """Close pooled connections; later calls raise Unavailable."""
        self._db.close()
