"""A hook around every SQL statement, for the server's tracing (storage imports no tracer).

Both adapters run their statements through :class:`SqliteConnection` (the ``factory`` of
``sqlite3.connect``) or :class:`PgCursor` (psycopg's ``cursor_factory``). Each calls the
installed observer with the backend and the statement text (never its parameters); the
observer returns a context manager that surrounds the statement (a span), or None. With no
observer installed (tracing off) a statement pays one global read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import psycopg

__all__ = ["PgCursor", "SqliteConnection", "StatementObserver", "set_statement_observer"]

StatementObserver = Callable[[str, str], AbstractContextManager[Any] | None]

_OBSERVER: list[StatementObserver | None] = [None]


def set_statement_observer(observer: StatementObserver | None) -> None:
    """Install (or with None remove) the process-wide statement observer."""
    _OBSERVER[0] = observer


class SqliteConnection(sqlite3.Connection):
    """``sqlite3.Connection`` whose ``execute``/``executemany`` pass through the observer."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """See :meth:`sqlite3.Connection.execute`."""
        observer = _OBSERVER[0]
        scope = observer("sqlite", sql) if observer is not None else None
        if scope is None:
            return super().execute(sql, parameters)
        with scope:
            return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        """See :meth:`sqlite3.Connection.executemany`."""
        observer = _OBSERVER[0]
        scope = observer("sqlite", sql) if observer is not None else None
        if scope is None:
            return super().executemany(sql, parameters)
        with scope:
            return super().executemany(sql, parameters)


class PgCursor(psycopg.Cursor[Any]):
    """psycopg cursor whose ``execute``/``executemany`` pass through the observer."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        """See :meth:`psycopg.Cursor.execute`."""
        observer = _OBSERVER[0]
        scope = observer("postgresql", query) if observer is not None else None
        if scope is None:
            return super().execute(query, params, **kwargs)
        with scope:
            return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        """See :meth:`psycopg.Cursor.executemany`."""
        observer = _OBSERVER[0]
        scope = observer("postgresql", query) if observer is not None else None
        if scope is None:
            super().executemany(query, params_seq, **kwargs)
            return
        with scope:
            super().executemany(query, params_seq, **kwargs)
