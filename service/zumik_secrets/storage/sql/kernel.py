"""The protocol both backend kernels implement, which aggregate modules are written against.

A kernel owns what is really its backend's own: connections, transactions, locks, group commit,
the change feed's append, the staged audit outbox (storage/outbox.py) and the translation of
driver errors into domain errors. An aggregate module (``storage/aggregates/*.py``) holds one
:class:`Kernel`, writes its queries once (``%s`` placeholders) and converts values through
``kernel.dialect``; it never imports a driver or a backend package.

Which helper to use:

- :meth:`Kernel.one` / :meth:`Kernel.all`: a single read statement.
- :meth:`Kernel.read`: several reads on one connection (no transaction).
- :meth:`Kernel.change`: one data-changing statement (SQLite: a ``BEGIN IMMEDIATE``
  transaction; PostgreSQL: autocommit, one round trip).
- :meth:`Kernel.transaction`: several statements that commit together. Call
  :meth:`Kernel.record_changes` in it (last) when the change must reach other replicas'
  caches, and :meth:`Kernel.lock_key` first when a read-then-write must not interleave.
- :meth:`Kernel.write_hot`: one hot ``INSERT ... RETURNING`` (Seal): group commit on
  SQLite, one statement with its staged audit events on PostgreSQL.

In each, audit events staged with :func:`zumik_secrets.storage.outbox.staged` are written in
the same transaction when it changed a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from zumik_secrets.storage.ports import ChangeListener
from zumik_secrets.storage.sql.dialect import Dialect

Row = tuple[Any, ...]
Params = Sequence[Any] | Mapping[str, Any]
T = TypeVar("T")


class Cursor(Protocol):
    """What a statement returns (sqlite3 and psycopg cursors both are one)."""

    @property
    def rowcount(self) -> int:
        """Rows changed by the statement."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        ...


class Connection(Protocol):
    """A connection lent by a kernel; takes ``%s`` / ``%(name)s`` placeholders on both."""

    def execute(self, sql: str, params: Any = (), /) -> Cursor:
        """Run one statement."""
        ...

    def executemany(self, sql: str, params: Iterable[Any], /) -> object:
        """Run one statement for each parameter set."""
        ...


class Kernel(Protocol):
    """A backend's connection kernel (``SqliteKernel``, ``PgKernel``)."""

    @property
    def dialect(self) -> Dialect:
        """The backend's representations and SQL fragments."""
        ...

    def one(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of one read statement, or None.

        Raises:
            Unavailable: The database cannot be reached in time.
        """
        ...

    def all(self, sql: str, params: Params = ()) -> list[Row]:
        """Every row of one read statement.

        Raises:
            Unavailable: The database cannot be reached in time.
        """
        ...

    def read(self) -> AbstractContextManager[Connection]:
        """A connection for reads (no transaction is promised)."""
        ...

    def change(self) -> AbstractContextManager[Connection]:
        """A connection for one data-changing statement (atomic on its own)."""
        ...

    def transaction(self) -> AbstractContextManager[Connection]:
        """A connection in a write transaction: commits on success, rolls back on error.

        Raises:
            Unavailable: No connection or lock within the caller's deadline.
            AlreadyExists: A uniqueness rule failed.
        """
        ...

    def write_hot(
        self, sql: str, params: Sequence[Any], *, shared_lock: str | None = None
    ) -> Row | None:
        """Run one hot ``INSERT ... RETURNING`` and return its row (see the module doc).

        ``shared_lock``: take :meth:`lock_key` (``shared=True``) on this key first, in the same
        transaction, and start ``sql`` only once it is held (its snapshot then sees every
        transaction that held the key exclusively before).
        """
        ...

    def record_changes(self, conn: Connection, kind: str, entity_ids: Sequence[str]) -> None:
        """Append to the change feed in ``conn``'s transaction (call it last in it)."""
        ...

    def lock_key(self, conn: Connection, key: str, *, shared: bool = False) -> None:
        """Serialise transactions that name the same ``key`` until ``conn``'s commits.

        ``shared``: holders of the shared lock do not exclude one another, only a holder of the
        exclusive one (and it waits for them). Take it as its own statement before the
        statements it must order: under READ COMMITTED a statement's snapshot is taken when it
        starts, so a statement that began before the lock was held may miss what the exclusive
        holder committed.
        """
        ...

    def listen(self, callback: Callable[[], None]) -> ChangeListener | None:
        """Call ``callback`` soon after any change commits, on any replica (see
        :meth:`~zumik_secrets.storage.ports.ChangeFeed.listen`); None: cannot push, poll."""
        ...

    def fail_closed(self) -> AbstractContextManager[None]:
        """Around :meth:`transaction`: every database error inside is Unavailable, whatever it
        is (the audit trail fails closed: retry later, never INTERNAL).

        Raises:
            Unavailable: On any driver error raised inside.
        """
        ...
