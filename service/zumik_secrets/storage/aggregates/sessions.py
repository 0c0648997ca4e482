"""Console sessions (:class:`~zumik_secrets.storage.ports.SessionStore`)."""

# The column list and WHERE fragments are module constants, never input: the f-strings cannot
# inject.
# ruff: noqa: S608

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from zumik_secrets.core import errors
from zumik_secrets.storage import _common as c
from zumik_secrets.storage.aggregates import fence
from zumik_secrets.storage.records import SessionRecord
from zumik_secrets.storage.sql.dialect import Dialect
from zumik_secrets.storage.sql.kernel import Connection, Kernel, Row

_COLS = (
    "session_id, token_hash, tenant_id, project_id, user_subject, scopes, state, created_at,"
    " last_seen_at, idle_timeout_seconds, absolute_expire_time, revoke_time, seq"
)

# Touches arrive in batches: as for API keys' last use (aggregates/api_keys.py), PostgreSQL
# updates a batch in one statement over arrays (ids sorted: one lock order), SQLite runs the
# one-row statement per session in its one transaction.
_TOUCH_ONE = "UPDATE sessions SET last_seen_at = %s WHERE session_id = %s AND last_seen_at < %s"
_TOUCH_BATCH = (
    "UPDATE sessions AS s SET last_seen_at = u.at"
    " FROM unnest(%s::text[], %s::timestamptz[]) AS u(session_id, at)"
    " WHERE s.session_id = u.session_id AND s.last_seen_at < u.at"
)


def _session(d: Dialect, row: Row) -> SessionRecord:
    return SessionRecord(
        session_id=row[0],
        token_hash=bytes(row[1]),
        tenant_id=row[2],
        project_id=row[3],
        user_subject=row[4],
        scopes=d.texts_out(row[5]),
        state=row[6],
        created_at=d.time_out(row[7]),
        last_seen_at=d.time_out(row[8]),
        idle_timeout_seconds=row[9],
        absolute_expire_time=d.time_out(row[10]),
        revoke_time=d.opt_time_out(row[11]),
        seq=row[12],
    )


