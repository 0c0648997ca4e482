"""The SQLite store: its composition root (aggregates over :class:`SqliteKernel`), migrations
and readiness.

The aggregates live in ``storage/aggregates/`` (one module each, shared with PostgreSQL); the
kernel (pool, writer lock, group commit) in ``storage/sqlite/kernel.py``. Representation:
times are INTEGER microseconds since the Unix epoch (UTC); JSON and scopes are JSON text
(``storage/sqlite/dialect.py``).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.records import MigrationInfo
from zumik_secrets.storage.sql.store import SqlAggregates
from zumik_secrets.storage.sqlite.dialect import BACKEND
from zumik_secrets.storage.sqlite.kernel import SqliteKernel, execute_verbatim, private_file


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


class SqliteStore(SqlAggregates):
    """The whole store on one SQLite file.

    Args:
        path: Database file; its parent directory must exist.
        busy_timeout_ms: How long a writer waits for the write lock before Unavailable.
    """

    backend = BACKEND

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        private_file(str(path))
        self._db = SqliteKernel(str(path), busy_timeout_ms)
        self._db.init_file()
        super().__init__(self._db)

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
        with self._db.transaction() as conn:
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
                    # Migration files are SQLite's own SQL: no placeholder conversion.
                    execute_verbatim(conn, stmt)
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
