"""PostgreSQL adapter of the break-glass grant store (migration 0008)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.postgres.kernel import PgKernel
from zumik_secrets.storage.records import GrantRecord

_COLS = (
    "grant_id, tenant_id, permission_set, requester, requester_cert, reason, ticket, duration_s,"
    " state, requested_at, approver, approver_cert, approved_at, expires_at, revoked_by,"
    " revoked_at"
)


def _opt(value: Any) -> datetime | None:
    return None if value is None else c.utc(value)


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
        requested_at=c.utc(row[9]),
        approver=row[10],
        approver_cert=row[11],
        approved_at=_opt(row[12]),
        expires_at=_opt(row[13]),
        revoked_by=row[14],
        revoked_at=_opt(row[15]),
    )


class PgGrantStore:
    """:class:`~zumik_secrets.storage.ports.GrantStore` on PostgreSQL."""

    def __init__(self, db: PgKernel) -> None:
        self._db = db

    def create(self, grant: GrantRecord) -> None:
        with self._db.tx() as conn:
            conn.execute(
                f"INSERT INTO break_glass_grants ({_COLS})"  # noqa: S608 - constant columns
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '', '', NULL, NULL, '', NULL)",
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
                    c.require_aware(grant.requested_at),
                ),
            )

    def get(self, grant_id: str) -> GrantRecord | None:
        row = self._db.one(
            f"SELECT {_COLS} FROM break_glass_grants WHERE grant_id = %s",  # noqa: S608
            (grant_id,),
        )
        return None if row is None else _grant(row)

    def approve(self, grant_id: str, approver: str, approver_cert: str, at: datetime) -> bool:
        with self._db.tx() as conn:
            cur = conn.execute(
                "UPDATE break_glass_grants SET state = 'active', approver = %s, approver_cert = %s,"
                " approved_at = %s, expires_at = %s + make_interval(secs => duration_s)"
                " WHERE grant_id = %s AND state = 'pending' AND requester <> %s"
                " AND requester_cert <> %s",
                (
                    approver,
                    approver_cert,
                    c.require_aware(at),
                    c.require_aware(at),
                    grant_id,
                    approver,
                    approver_cert,
                ),
            )
            return cur.rowcount == 1

    def revoke(self, grant_id: str, by: str, at: datetime) -> bool:
        with self._db.tx() as conn:
            cur = conn.execute(
                "UPDATE break_glass_grants SET state = 'revoked', revoked_by = %s, revoked_at = %s"
                " WHERE grant_id = %s AND state IN ('pending', 'active')",
                (by, c.require_aware(at), grant_id),
            )
            return cur.rowcount == 1

    def list(self, tenant_id: str, limit: int) -> list[GrantRecord]:
        rows = self._db.all(
            f"SELECT {_COLS} FROM break_glass_grants WHERE tenant_id = %s"  # noqa: S608
            " ORDER BY requested_at DESC, grant_id LIMIT %s",
            (tenant_id, limit),
        )
        return [_grant(r) for r in rows]