def revoke_subject_sessions(
    conn: Connection, d: Dialect, tenant_id: str, project_id: str, subject: str, at: datetime
) -> list[str]:
    """Revoke the active sessions of ``subject`` in a project inside the caller's transaction;
    returns their ids, sorted (the caller records the ``session`` changes last in it).

    Also used by the API-key store: a session whose subject is an API key's id (a machine's,
    opened with the key's claim) is revoked with the key.
    """
    rows = conn.execute(
        "UPDATE sessions SET state = 'revoked', revoke_time = %s"
        " WHERE tenant_id = %s AND project_id = %s AND user_subject = %s"
        " AND state = 'active' RETURNING session_id",
        (d.time_in(at), tenant_id, project_id, subject),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def bound_subject_sessions(
    conn: Connection,
    d: Dialect,
    tenant_id: str,
    project_id: str,
    subject: str,
    until: datetime,
) -> list[str]:
    """Bring the absolute expiry of ``subject``'s active sessions in a project down to
    ``until`` (never later) inside the caller's transaction; returns the ids changed, sorted.

    Used by the API-key store when a key's life is shortened (a rotation's grace): its
    machine sessions die with it.
    """
    when = d.time_in(until)
    rows = conn.execute(
        "UPDATE sessions SET absolute_expire_time = %s"
        " WHERE tenant_id = %s AND project_id = %s AND user_subject = %s"
        " AND state = 'active' AND absolute_expire_time > %s RETURNING session_id",
        (when, tenant_id, project_id, subject, when),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


class SqlSessionStore:
    """:class:`~zumik_secrets.storage.ports.SessionStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def _get(
        self, conn: Connection, tenant_id: str, project_id: str, session_id: str
    ) -> SessionRecord | None:
        row = conn.execute(
            f"SELECT {_COLS} FROM sessions"
            " WHERE session_id = %s AND tenant_id = %s AND project_id = %s",
            (session_id, tenant_id, project_id),
        ).fetchone()
        return None if row is None else _session(self._d, row)

    def insert(self, rec: SessionRecord) -> SessionRecord:
        d = self._d
        with self._db.transaction() as conn:
            fence.check(self._db, conn, rec.tenant_id, rec.project_id)
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
                    d.texts_in(rec.scopes),
                    rec.state,
                    d.time_in(rec.created_at),
                    d.time_in(rec.last_seen_at),
                    rec.idle_timeout_seconds,
                    d.time_in(rec.absolute_expire_time),
                    d.opt_time_in(rec.revoke_time),
                ),
            ).fetchone()
            return dataclasses.replace(rec, seq=c.returned_int(row))

    def get_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        row = self._db.one(f"SELECT {_COLS} FROM sessions WHERE token_hash = %s", (token_hash,))
        return None if row is None else _session(self._d, row)

    def get_by_id(self, session_id: str) -> SessionRecord | None:
        row = self._db.one(f"SELECT {_COLS} FROM sessions WHERE session_id = %s", (session_id,))
        return None if row is None else _session(self._d, row)

    def get(self, tenant_id: str, project_id: str, session_id: str) -> SessionRecord | None:
        with self._db.read() as conn:
            return self._get(conn, tenant_id, project_id, session_id)

    def touch(self, session_id: str, last_seen_at: datetime) -> None:
        at = self._d.time_in(last_seen_at)
        with self._db.change() as conn:
            conn.execute(_TOUCH_ONE, (at, session_id, at))

    def touch_many(self, updates: Mapping[str, datetime]) -> None:
        if not updates:
            return
        d = self._d
        ids = sorted(updates)
        times = [d.time_in(updates[k]) for k in ids]
        with self._db.change() as conn:
            if d.arrays:
                conn.execute(_TOUCH_BATCH, (ids, times))
            else:
                conn.executemany(_TOUCH_ONE, [(t, k, t) for k, t in zip(ids, times, strict=True)])

    def replace_token(
        self,
        tenant_id: str,
        project_id: str,
        session_id: str,
        new_token_hash: bytes,
        scopes: tuple[str, ...],
        at: datetime,
        *,
        expected_token_hash: bytes,
    ) -> SessionRecord | None:
        d = self._d
        with self._db.transaction() as conn:
            # Compare and swap: the token the caller read, or nothing. Of concurrent rotations
            # of one session exactly one matches it (the others see the winner's token).
            row = conn.execute(
                "UPDATE sessions SET token_hash = %s, scopes = %s,"
                f" last_seen_at = {d.greatest('last_seen_at', '%s')}"
                " WHERE session_id = %s AND tenant_id = %s AND project_id = %s"
                " AND state = 'active' AND token_hash = %s"
                f" RETURNING {_COLS}",
                (
                    new_token_hash,
                    d.texts_in(scopes),
                    d.time_in(at),
                    session_id,
                    tenant_id,
                    project_id,
                    expected_token_hash,
                ),
            ).fetchone()
            if row is None:
                current = self._get(conn, tenant_id, project_id, session_id)
                if current is None or current.state != "active":
                    return None
                raise errors.FailedPrecondition(
                    "the session was rotated by a concurrent call and cannot be rotated again"
                    " from the token this call read",
                    reason="SESSION_ROTATED",
                )
            self._db.record_changes(conn, "session", [session_id])
            return _session(d, row)

    def revoke(
        self, tenant_id: str, project_id: str, session_id: str, at: datetime
    ) -> SessionRecord | None:
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE sessions SET state = 'revoked', revoke_time = %s"
                " WHERE session_id = %s AND tenant_id = %s AND project_id = %s"
                " AND state = 'active'"
                f" RETURNING {_COLS}",
                (self._d.time_in(at), session_id, tenant_id, project_id),
            ).fetchone()
            if row is None:
                return self._get(conn, tenant_id, project_id, session_id)
            self._db.record_changes(conn, "session", [session_id])
            return _session(self._d, row)

    def revoke_user(self, tenant_id: str, project_id: str, user_subject: str, at: datetime) -> int:
        with self._db.transaction() as conn:
            ids = revoke_subject_sessions(conn, self._d, tenant_id, project_id, user_subject, at)
            self._db.record_changes(conn, "session", ids)
            return len(ids)

    def delete_expired(self, now: datetime, *, tenant_id: str | None = None) -> int:
        when = self._d.time_in(now)
        where = (
            "(state = 'revoked' OR absolute_expire_time <= %s"
            f" OR last_seen_at + {self._d.interval('idle_timeout_seconds')} <= %s)"
        )
        params: list[Any] = [when, when]
        if tenant_id is not None:
            where += " AND tenant_id = %s"
            params.append(tenant_id)
        with self._db.change() as conn:
            return conn.execute(f"DELETE FROM sessions WHERE {where}", params).rowcount
