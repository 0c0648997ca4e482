"""SQLite implementation of the storage ports.

Concurrency model: a small lock-protected pool of connections (``check_same_thread=False``), one
borrowed per call, so many server threads read in parallel (WAL readers never block) while writes
serialise in ``BEGIN IMMEDIATE`` transactions that wait up to ``busy_timeout`` for the write lock.
``synchronous=FULL`` makes every acknowledged commit survive power loss or ``kill -9``.

Representation: times are INTEGER microseconds since the Unix epoch (UTC); scopes are JSON text.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.aggregates.audit import SqlAuditStore
from zumik_secrets.storage.aggregates.purge import SqlPurgeStore
from zumik_secrets.storage.aggregates.sealing import (
    SqlCustomerKeyStore,
    SqlDataKeyStore,
    SqlSealedSecretStore,
)
from zumik_secrets.storage.aggregates.tenant_settings import SqlTenantSettingsStore
from zumik_secrets.storage.records import (
    ApiKeyRecord,
    ChangeRecord,
    MigrationInfo,
    SessionRecord,
    SigningKeyRecord,
)
from zumik_secrets.storage.sqlite.dialect import BACKEND
from zumik_secrets.storage.sqlite.kernel import SqliteKernel, private_file

Row = tuple[Any, ...]


def _scopes_out(scopes: tuple[str, ...]) -> str:
    return json.dumps(list(scopes), separators=(",", ":"))


def _scopes_in(text: str) -> tuple[str, ...]:
    return tuple(str(s) for s in json.loads(text))


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
        created_at=c.from_us(row[6]),
        retire_after=c.opt_from_us(row[7]),
    )


class SqliteSigningKeyStore:
    """:class:`~zumik_secrets.storage.ports.SigningKeyStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def add(self, rec: SigningKeyRecord) -> None:
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO signing_keys ({_SK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.kid,
                    rec.purpose,
                    rec.public_key,
                    rec.wrapped_private_key,
                    rec.keyring_version,
                    rec.state,
                    c.to_us(rec.created_at),
                    c.opt_to_us(rec.retire_after),
                ),
            )

    def list(self, purpose: str) -> list[SigningKeyRecord]:
        rows = self._db.all(
            f"SELECT {_SK_COLS} FROM signing_keys WHERE purpose = ? ORDER BY created_at, kid",
            (purpose,),
        )
        return [_sk(r) for r in rows]

    def set_state(
        self, kid: str, state: str, retire_after: datetime | None
    ) -> SigningKeyRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                f"UPDATE signing_keys SET state = ?, retire_after = ? WHERE kid = ?"
                f" RETURNING {_SK_COLS}",
                (state, c.opt_to_us(retire_after), kid),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(conn, "signing_key", [kid])
            return _sk(row)

    def replace_wrapped(
        self, kid: str, old_wrapped: bytes, new_wrapped: bytes, keyring_version: int
    ) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE signing_keys SET wrapped_private_key = ?, keyring_version = ?"
                " WHERE kid = ? AND wrapped_private_key = ?",
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
        scopes=_scopes_in(row[8]),
        state=row[9],
        created_at=c.from_us(row[10]),
        expire_time=c.opt_from_us(row[11]),
        revoke_time=c.opt_from_us(row[12]),
        last_used_at=c.opt_from_us(row[13]),
        rotated_from=row[14],
        seq=row[15],
    )


class SqliteApiKeyStore:
    """:class:`~zumik_secrets.storage.ports.ApiKeyStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    @staticmethod
    def _insert(conn: sqlite3.Connection, rec: ApiKeyRecord) -> ApiKeyRecord:
        row = conn.execute(
            "INSERT INTO api_keys (key_id, tenant_id, project_id, display_name, env,"
            " masked_prefix, salt, secret_hash, scopes, state, created_at, expire_time,"
            " revoke_time, last_used_at, rotated_from)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (
                rec.key_id,
                rec.tenant_id,
                rec.project_id,
                rec.display_name,
                rec.env,
                rec.masked_prefix,
                rec.salt,
                rec.secret_hash,
                _scopes_out(rec.scopes),
                rec.state,
                c.to_us(rec.created_at),
                c.opt_to_us(rec.expire_time),
                c.opt_to_us(rec.revoke_time),
                c.opt_to_us(rec.last_used_at),
                rec.rotated_from,
            ),
        ).fetchone()
        return dataclasses.replace(rec, seq=c.returned_int(row))

    @staticmethod
    def _get(
        conn: sqlite3.Connection, tenant_id: str, project_id: str, key_id: str
    ) -> ApiKeyRecord | None:
        row = conn.execute(
            f"SELECT {_AK_COLS} FROM api_keys"
            " WHERE key_id = ? AND tenant_id = ? AND project_id = ?",
            (key_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _ak(row)

    def insert(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        with self._db.write() as conn:
            return self._insert(conn, rec)

    def get_by_id(self, key_id: str) -> ApiKeyRecord | None:
        row = self._db.one(f"SELECT {_AK_COLS} FROM api_keys WHERE key_id = ?", (key_id,))
        return None if row is None else _ak(row)

    def get(self, tenant_id: str, project_id: str, key_id: str) -> ApiKeyRecord | None:
        with self._db.read() as conn:
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
            f"SELECT {_AK_COLS} FROM api_keys WHERE tenant_id = ? AND project_id = ?"
            f" AND seq > ?{state_filter} ORDER BY seq LIMIT ?",
            (tenant_id, project_id, after_seq or 0, page_size),
        )
        return [_ak(r) for r in rows]

    def revoke(
        self, tenant_id: str, project_id: str, key_id: str, at: datetime
    ) -> ApiKeyRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET state = 'revoked', revoke_time = ?"
                " WHERE key_id = ? AND tenant_id = ? AND project_id = ? AND state = 'active'"
                f" RETURNING {_AK_COLS}",
                (c.to_us(at), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return self._get(conn, tenant_id, project_id, key_id)
            self._db.record_changes(conn, "api_key", [key_id])
            return _ak(row)

    def set_expiry(
        self, tenant_id: str, project_id: str, key_id: str, expire_time: datetime | None
    ) -> ApiKeyRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET expire_time = ?"
                " WHERE key_id = ? AND tenant_id = ? AND project_id = ?"
                f" RETURNING {_AK_COLS}",
                (c.opt_to_us(expire_time), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(conn, "api_key", [key_id])
            return _ak(row)

    def insert_rotation(
        self, new_rec: ApiKeyRecord, old_key_id: str, old_expire_time: datetime
    ) -> ApiKeyRecord:
        rotated_at = c.to_us(new_rec.created_at)
        old_expire = c.to_us(old_expire_time)
        with self._db.write() as conn:
            old = self._get(conn, new_rec.tenant_id, new_rec.project_id, old_key_id)
            if old is None:
                raise errors.NotFound("API key not found", reason="API_KEY_NOT_FOUND")
            if old.state != "active":
                raise errors.FailedPrecondition(
                    "API key is revoked and cannot be rotated", reason="API_KEY_REVOKED"
                )
            if old_expire <= rotated_at:
                conn.execute(
                    "UPDATE api_keys SET state = 'revoked', revoke_time = ? WHERE key_id = ?",
                    (rotated_at, old_key_id),
                )
            else:
                # A rotation shortens the old key's life, never extends it.
                conn.execute(
                    "UPDATE api_keys SET expire_time = min(coalesce(expire_time, ?), ?)"
                    " WHERE key_id = ?",
                    (old_expire, old_expire, old_key_id),
                )
            inserted = self._insert(conn, dataclasses.replace(new_rec, rotated_from=old_key_id))
            self._db.record_changes(conn, "api_key", [old_key_id])
            return inserted

    def record_last_used(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        params = [(c.to_us(at), key_id, c.to_us(at)) for key_id, at in updates.items()]
        with self._db.write() as conn:
            conn.executemany(
                "UPDATE api_keys SET last_used_at = ?"
                " WHERE key_id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                params,
            )

    def delete_revoked_before(self, cutoff: datetime) -> int:
        cut = c.to_us(cutoff)
        with self._db.write() as conn:
            cur = conn.execute(
                "DELETE FROM api_keys WHERE (state = 'revoked' AND revoke_time < ?)"
                " OR (expire_time IS NOT NULL AND expire_time < ?)",
                (cut, cut),
            )
            return cur.rowcount

    def delete_dead_keys(
        self, now: datetime, default_retention: timedelta, *, tenant_id: str | None = None
    ) -> int:
        # The cutoff is per row: now minus its tenant's retention (or the default).
        cutoff = (
            "(? - coalesce((SELECT ts.revoked_key_retention_s FROM tenant_settings ts"
            " WHERE ts.tenant_id = api_keys.tenant_id), ?) * 1000000)"
        )
        where = (
            f"((state = 'revoked' AND revoke_time < {cutoff})"
            f" OR (expire_time IS NOT NULL AND expire_time < {cutoff}))"
        )
        now_us, default_s = c.to_us(now), int(default_retention.total_seconds())
        params: list[Any] = [now_us, default_s, now_us, default_s]
        if tenant_id is not None:
            where += " AND tenant_id = ?"
            params.append(tenant_id)
        with self._db.write() as conn:
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
        scopes=_scopes_in(row[5]),
        state=row[6],
        created_at=c.from_us(row[7]),
        last_seen_at=c.from_us(row[8]),
        idle_timeout_seconds=row[9],
        absolute_expire_time=c.from_us(row[10]),
        revoke_time=c.opt_from_us(row[11]),
        seq=row[12],
    )


class SqliteSessionStore:
    """:class:`~zumik_secrets.storage.ports.SessionStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    @staticmethod
    def _get(
        conn: sqlite3.Connection, tenant_id: str, project_id: str, session_id: str
    ) -> SessionRecord | None:
        row = conn.execute(
            f"SELECT {_SE_COLS} FROM sessions"
            " WHERE session_id = ? AND tenant_id = ? AND project_id = ?",
            (session_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _se(row)

    def insert(self, rec: SessionRecord) -> SessionRecord:
        with self._db.write() as conn:
            row = conn.execute(
                "INSERT INTO sessions (session_id, token_hash, tenant_id, project_id,"
                " user_subject, scopes, state, created_at, last_seen_at, idle_timeout_seconds,"
                " absolute_expire_time, revoke_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                (
                    rec.session_id,
                    rec.token_hash,
                    rec.tenant_id,
                    rec.project_id,
                    rec.user_subject,
                    _scopes_out(rec.scopes),
                    rec.state,
                    c.to_us(rec.created_at),
                    c.to_us(rec.last_seen_at),
                    rec.idle_timeout_seconds,
                    c.to_us(rec.absolute_expire_time),
                    c.opt_to_us(rec.revoke_time),
                ),
            ).fetchone()
            return dataclasses.replace(rec, seq=c.returned_int(row))

    def get_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        row = self._db.one(f"SELECT {_SE_COLS} FROM sessions WHERE token_hash = ?", (token_hash,))
        return None if row is None else _se(row)

    def get_by_id(self, session_id: str) -> SessionRecord | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_SE_COLS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return None if row is None else _se(row)

    def get(self, tenant_id: str, project_id: str, session_id: str) -> SessionRecord | None:
        with self._db.read() as conn:
            return self._get(conn, tenant_id, project_id, session_id)

    def touch(self, session_id: str, last_seen_at: datetime) -> None:
        self.touch_many({session_id: last_seen_at})

    def touch_many(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        params = [(c.to_us(at), sid, c.to_us(at)) for sid, at in updates.items()]
        with self._db.write() as conn:
            conn.executemany(
                "UPDATE sessions SET last_seen_at = ? WHERE session_id = ? AND last_seen_at < ?",
                params,
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
        at_us = c.to_us(at)
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE sessions SET token_hash = ?, scopes = ?,"
                " last_seen_at = max(last_seen_at, ?)"
                " WHERE session_id = ? AND tenant_id = ? AND project_id = ? AND state = 'active'"
                f" RETURNING {_SE_COLS}",
                (new_token_hash, _scopes_out(scopes), at_us, session_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return None
            self._db.record_changes(conn, "session", [session_id])
            return _se(row)

    def revoke(
        self, tenant_id: str, project_id: str, session_id: str, at: datetime
    ) -> SessionRecord | None:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE sessions SET state = 'revoked', revoke_time = ?"
                " WHERE session_id = ? AND tenant_id = ? AND project_id = ? AND state = 'active'"
                f" RETURNING {_SE_COLS}",
                (c.to_us(at), session_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return self._get(conn, tenant_id, project_id, session_id)
            self._db.record_changes(conn, "session", [session_id])
            return _se(row)

    def revoke_user(self, tenant_id: str, project_id: str, user_subject: str, at: datetime) -> int:
        with self._db.write() as conn:
            rows = conn.execute(
                "UPDATE sessions SET state = 'revoked', revoke_time = ?"
                " WHERE tenant_id = ? AND project_id = ? AND user_subject = ?"
                " AND state = 'active' RETURNING session_id",
                (c.to_us(at), tenant_id, project_id, user_subject),
            ).fetchall()
            ids = sorted(str(r[0]) for r in rows)
            self._db.record_changes(conn, "session", ids)
            return len(ids)

    def delete_expired(self, now: datetime, *, tenant_id: str | None = None) -> int:
        now_us = c.to_us(now)
        where = (
            "(state = 'revoked' OR absolute_expire_time <= ?"
            " OR last_seen_at + idle_timeout_seconds * 1000000 <= ?)"
        )
        params: list[Any] = [now_us, now_us]
        if tenant_id is not None:
            where += " AND tenant_id = ?"
            params.append(tenant_id)
        with self._db.write() as conn:
            return conn.execute(f"DELETE FROM sessions WHERE {where}", params).rowcount


class SqliteChangeFeed:
    """:class:`~zumik_secrets.storage.ports.ChangeFeed` on SQLite (poll only)."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def latest_seq(self) -> int:
        # max() over the INTEGER PRIMARY KEY is one b-tree descent.
        row = self._db.one("SELECT coalesce(max(seq), 0) FROM changes")
        return 0 if row is None else int(row[0])

    def since(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        rows = self._db.all(
            "SELECT seq, kind, entity_id, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [ChangeRecord(r[0], r[1], r[2], c.from_us(r[3])) for r in rows]

    def prune_before(self, cutoff: datetime) -> int:
        with self._db.write() as conn:
            return conn.execute("DELETE FROM changes WHERE at < ?", (c.to_us(cutoff),)).rowcount

    def listen(self, callback: Callable[[], None]) -> None:
        """SQLite cannot push: always None (poll :meth:`latest_seq`)."""
        return None


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


class SqliteStore:
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
        self.tenants = SqlTenantSettingsStore(self._db)
        self.signing_keys = SqliteSigningKeyStore(self._db)
        self.api_keys = SqliteApiKeyStore(self._db)
        self.sessions = SqliteSessionStore(self._db)
        self.changes = SqliteChangeFeed(self._db)
        self.audit = SqlAuditStore(self._db)
        self.data_keys = SqlDataKeyStore(self._db)
        self.sealed_secrets = SqlSealedSecretStore(self._db)
        self.customer_keys = SqlCustomerKeyStore(self._db)
        from zumik_secrets.storage.sqlite import fingerprints

        self.fingerprint_schedule = fingerprints.SqliteFingerprintScheduleStore(self._db)
        self.handles = fingerprints.SqliteHandleStore(self._db)
        from zumik_secrets.storage.sqlite import grants

        self.grants = grants.SqliteGrantStore(self._db)
        self.purges = SqlPurgeStore(self._db)

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
        with self._db.write() as conn:
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
                    conn.execute(stmt)
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
