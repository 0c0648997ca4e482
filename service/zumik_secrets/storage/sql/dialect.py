"""How one backend's SQL differs from the other's, in one place (the psycopg-adapter idea).

Aggregate modules (``storage/aggregates/``) write each query once, in psycopg's placeholder
style (``%s`` and ``%(name)s``); the SQLite kernel converts the text on its way to the driver
(:func:`to_qmark`), so no query converts by hand. Values whose representation differs (times,
JSON, lists of text) go through the dialect's ``*_in`` (to the database) and ``*_out`` (from
it) conversions, never through ad-hoc code at a call site; SQL fragments that differ (time
arithmetic, ``least``, row locks, insert-or-ignore) come from the dialect too. A statement that
really differs as a whole is kept as two texts side by side in its aggregate module, chosen
with :meth:`Dialect.pick`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")
_QMARK_CACHE: dict[str, str] = {}
_QMARK_CACHE_MAX = 4096


def _qmark(match: re.Match[str]) -> str:
    name = match.group(1)
    if name is not None:
        return f":{name}"
    return "?" if match.group(0) == "%s" else "%"


def to_qmark(sql: str) -> str:
    """``sql`` in psycopg style (``%s``, ``%(name)s``, ``%%``) rewritten for sqlite3 (``?``,
    ``:name``, ``%``). Cached: a statement is converted once per process."""
    converted = _QMARK_CACHE.get(sql)
    if converted is None:
        converted = _PLACEHOLDER.sub(_qmark, sql) if "%" in sql else sql
        if len(_QMARK_CACHE) >= _QMARK_CACHE_MAX:
            _QMARK_CACHE.clear()  # dynamic WHERE clauses are few; this only bounds memory
        _QMARK_CACHE[sql] = converted
    return converted


class Dialect(abc.ABC):
    """One backend's representations and SQL fragments.

    Subclasses: ``storage/sqlite/dialect.py`` and ``storage/postgres/dialect.py``.
    """

    #: ``"sqlite"`` or ``"postgresql"`` (also the ``backend`` of Unavailable errors).
    name: str
    #: Appended to a ``SELECT`` that must lock its rows until commit (empty where the
    #: transaction already excludes every other writer).
    for_update: str
    #: Whether ``FOR UPDATE SKIP LOCKED`` exists (concurrent lessees take different rows).
    skip_locked: bool
    #: Whether array parameters and ``unnest`` exist (a batch in one statement).
    arrays: bool
    #: SQL fragments that differ, as templates (filled by the methods below).
    fragments: ClassVar[Mapping[str, str]]

    def pick(self, *, sqlite: T, postgresql: T) -> T:
        """The variant for this backend: statements that differ as a whole, side by side."""
        return sqlite if self.name == "sqlite" else postgresql

    # -- times ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def time_in(self, dt: datetime) -> Any:
        """An aware datetime as stored.

        Raises:
            ValueError: ``dt`` is naive (every stored time must be absolute).
        """

    @abc.abstractmethod
    def time_out(self, value: Any) -> datetime:
        """A stored time as an aware UTC datetime."""

    def opt_time_in(self, dt: datetime | None) -> Any:
        """:meth:`time_in` that lets None through."""
        return None if dt is None else self.time_in(dt)

    def opt_time_out(self, value: Any) -> datetime | None:
        """:meth:`time_out` that lets None through."""
        return None if value is None else self.time_out(value)

    def interval(self, seconds_sql: str) -> str:
        """SQL for a duration of ``seconds_sql`` (an SQL expression of whole seconds) that adds
        to and subtracts from a stored time: ``f"at + {d.interval('ttl_s')}"``."""
        return self.fragments["interval"].format(seconds_sql)

    # -- JSON and lists ------------------------------------------------------------------------

    @abc.abstractmethod
    def json_in(self, value: Any) -> Any:
        """A JSON-able value as stored in a JSON column (keys sorted where stored as text)."""

    @abc.abstractmethod
    def json_out(self, value: Any) -> Any:
        """A JSON column's value as Python data."""

    @abc.abstractmethod
    def texts_in(self, values: Sequence[str]) -> Any:
        """A list of strings as stored (a ``text[]`` or a JSON array)."""

    @abc.abstractmethod
    def texts_out(self, value: Any) -> tuple[str, ...]:
        """Inverse of :meth:`texts_in`."""

    # -- SQL fragments -------------------------------------------------------------------------

    def least(self, a: str, b: str) -> str:
        """SQL for the smaller of two expressions (NULL semantics are the backend's own)."""
        return self.fragments["least"].format(a, b)

    def greatest(self, a: str, b: str) -> str:
        """SQL for the larger of two expressions (NULL semantics are the backend's own)."""
        return self.fragments["greatest"].format(a, b)

    def insert_ignore(self, into: str) -> str:
        """``INSERT <into>`` that inserts nothing when the row breaks any uniqueness rule;
        ``into`` is the rest of the statement (``INTO t (...) VALUES (...)``)."""
        return self.fragments["insert_ignore"].format(into)
