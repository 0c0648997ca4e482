"""The dialects: one query text for both backends, conversions and fragments in one table each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from zumik_secrets.storage.postgres.dialect import POSTGRES
from zumik_secrets.storage.sql.dialect import Dialect, to_qmark
from zumik_secrets.storage.sqlite.dialect import SQLITE


@pytest.mark.parametrize(
    ("psycopg", "qmark"),
    [
        ("SELECT 1", "SELECT 1"),
        ("a = %s AND b = %s", "a = ? AND b = ?"),
        ("t < %(now)s - %(default)s", "t < :now - :default"),
        ("x LIKE 'a%%'", "x LIKE 'a%'"),
        ("strftime('%%s', t) = %s", "strftime('%s', t) = ?"),
    ],
)
def test_placeholders_are_written_once_and_converted_for_sqlite(psycopg: str, qmark: str) -> None:
    assert to_qmark(psycopg) == qmark
    assert to_qmark(psycopg) == qmark  # cached


@pytest.mark.parametrize("d", [SQLITE, POSTGRES], ids=lambda d: d.name)
def test_times_round_trip_in_utc_and_naive_times_are_refused(d: Dialect) -> None:
    at = datetime(2026, 12, 3, 23, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    back = d.time_out(d.time_in(at))
    assert back == at and back.tzinfo == UTC
    assert d.opt_time_in(None) is None and d.opt_time_out(None) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        d.time_in(datetime(2026, 1, 1))


@pytest.mark.parametrize("d", [SQLITE, POSTGRES], ids=lambda d: d.name)
def test_lists_and_json_round_trip(d: Dialect) -> None:
    assert d.texts_out(d.texts_in(("a", "b"))) == ("a", "b")
    stored = d.json_in({"b": "2", "a": "1"})
    # SQLite stores text (keys sorted, compact); PostgreSQL a jsonb that psycopg decodes.
    back = d.json_out(stored if d is SQLITE else stored.obj)
    assert back == {"a": "1", "b": "2"}
    if d is SQLITE:
        assert stored == '{"a":"1","b":"2"}'


def test_fragments_differ_where_the_backends_do() -> None:
    assert SQLITE.least("a", "b") == "min(a, b)"
    assert POSTGRES.least("a", "b") == "least(a, b)"
    assert SQLITE.greatest("a", "%s") == "max(a, %s)"
    assert POSTGRES.greatest("a", "%s") == "greatest(a, %s)"
    assert SQLITE.interval("d") == "(d) * 1000000"
    assert POSTGRES.interval("d") == "make_interval(secs => d)"
    assert SQLITE.insert_ignore("INTO t VALUES (1)") == "INSERT OR IGNORE INTO t VALUES (1)"
    assert POSTGRES.insert_ignore("INTO t VALUES (1)") == (
        "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING"
    )
    assert (SQLITE.for_update, POSTGRES.for_update) == ("", " FOR UPDATE")
    assert SQLITE.pick(sqlite=1, postgresql=2) == 1
    assert POSTGRES.pick(sqlite=1, postgresql=2) == 2
