"""SQLite adapter of the break-glass grant store (migration 0008)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.records import GrantRecord
from zumik_secrets.storage.sqlite.kernel import SqliteKernel

_COLS = (
    "grant_id, tenant_id, permission_set, requester, requester_cert, reason, ticket, duration_s,"
    " state, requested_at, approver, approver_cert, approved_at, expires_at, revoked_by,"
    " revoked_at"
)


def _opt(value: Any) -> datetime | None:
    return None if value is None else c.from_us(int(value))


def _grant(row: tuple[Any, ...]) -> GrantRecord:
    return GrantRecord(
        grant_id=row[0],
        tenant_id=row[1],
        permission_set=row[2],
        requester=row[3],
        requester_cert=row[4],
        reason=row[5],
        ticket=row[6],
        duration=timedelta(seconds=int(row[7])),
        state=row[8],
        requested_at=c.from_us(int(row[9])),
        approver=row[10],
        approver_cert=row[11],
        approved_at=_opt(row[12]),
        expires_at=_opt(row[13]),
        revoked_by=row[14],
        revoked_at=_opt(row[15]),
    )


class SqliteGrantStore:
    """:class:`~zumik_secrets.storage.ports.GrantStore` on SQLite."""

    def __init__(self, db: SqliteKernel) -> None:
        self._db = db

    def create(self, grant: GrantRecord) -> None:
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO break_glass_grants ({_COLS})"  # noqa: S608 - constant columns
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', NULL, NULL, '', NULL)",
                (
                    grant.grant_id,
                    grant.tenant_id,
                    grant.permission_set,
                    grant.requester,
                    grant.requester_cert,
                    grant.reason,
                    grant.ticket,
                    int(grant.duration.total_seconds()),
                    "pending",
                    c.to_us(grant.requested_at),
                ),
            )

    def get(self, grant_id: str) -> GrantRecord | None:
        row = self._db.one(
            f"SELECT {_COLS} FROM break_glass_grants WHERE grant_id = ?",  # noqa: S608
            (grant_id,),
        )
        return None if row is None else _grant(row)

    def approve(self, grant_id: str, approver: str, approver_cert: str, at: datetime) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE break_glass_grants SET state = 'active', approver = ?, approver_cert = ?,"
                " approved_at = ?, expires_at = ? + duration_s * 1000000"
                " WHERE grant_id = ? AND state = 'pending' AND requester <> ?"
                " AND requester_cert <> ?",
                (
                    approver,
                    approver_cert,
                    c.to_us(at),
                    c.to_us(at),
                    grant_id,
                    approver,
                    approver_cert,
                ),
            )
            return cur.rowcount == 1

    def revoke(self, grant_id: str, by: str, at: datetime) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE break_glass_grants SET state = 'revoked', revoked_by = ?, revoked_at = ?"
                " WHERE grant_id = ? AND state IN ('pending', 'active')",
                (by, c.to_us(at), grant_id),
            )
            return cur.rowcount == 1

    def list(self, tenant_id: str, limit: int) -> list[GrantRecord]:
        rows = self._db.all(
            f"SELECT {_COLS} FROM break_glass_grants WHERE tenant_id = ?"  # noqa: S608
            " ORDER BY requested_at DESC, grant_id LIMIT ?",
            (tenant_id, limit),
        )
        return [_grant(r) for r in rows]
