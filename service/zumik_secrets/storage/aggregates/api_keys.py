"""API keys (:class:`~zumik_secrets.storage.ports.ApiKeyStore`)."""

# Column lists and WHERE fragments are module constants, never input: the f-strings cannot
# inject.
# ruff: noqa: S608

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.aggregates import fence
from zumik_secrets.storage.aggregates.sessions import (
    bound_subject_sessions,
    revoke_subject_sessions,
)
from zumik_secrets.storage.records import ApiKeyRecord
from zumik_secrets.storage.sql.dialect import Dialect
from zumik_secrets.storage.sql.kernel import Connection, Kernel, Row

_COLS = (
    "key_id, tenant_id, project_id, display_name, env, masked_prefix, salt, secret_hash, scopes,"
    " state, created_at, expire_time, revoke_time, last_used_at, rotated_from, seq"
)

# Last-used times arrive in batches (one flush per interval). PostgreSQL updates a batch in one
# statement over arrays, ids sorted so concurrent batches lock rows in the same order and cannot
# deadlock; SQLite has no arrays and runs the one-row statement per key in its one transaction.
_LAST_USED_ONE = (
    "UPDATE api_keys SET last_used_at = %s"
    " WHERE key_id = %s AND (last_used_at IS NULL OR last_used_at < %s)"
)
_LAST_USED_BATCH = (
    "UPDATE api_keys AS k SET last_used_at = u.at"
    " FROM unnest(%s::text[], %s::timestamptz[]) AS u(key_id, at)"
    " WHERE k.key_id = u.key_id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)"
)


def _api_key(d: Dialect, row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        tenant_id=row[1],
        project_id=row[2],
        display_name=row[3],
        env=row[4],
        masked_prefix=row[5],
        salt=bytes(row[6]),
        secret_hash=bytes(row[7]),
        scopes=d.texts_out(row[8]),
        state=row[9],
        created_at=d.time_out(row[10]),
        expire_time=d.opt_time_out(row[11]),
        revoke_time=d.opt_time_out(row[12]),
        last_used_at=d.opt_time_out(row[13]),
        rotated_from=row[14],
        seq=row[15],
    )


