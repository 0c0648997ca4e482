"""PostgreSQL implementation of the storage ports (psycopg 3, psycopg_pool).

Connections are autocommit (a pooled connection left in an implicit transaction cost 45% of a PK
select here); multi-statement writes use explicit ``conn.transaction()``. Connect and pool
timeouts are a few seconds so a down database fails fast with Unavailable instead of hanging a
server thread.

Change feed: every transaction that records a change first takes a transaction-scoped advisory
lock, so ``changes.seq`` order equals commit order (a poller never skips a late-committing lower
seq), then ``pg_notify('zumik_changes', <seq>)`` so listeners on other replicas wake within
milliseconds of the commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg_pool
import psycopg_pool.base

from zumik_secrets.core import deadlines, errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.aggregates.audit import SqlAuditStore
from zumik_secrets.storage.aggregates.purge import SqlPurgeStore
from zumik_secrets.storage.aggregates.sealing import (
    SqlCustomerKeyStore,
    SqlDataKeyStore,
    SqlSealedSecretStore,
)
from zumik_secrets.storage.aggregates.tenant_settings import SqlTenantSettingsStore
from zumik_secrets.storage.breaker import CircuitBreaker
from zumik_secrets.storage.observe import PgCursor
from zumik_secrets.storage.postgres.dialect import BACKEND
from zumik_secrets.storage.postgres.kernel import MIGRATION_LOCK, Conn, PgConnection, PgKernel, Row
from zumik_secrets.storage.postgres.listener import PgChangeListener
from zumik_secrets.storage.records import (
    ApiKeyRecord,
    ChangeRecord,
    MigrationInfo,
    SessionRecord,
    SigningKeyRecord,
)

PROBE_TIMEOUT_S = 1.0
"""How long the readiness probe waits for the database."""

_log = logging.getLogger(__name__)


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
        created_at=c.utc(row[6]),
        retire_after=c.opt_utc(row[7]),
    )


class PgSigningKeyStore:
    """:class:`~zumik_secrets.storage.ports.SigningKeyStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def add(self, rec: SigningKeyRecord) -> None:
        with self._db.conn() as conn:
            conn.execute(
                f"INSERT INTO signing_keys ({_SK_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    rec.kid,
                    rec.purpose,
                    rec.public_key,
                    rec.wrapped_private_key,
                    rec.keyring_version,
                    rec.state,
                    c.require_aware(rec.created_at),
                    c.opt_aware(rec.retire_after),
                ),
            )

    def list(self, purpose: str) -> list[SigningKeyRecord]:
        rows = self._db.all(
            f"SELECT {_SK_COLS} FROM signing_keys WHERE purpose = %s ORDER BY created_at, kid",
            (purpose,),
        )
        return [_sk(r) for r in rows]

    def set_state(
        self, kid: str, state: str, retire_after: datetime | None
    ) -> SigningKeyRecord | None:
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE signing_keys SET state = %s, retire_after = %s WHERE kid = %s"
                f" RETURNING {_SK_COLS}",
                (state, c.opt_aware(retire_after), kid),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(conn, "signing_key", [kid])
            return _sk(row)

    def replace_wrapped(
        self, kid: str, old_wrapped: bytes, new_wrapped: bytes, keyring_version: int
    ) -> bool:
        with self._db.conn() as conn:
            cur = conn.execute(
                "UPDATE signing_keys SET wrapped_private_key = %s, keyring_version = %s"
                " WHERE kid = %s AND wrapped_private_key = %s",
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
        scopes=tuple(row[8]),
        state=row[9],
        created_at=c.utc(row[10]),
        expire_time=c.opt_utc(row[11]),
        revoke_time=c.opt_utc(row[12]),
        last_used_at=c.opt_utc(row[13]),
        rotated_from=row[14],
        seq=row[15],
    )


class PgApiKeyStore:
    """:class:`~zumik_secrets.storage.ports.ApiKeyStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    @staticmethod
    def _insert(conn: Conn, rec: ApiKeyRecord) -> ApiKeyRecord:
        row = conn.execute(
            "INSERT INTO api_keys (key_id, tenant_id, project_id, display_name, env,"
            " masked_prefix, salt, secret_hash, scopes, state, created_at, expire_time,"
            " revoke_time, last_used_at, rotated_from)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq",
            (
                rec.key_id,
                rec.tenant_id,
                rec.project_id,
                rec.display_name,
                rec.env,
                rec.masked_prefix,
                rec.salt,
                rec.secret_hash,
                list(rec.scopes),
                rec.state,
                c.require_aware(rec.created_at),
                c.opt_aware(rec.expire_time),
                c.opt_aware(rec.revoke_time),
                c.opt_aware(rec.last_used_at),
                rec.rotated_from,
            ),
        ).fetchone()
        return dataclasses.replace(rec, seq=c.returned_int(row))

    @staticmethod
    def _get(
        conn: Conn, tenant_id: str, project_id: str, key_id: str, *, lock: bool = False
    ) -> ApiKeyRecord | None:
        row = conn.execute(
            f"SELECT {_AK_COLS} FROM api_keys"
            " WHERE key_id = %s AND tenant_id = %s AND project_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (key_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _ak(row)

    def insert(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        with self._db.conn() as conn:
            return self._insert(conn, rec)

    def get_by_id(self, key_id: str) -> ApiKeyRecord | None:
        row = self._db.one(f"SELECT {_AK_COLS} FROM api_keys WHERE key_id = %s", (key_id,))
        return None if row is None else _ak(row)

    def get(self, tenant_id: str, project_id: str, key_id: str) -> ApiKeyRecord | None:
        with self._db.conn() as conn:
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
            f"SELECT {_AK_COLS} FROM api_keys WHERE tenant_id = %s AND project_id = %s"
            f" AND seq > %s{state_filter} ORDER BY seq LIMIT %s",
            (tenant_id, project_id, after_seq or 0, page_size),
        )
        return [_ak(r) for r in rows]

    def revoke(
        self, tenant_id: str, project_id: str, key_id: str, at: datetime
    ) -> ApiKeyRecord | None:
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE api_keys SET state = 'revoked', revoke_time = %s"
                " WHERE key_id = %s AND tenant_id = %s AND project_id = %s AND state = 'active'"
                f" RETURNING {_AK_COLS}",
                (c.require_aware(at), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return self._get(conn, tenant_id, project_id, key_id)
            self._db.record_changes(conn, "api_key", [key_id])
            return _ak(row)

    def set_expiry(
        self, tenant_id: str, project_id: str, key_id: str, expire_time: datetime | None
    ) -> ApiKeyRecord | None:
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE api_keys SET expire_time = %s"
                " WHERE key_id = %s AND tenant_id = %s AND project_id = %s"
                f" RETURNING {_AK_COLS}",
                (c.opt_aware(expire_time), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(conn, "api_key", [key_id])
            return _ak(row)

    def insert_rotation(
        self, new_rec: ApiKeyRecord, old_key_id: str, old_expire_time: datetime
    ) -> ApiKeyRecord:
        rotated_at = c.require_aware(new_rec.created_at)
        old_expire = c.require_aware(old_expire_time)
        with self._db.tx() as conn:
            old = self._get(conn, new_rec.tenant_id, new_rec.project_id, old_key_id, lock=True)
            if old is None:
                raise errors.NotFound("API key not found", reason="API_KEY_NOT_FOUND")
            if old.state != "active":
                raise errors.FailedPrecondition(
                    "API key is revoked and cannot be rotated", reason="API_KEY_REVOKED"
                )
            if old_expire <= rotated_at:
                conn.execute(
                    "UPDATE api_keys SET state = 'revoked', revoke_time = %s WHERE key_id = %s",
                    (rotated_at, old_key_id),
                )
            else:
                # A rotation shortens the old key's life, never extends it.
                conn.execute(
                    "UPDATE api_keys SET expire_time = least(coalesce(expire_time, %s), %s)"
                    " WHERE key_id = %s",
                    (old_expire, old_expire, old_key_id),
                )
            inserted = self._insert(conn, dataclasses.replace(new_rec, rotated_from=old_key_id))
            self._db.record_changes(conn, "api_key", [old_key_id])
            return inserted

    def record_last_used(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        # Sorted ids: concurrent batches lock rows in the same order, so they cannot deadlock.
        ids = sorted(updates)
        times = [c.require_aware(updates[k]) for k in ids]
        with self._db.conn() as conn:
            conn.execute(
                "UPDATE api_keys AS k SET last_used_at = u.at"
                " FROM unnest(%s::text[], %s::timestamptz[]) AS u(key_id, at)"
                " WHERE k.key_id = u.key_id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
                (ids, times),
            )

    def delete_revoked_before(self, cutoff: datetime) -> int:
        cut = c.require_aware(cutoff)
        with self._db.conn() as conn:
            cur = conn.execute(
                "DELETE FROM api_keys WHERE (state = 'revoked' AND revoke_time < %s)"
                " OR (expire_time IS NOT NULL AND expire_time < %s)",
                (cut, cut),
            )
            return cur.rowcount

    def delete_dead_keys(
        self, now: datetime, default_retention: timedelta, *, tenant_id: str | None = None
    ) -> int:
        # The cutoff is per row: now minus its tenant's retention (or the default).
        cutoff = (
            "(%(now)s - make_interval(secs => coalesce((SELECT ts.revoked_key_retention_s"
            " FROM tenant_settings ts WHERE ts.tenant_id = api_keys.tenant_id), %(default)s)))"
        )
        where = (
            f"((state = 'revoked' AND revoke_time < {cutoff})"
            f" OR (expire_time IS NOT NULL AND expire_time < {cutoff}))"
        )
        params: dict[str, Any] = {
            "now": c.require_aware(now),
            "default": int(default_retention.total_seconds()),
        }
        if tenant_id is not None:
            where += " AND tenant_id = %(tenant)s"
            params["tenant"] = tenant_id
        with self._db.conn() as conn:
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
        scopes=tuple(row[5]),
        state=row[6],
        created_at=c.utc(row[7]),
        last_seen_at=c.utc(row[8]),
        idle_timeout_seconds=row[9],
        absolute_expire_time=c.utc(row[10]),
        revoke_time=c.opt_utc(row[11]),
        seq=row[12],
    )


class PgSessionStore:
    """:class:`~zumik_secrets.storage.ports.SessionStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    @staticmethod
    def _get(conn: Conn, tenant_id: str, project_id: str, session_id: str) -> SessionRecord | None:
        row = conn.execute(
            f"SELECT {_SE_COLS} FROM sessions"
            " WHERE session_id = %s AND tenant_id = %s AND project_id = %s",
            (session_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _se(row)

    def insert(self, rec: SessionRecord) -> SessionRecord:
        with self._db.conn() as conn:
            row = conn.execute(
                "INSERT INTO sessions (session_id, token_hash, tenant_id, project_id,"
                " user_subject, scopes, state, created_at, last_seen_at, idle_timeout_seconds,"
                " absolute_expire_time, revoke_time)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq",
                (
                    rec.session_id,
                    rec.token_hash,
                    rec.tenant_id,
                    rec.project_id,
                    rec.user_subject,
                    list(rec.scopes),
                    rec.state,
                    c.require_aware(rec.created_at),
                    c.require_aware(rec.last_seen_at),
                    rec.idle_timeout_seconds,
                    c.require_aware(rec.absolute_expire_time),
                    c.opt_aware(rec.revoke_time),
                ),
            ).fetchone()
            return dataclasses.replace(rec, seq=c.returned_int(row))

    def get_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        row = self._db.one(f"SELECT {_SE_COLS} FROM sessions WHERE token_hash = %s", (token_hash,))
        return None if row is None else _se(row)

    def get_by_id(self, session_id: str) -> SessionRecord | None:
        with self._db.conn() as conn:
            row = conn.execute(
                f"SELECT {_SE_COLS} FROM sessions WHERE session_id = %s", (session_id,)
            ).fetchone()
        return None if row is None else _se(row)

    def get(self, tenant_id: str, project_id: str, session_id: str) -> SessionRecord | None:
        with self._db.conn() as conn:
            return self._get(conn, tenant_id, project_id, session_id)

    def touch(self, session_id: str, last_seen_at: datetime) -> None:
        with self._db.conn() as conn:
            conn.execute(
                "UPDATE sessions SET last_seen_at = %s WHERE session_id = %s AND last_seen_at < %s",
                (c.require_aware(last_seen_at), session_id, c.require_aware(last_seen_at)),
            )

    def touch_many(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        ids = sorted(updates)  # same lock order across concurrent batches
        times = [c.require_aware(updates[k]) for k in ids]
        with self._db.conn() as conn:
            conn.execute(
                "UPDATE sessions AS s SET last_seen_at = u.at"
                " FROM unnest(%s::text[], %s::timestamptz[]) AS u(session_id, at)"
                " WHERE s.session_id = u.session_id AND s.last_seen_at < u.at",
                (ids, times),
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
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE sessions SET token_hash = %s, scopes = %s,"
                " last_seen_at = greatest(last_seen_at, %s)"
                " WHERE session_id = %s AND tenant_id = %s AND project_id = %s"
                " AND state = 'active'"
                f" RETURNING {_SE_COLS}",
                (
                    new_token_hash,
                    list(scopes),
                    c.require_aware(at),
                    session_id,
                    tenant_id,
                    project_id,
                ),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(conn, "session", [session_id])
            return _se(row)

    def revoke(
        self, tenant_id: str, project_id: str, session_id: str, at: datetime
    ) -> SessionRecord | None:
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE sessions SET state = 'revoked', revoke_time = %s"
                " WHERE session_id = %s AND tenant_id = %s AND project_id = %s"
                " AND state = 'active'"
                f" RETURNING {_SE_COLS}",
                (c.require_aware(at), session_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return self._get(conn, tenant_id, project_id, session_id)
            self._db.record_changes(conn, "session", [session_id])
            return _se(row)

    def revoke_user(self, tenant_id: str, project_id: str, user_subject: str, at: datetime) -> int:
        with self._db.tx() as conn:
            rows = conn.execute(
                "UPDATE sessions SET state = 'revoked', revoke_time = %s"
                " WHERE tenant_id = %s AND project_id = %s AND user_subject = %s"
                " AND state = 'active' RETURNING session_id",
                (c.require_aware(at), tenant_id, project_id, user_subject),
            ).fetchall()
            ids = sorted(str(r[0]) for r in rows)
            self._db.record_changes(conn, "session", ids)
            return len(ids)

    def delete_expired(self, now: datetime, *, tenant_id: str | None = None) -> int:
        when = c.require_aware(now)
        where = (
            "(state = 'revoked' OR absolute_expire_time <= %s"
            " OR last_seen_at + make_interval(secs => idle_timeout_seconds) <= %s)"
        )
        params: list[Any] = [when, when]
        if tenant_id is not None:
            where += " AND tenant_id = %s"
            params.append(tenant_id)
        with self._db.conn() as conn:
            return conn.execute(f"DELETE FROM sessions WHERE {where}", params).rowcount


class PgChangeFeed:
    """:class:`~zumik_secrets.storage.ports.ChangeFeed` on PostgreSQL, with LISTEN/NOTIFY."""

    def __init__(
        self, db: PgKernel, conninfo: str, connect_kwargs: Mapping[str, Any], connect_timeout: float
    ) -> None:
        self._db = db
        self._conninfo = conninfo
        self._kwargs = connect_kwargs
        self._connect_timeout = connect_timeout

    def latest_seq(self) -> int:
        row = self._db.one("SELECT coalesce(max(seq), 0) FROM changes")
        return 0 if row is None else int(row[0])

    def since(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        rows = self._db.all(
            "SELECT seq, kind, entity_id, at FROM changes WHERE seq > %s ORDER BY seq LIMIT %s",
            (seq, limit),
        )
        return [ChangeRecord(int(r[0]), r[1], r[2], c.utc(r[3])) for r in rows]

    def prune_before(self, cutoff: datetime) -> int:
        with self._db.conn() as conn:
            return conn.execute(
                "DELETE FROM changes WHERE at < %s", (c.require_aware(cutoff),)
            ).rowcount

    def listen(self, callback: Callable[[], None]) -> PgChangeListener:
        """Start a listener; waits (up to the connect timeout) for its first connection attempt.

        If the database is down the listener keeps retrying in the background and fires the
        callback once it connects; callers should poll :meth:`latest_seq` meanwhile.
        """
        listener = PgChangeListener(self._conninfo, self._kwargs, callback)
        listener.first_attempt_done.wait(self._connect_timeout + 1)
        if not listener.ready.is_set():
            _log.warning("change listener not connected yet; it keeps retrying")
        return listener


class PgStore:
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
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
        # PgCursor: statement spans while tracing (storage/observe.py).
        kwargs: dict[str, Any] = {"autocommit": True, "cursor_factory": PgCursor}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = connect_timeout
        if "application_name" not in params:
            kwargs["application_name"] = "zumik-secrets"
        self._conninfo = conninfo
        pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            conninfo,
            connection_class=PgConnection,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=pool_timeout,
            open=False,
            name="zumik-secrets",
            # Never give up reconnecting (an outage longer than this would otherwise leave the
            # pool shrunk until demand regrows it).
            reconnect_timeout=24 * 3600.0,
        )
        # Do not wait: a store whose database is down still opens, and calls fail with
        # Unavailable until it comes back (health reports NOT_SERVING meanwhile).
        pool.open(wait=False)
        self._db = PgKernel(pool, pool_timeout)
        self._connect_kwargs = {k: v for k, v in kwargs.items() if k != "connect_timeout"}
        listen_kwargs = {k: v for k, v in kwargs.items() if k != "autocommit"}
        self.tenants = SqlTenantSettingsStore(self._db)
        self.signing_keys = PgSigningKeyStore(self._db)
        self.api_keys = PgApiKeyStore(self._db)
        self.sessions = PgSessionStore(self._db)
        self.changes = PgChangeFeed(self._db, conninfo, listen_kwargs, float(connect_timeout))
        self.audit = SqlAuditStore(self._db)
        self.data_keys = SqlDataKeyStore(self._db)
        self.sealed_secrets = SqlSealedSecretStore(self._db)
        self.customer_keys = SqlCustomerKeyStore(self._db)
        from zumik_secrets.storage.postgres import fingerprints

        self.fingerprint_schedule = fingerprints.PgFingerprintScheduleStore(self._db)
        self.handles = fingerprints.PgHandleStore(self._db)
        from zumik_secrets.storage.postgres import grants

        self.grants = grants.PgGrantStore(self._db)
        self.purges = SqlPurgeStore(self._db)

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
        with self._db.tx() as conn:
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
                self._conninfo, connect_timeout=max(1, int(PROBE_TIMEOUT_S)), **self._connect_kwargs
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
