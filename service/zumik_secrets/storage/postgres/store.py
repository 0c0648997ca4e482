"""The PostgreSQL store: its composition root (aggregates over :class:`PgKernel`), migrations
and readiness.

The aggregates live in ``storage/aggregates/`` (one module each, shared with SQLite); the
kernel (pool, transactions, advisory locks, breaker, LISTEN/NOTIFY) in
``storage/postgres/kernel.py`` and ``listener.py``.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

import psycopg

from zumik_secrets.core import deadlines
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.breaker import CircuitBreaker
from zumik_secrets.storage.postgres.dialect import BACKEND
from zumik_secrets.storage.postgres.kernel import MIGRATION_LOCK, PgKernel
from zumik_secrets.storage.records import MigrationInfo
from zumik_secrets.storage.sql.store import SqlAggregates

PROBE_TIMEOUT_S = 1.0
"""How long the readiness probe waits for the database."""


class PgStore(SqlAggregates):
    """The whole store on PostgreSQL.

    Args:
        conninfo: A ``postgresql://`` URL or libpq key=value string.
        min_size: Connections the pool keeps open.
        max_size: Pool ceiling (size it to the server's worker threads).
        connect_timeout: Seconds to establish one connection.
        pool_timeout: Seconds a caller waits for a pooled connection before Unavailable.
    """

    backend = BACKEND

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 16,
        connect_timeout: int = 3,
        pool_timeout: float = 3.0,
    ) -> None:
        self._db = PgKernel(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
        )
        super().__init__(self._db)

    def migrate(self) -> list[int]:
        """Apply pending migrations in one transaction under an advisory lock.

        Several replicas starting together queue on the lock; the later ones find nothing to do.

        Returns:
            The versions applied by this call.

        Raises:
            Unavailable: The database cannot be reached.
        """
        migrations = c.load_migrations("zumik_secrets.storage.postgres")
        applied_now: list[int] = []
        with self._db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer NOT NULL PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
            for m in migrations:
                if m.version in done:
                    continue
                conn.execute(m.sql.encode())  # no parameters: may hold several statements
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )
                applied_now.append(m.version)
        return applied_now

    @property
    def breaker(self) -> CircuitBreaker:
        """The database's circuit breaker."""
        return self._db.breaker

    def migration_status(self) -> list[MigrationInfo]:
        """Every migration this release knows, applied or pending, read without changing
        anything (``migrate --status`` and ``--dry-run``).

        Raises:
            Unavailable: The database cannot be reached.
        """
        migrations = c.load_migrations("zumik_secrets.storage.postgres")
        exists = self._db.one("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied: dict[int, datetime] = {}
        if exists and exists[0]:
            for version, at in self._db.all("SELECT version, applied_at FROM schema_migrations"):
                applied[int(version)] = c.utc(at)
        return c.migration_status(migrations, applied)

    def check_ready(self) -> None:
        """``SELECT 1`` through the pool; while the breaker is open, over a new connection.

        A new connection answers as soon as PostgreSQL accepts connections again, whatever the
        pool's reconnect schedule; on success the pool drops its broken idle connections
        (``check``) and the breaker closes, so calls succeed from then on.

        Raises:
            Unavailable: The database does not answer (within about a second).
        """
        if self._db.breaker.state == "closed":
            with deadlines.bounded(PROBE_TIMEOUT_S):
                self._db.one("SELECT 1")
            return
        try:
            with psycopg.connect(
                self._db.conninfo,
                connect_timeout=max(1, int(PROBE_TIMEOUT_S)),
                **self._db.connect_kwargs,
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise c.unavailable(BACKEND) from exc
        with contextlib.suppress(psycopg.Error):
            # A connection the check could not replace is replaced by the pool later.
            self._db.pool.check()
        self._db.breaker.reset()

    def pool_stats(self) -> dict[str, int]:
        """psycopg_pool's counters (cumulative; read by the metrics when scraped)."""
        return dict(self._db.pool.get_stats())

    def close(self) -> None:
        """Close the pool. Idempotent; later calls raise Unavailable."""
        self._db.pool.close()
