"""PostgreSQL's representations and SQL fragments, and psycopg errors mapped to domain errors.

Times are ``timestamptz`` (aware datetimes, read back in UTC); JSON is ``jsonb``; lists of text
are ``text[]``; durations are intervals (``make_interval(secs => ...)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.types.json import Jsonb

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.breaker import CircuitBreaker
from zumik_secrets.storage.sql.dialect import Dialect

BACKEND = "postgresql"


class PgDialect(Dialect):
    """:class:`~zumik_secrets.storage.sql.dialect.Dialect` of PostgreSQL."""

    name = BACKEND
    for_update = " FOR UPDATE"
    skip_locked = True
    arrays = True
    fragments: ClassVar[Mapping[str, str]] = {
        "interval": "make_interval(secs => {})",
        "least": "least({}, {})",
        "greatest": "greatest({}, {})",
        # No conflict target: every uniqueness rule (primary key and unique indexes) is covered.
        "insert_ignore": "INSERT {} ON CONFLICT DO NOTHING",
    }

    def time_in(self, dt: datetime) -> datetime:
        return c.require_aware(dt)

    def time_out(self, value: Any) -> datetime:
        return c.utc(value)

    def json_in(self, value: Any) -> Jsonb:
        return Jsonb(value)

    def json_out(self, value: Any) -> Any:
        return value

    def texts_in(self, values: Sequence[str]) -> list[str]:
        return list(values)

    def texts_out(self, value: Any) -> tuple[str, ...]:
        return tuple(value)


POSTGRES = PgDialect()


@contextmanager
def map_db_errors(breaker: CircuitBreaker | None = None) -> Iterator[None]:
    """Translate psycopg errors into domain errors at the adapter boundary.

    With ``breaker``: a connection failure counts against it, a success closes it.

    Raises:
        AlreadyExists: A unique constraint failed.
        Unavailable: Cannot connect, the pool timed out or is closed, the server went away,
            or the transaction must be retried (serialization failure, deadlock).
        InvalidArgument: ``VALUE_OUT_OF_RANGE``: a value the column cannot hold.
    """
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise c.already_exists() from exc
    except (psycopg.errors.NumericValueOutOfRange, psycopg.DataError, OverflowError) as exc:
        # A value the column cannot hold (an integer >= 2^63): bad input, never INTERNAL.
        raise c.out_of_range() from exc
    except (psycopg.OperationalError, psycopg_pool.PoolClosed) as exc:
        # OperationalError covers PoolTimeout, connection failures, admin shutdown, query
        # cancellation and transaction-rollback errors: all "try again later".
        if breaker is not None and is_outage(exc):
            breaker.failure()
        raise c.unavailable(BACKEND) from exc
    if breaker is not None:
        breaker.success()


@contextmanager
def fail_unavailable() -> Iterator[None]:
    """Any psycopg error inside is Unavailable (for writes that must fail closed, retry later).

    Raises:
        Unavailable: on every psycopg error (refused privilege, lock timeout, lost server...).
    """
    try:
        yield
    except psycopg.Error as exc:
        raise c.unavailable(BACKEND) from exc


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (not a busy row or a timeout)."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return True
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return False  # the database answered: our statement or lock timeout fired
    # A serialization failure or deadlock (TransactionRollback): the database is up.
    return not isinstance(exc, psycopg.errors.TransactionRollback)