class SqlApiKeyStore:
    """:class:`~zumik_secrets.storage.ports.ApiKeyStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def _insert(self, conn: Connection, rec: ApiKeyRecord) -> ApiKeyRecord:
        d = self._d
        fence.check(self._db, conn, rec.tenant_id, rec.project_id)
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
                d.texts_in(rec.scopes),
                rec.state,
                d.time_in(rec.created_at),
                d.opt_time_in(rec.expire_time),
                d.opt_time_in(rec.revoke_time),
                d.opt_time_in(rec.last_used_at),
                rec.rotated_from,
            ),
        ).fetchone()
        return dataclasses.replace(rec, seq=c.returned_int(row))

    def _get(
        self, conn: Connection, tenant_id: str, project_id: str, key_id: str, *, lock: bool = False
    ) -> ApiKeyRecord | None:
        row = conn.execute(
            f"SELECT {_COLS} FROM api_keys"
            " WHERE key_id = %s AND tenant_id = %s AND project_id = %s"
            + (self._d.for_update if lock else ""),
            (key_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _api_key(self._d, row)

    def insert(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        with self._db.transaction() as conn:
            return self._insert(conn, rec)

    def _end_sessions(
        self, conn: Connection, key: ApiKeyRecord, at: datetime, until: datetime | None
    ) -> list[str]:
        """A machine session never outlives the key it belongs to (its subject is the key's
        id: an API key's claim opens sessions only for itself): with the key revoked (``until``
        at or before ``at``) its project's active sessions of that subject are revoked; with
        its life shortened to ``until`` (a rotation's grace, a new expiry) their absolute
        expiry is brought down to the key's. Returns the sessions changed (the caller records
        their ``session`` changes last in the transaction)."""
        if until is not None and until <= at:
            return revoke_subject_sessions(
                conn, self._d, key.tenant_id, key.project_id, key.key_id, at
            )
        ends = [t for t in (until, key.expire_time) if t is not None]
        if not ends:
            return []
        return bound_subject_sessions(
            conn, self._d, key.tenant_id, key.project_id, key.key_id, min(ends)
        )

    def get_by_id(self, key_id: str) -> ApiKeyRecord | None:
        row = self._db.one(f"SELECT {_COLS} FROM api_keys WHERE key_id = %s", (key_id,))
        return None if row is None else _api_key(self._d, row)

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
            f"SELECT {_COLS} FROM api_keys WHERE tenant_id = %s AND project_id = %s"
            f" AND seq > %s{state_filter} ORDER BY seq LIMIT %s",
            (tenant_id, project_id, after_seq or 0, page_size),
        )
        return [_api_key(self._d, r) for r in rows]

    def revoke(
        self, tenant_id: str, project_id: str, key_id: str, at: datetime
    ) -> ApiKeyRecord | None:
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE api_keys SET state = 'revoked', revoke_time = %s"
                " WHERE key_id = %s AND tenant_id = %s AND project_id = %s AND state = 'active'"
                f" RETURNING {_COLS}",
                (self._d.time_in(at), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                rec = self._get(conn, tenant_id, project_id, key_id)
                if rec is not None:
                    # Revoking again sweeps again: a session the key's claim opened while the
                    # first revocation was on its way to the replica that served it.
                    self._db.record_changes(conn, "session", self._end_sessions(conn, rec, at, at))
                return rec
            rec = _api_key(self._d, row)
            ended = self._end_sessions(conn, rec, at, at)
            self._db.record_changes(conn, "api_key", [key_id])
            self._db.record_changes(conn, "session", ended)
            return rec

    def set_expiry(
        self, tenant_id: str, project_id: str, key_id: str, expire_time: datetime | None
    ) -> ApiKeyRecord | None:
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE api_keys SET expire_time = %s"
                " WHERE key_id = %s AND tenant_id = %s AND project_id = %s"
                f" RETURNING {_COLS}",
                (self._d.opt_time_in(expire_time), key_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return None
            rec = _api_key(self._d, row)
            ended = [] if expire_time is None else self._end_sessions(conn, rec, c.now(), None)
            self._db.record_changes(conn, "api_key", [key_id])
            self._db.record_changes(conn, "session", ended)
            return rec

    def insert_rotation(
        self, new_rec: ApiKeyRecord, old_key_id: str, old_expire_time: datetime
    ) -> ApiKeyRecord:
        d = self._d
        rotated_at = d.time_in(new_rec.created_at)
        old_expire = d.time_in(old_expire_time)
        with self._db.transaction() as conn:
            # The fence's shared lock before the row lock (the order of every create).
            fence.check(self._db, conn, new_rec.tenant_id, new_rec.project_id)
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
                shorter = d.least("coalesce(expire_time, %s)", "%s")
                conn.execute(
                    f"UPDATE api_keys SET expire_time = {shorter} WHERE key_id = %s",
                    (old_expire, old_expire, old_key_id),
                )
            inserted = self._insert(conn, dataclasses.replace(new_rec, rotated_from=old_key_id))
            ended = self._end_sessions(conn, old, new_rec.created_at, old_expire_time)
            self._db.record_changes(conn, "api_key", [old_key_id])
            self._db.record_changes(conn, "session", ended)
            return inserted

    def record_last_used(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        d = self._d
        ids = sorted(updates)
        times = [d.time_in(updates[k]) for k in ids]
        with self._db.change() as conn:
            if d.arrays:
                conn.execute(_LAST_USED_BATCH, (ids, times))
            else:
                conn.executemany(
                    _LAST_USED_ONE, [(t, k, t) for k, t in zip(ids, times, strict=True)]
                )

    def delete_revoked_before(self, cutoff: datetime) -> int:
        cut = self._d.time_in(cutoff)
        with self._db.change() as conn:
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
        retention = (
            "coalesce((SELECT ts.revoked_key_retention_s FROM tenant_settings ts"
            " WHERE ts.tenant_id = api_keys.tenant_id), %(default)s)"
        )
        cutoff = f"(%(now)s - {self._d.interval(retention)})"
        where = (
            f"((state = 'revoked' AND revoke_time < {cutoff})"
            f" OR (expire_time IS NOT NULL AND expire_time < {cutoff}))"
        )
        params: dict[str, Any] = {
            "now": self._d.time_in(now),
            "default": int(default_retention.total_seconds()),
        }
        if tenant_id is not None:
            where += " AND tenant_id = %(tenant)s"
            params["tenant"] = tenant_id
        with self._db.change() as conn:
            return conn.execute(f"DELETE FROM api_keys WHERE {where}", params).rowcount
