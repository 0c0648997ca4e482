"""SQLite's representations and SQL fragments, and its driver errors mapped to domain errors.

Times are INTEGER microseconds since the Unix epoch (UTC); JSON and lists of text are JSON
text; durations are microseconds (``seconds * 1000000``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.sql.dialect import Dialect

BACKEND = "sqlite"


class SqliteDialect(Dialect):
    """:class:`~zumik_secrets.storage.sql.dialect.Dialect` of SQLite."""

    name = BACKEND
    # BEGIN IMMEDIATE already excludes every other writer for the whole transaction.
    for_update = ""
    skip_locked = False
    arrays = False
    fragments: ClassVar[Mapping[str, str]] = {
        "interval": "({}) * 1000000",  # microseconds
        "least": "min({}, {})",  # the scalar min/max of two or more arguments
        "greatest": "max({}, {})",
        "insert_ignore": "INSERT OR IGNORE {}",
    }

    def time_in(self, dt: datetime) -> int:
        return c.to_us(dt)

    def time_out(self, value: Any) -> datetime:
        return c.from_us(int(value))

    def json_in(self, value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    def json_out(self, value: Any) -> Any:
        return json.loads(value)

    def texts_in(self, values: Sequence[str]) -> str:
        return json.dumps(list(values), separators=(",", ":"))

    def texts_out(self, value: Any) -> tuple[str, ...]:
        return tuple(str(s) for s in json.loads(value))


SQLITE = SqliteDialect()


def domain_error(exc: sqlite3.Error) -> Exception | None:
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


def reraise(exc: sqlite3.Error) -> Exception:
    """What to raise for ``exc``: its domain error, or a copy of it (never ``exc`` itself).

    ``raise exc from exc`` would make an error its own cause; the copy keeps the message and
    type and chains to the original.
    """
    mapped = domain_error(exc)
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
        mapped = domain_error(exc)
        if mapped is None:
            raise
        raise mapped from exc
    except OverflowError as exc:
        # An integer SQLite cannot hold (>= 2^63) reached a query: bad input, never INTERNAL.
        raise c.out_of_range() from exc
