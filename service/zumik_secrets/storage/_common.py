"""Helpers shared by the adapters: time conversion, migration files, error construction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources

from zumik_secrets.core import errors
from zumik_secrets.storage.records import MigrationInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIGRATION_PHASE = re.compile(r"^--\s*phase:\s*(expand|contract)\s*$", re.MULTILINE)


def require_aware(dt: datetime) -> datetime:
    """Return ``dt`` in UTC.

    Raises:
        ValueError: ``dt`` is naive (a programming error: every stored time must be absolute).
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("storage needs timezone-aware datetimes")
    return dt.astimezone(UTC)


def opt_aware(dt: datetime | None) -> datetime | None:
    """:func:`require_aware` that lets None through."""
    return None if dt is None else require_aware(dt)


def to_us(dt: datetime) -> int:
    """Integer microseconds since the Unix epoch (the SQLite representation of a time).

    Raises:
        ValueError: ``dt`` is naive.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("storage needs timezone-aware datetimes")
    delta = dt - EPOCH  # aware datetimes subtract in UTC whatever their zone
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def opt_to_us(dt: datetime | None) -> int | None:
    """:func:`to_us` that lets None through."""
    return None if dt is None else to_us(dt)


def from_us(value: int) -> datetime:
    """Inverse of :func:`to_us`; returns an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=value)


def opt_from_us(value: int | None) -> datetime | None:
    """:func:`from_us` that lets None through."""
    return None if value is None else from_us(value)


def opt_seconds(value: int | None) -> timedelta | None:
    """Whole seconds stored in a column as a timedelta (None stays None)."""
    return None if value is None else timedelta(seconds=int(value))


def opt_to_seconds(value: timedelta | None) -> int | None:
    """A timedelta as whole seconds for a column (None stays None)."""
    return None if value is None else int(value.total_seconds())


def utc(dt: datetime) -> datetime:
    """Normalise an aware datetime read from the database to UTC."""
    return dt.astimezone(UTC)


def opt_utc(dt: datetime | None) -> datetime | None:
    """:func:`utc` that lets None through."""
    return None if dt is None else dt.astimezone(UTC)


def now() -> datetime:
    """The current time, aware, UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned migration file."""

    version: int
    name: str
    sql: str

    @property
    def phase(self) -> str:
        """``contract`` if the file declares ``-- phase: contract``, else ``expand``."""
        match = _MIGRATION_PHASE.search(self.sql)
        return match.group(1) if match else "expand"


def migration_status(
    migrations: list[Migration], applied: dict[int, datetime]
) -> list[MigrationInfo]:
    """Every known migration with its applied time (None: pending), ascending by version.

    A version applied in the database but unknown to this code (a newer release migrated it)
    is listed too, with name ``(unknown to this release)`` and no SQL.
    """
    known = {m.version for m in migrations}
    out = [
        MigrationInfo(m.version, m.name, m.phase, m.sql, applied.get(m.version)) for m in migrations
    ]
    out += [
        MigrationInfo(v, "(unknown to this release)", "expand", "", at)
        for v, at in applied.items()
        if v not in known
    ]
    return sorted(out, key=lambda m: m.version)


def load_migrations(package: str) -> list[Migration]:
    """Read ``<package>/migrations/NNNN_name.sql`` (package data), ascending by version.

    Raises:
        RuntimeError: Two files share a version (a packaging bug).
    """
    found: dict[int, Migration] = {}
    for entry in resources.files(package).joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"duplicate migration version {version} in {package}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def unavailable(backend: str) -> errors.Unavailable:
    """The error every adapter raises when its database cannot be reached or does not answer."""
    return errors.Unavailable(
        "storage is unavailable, retry later",
        reason=STORAGE_UNAVAILABLE,
        metadata={"backend": backend},
    )


def already_exists() -> errors.AlreadyExists:
    """The error for a unique-key collision. Names no value: ids may be probes."""
    return errors.AlreadyExists("a record with this identifier already exists")


def out_of_range() -> errors.InvalidArgument:
    """The error for a value the database cannot hold (an integer of 2^63 or more). Names no
    value: it came from the caller."""
    return errors.InvalidArgument(
        "a value in the request is out of range", reason="VALUE_OUT_OF_RANGE"
    )


def returned_int(row: tuple[object, ...] | None) -> int:
    """The integer in the first column of a ``RETURNING`` or aggregate row.

    Raises:
        RuntimeError: No row came back (the statement cannot do that unless the driver is broken).
    """
    if row is None or not isinstance(row[0], int):
        raise RuntimeError("statement returned no row")
    return row[0]
