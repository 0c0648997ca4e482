"""Break-glass grants (:class:`~zumik_secrets.storage.ports.GrantStore`, migration 0008)."""

# The column list is a module constant, never input: the f-strings cannot inject.
# ruff: noqa: S608

from __future__ import annotations

from datetime import datetime, timedelta

from zumik_secrets.storage.records import GrantRecord
from zumik_secrets.storage.sql.dialect import Dialect
from zumik_secrets.storage.sql.kernel import Kernel, Row

_COLS = (
    "grant_id, tenant_id, permission_set, requester, requester_cert, reason, ticket, duration_s,"
    " state, requested_at, approver, approver_cert, approved_at, expires_at, revoked_by,"
    " revoked_at"
)


def _grant(d: Dialect, row: Row) -> GrantRecord:
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
        requested_at=d.time_out(row[9]),
        approver=row[10],
        approver_cert=row[11],
        approved_at=d.opt_time_out(row[12]),
        expires_at=d.opt_time_out(row[13]),
        revoked_by=row[14],
        revoked_at=d.opt_time_out(row[15]),
    )


class SqlGrantStore:
    """:class:`~zumik_secrets.storage.ports.GrantStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def create(self, grant: GrantRecord) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                f"INSERT INTO break_glass_grants ({_COLS})"
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
                    self._d.time_in(grant.requested_at),
                ),
            )

    def get(self, grant_id: str) -> GrantRecord | None:
        row = self._db.one(
            f"SELECT {_COLS} FROM break_glass_grants WHERE grant_id = %s", (grant_id,)
        )
        return None if row is None else _grant(self._d, row)

    def approve(self, grant_id: str, approver: str, approver_cert: str, at: datetime) -> bool:
        when = self._d.time_in(at)
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE break_glass_grants SET state = 'active', approver = %s, approver_cert = %s,"
                f" approved_at = %s, expires_at = %s + {self._d.interval('duration_s')}"
                " WHERE grant_id = %s AND state = 'pending' AND requester <> %s"
                " AND requester_cert <> %s",
                (approver, approver_cert, when, when, grant_id, approver, approver_cert),
            )
            return cur.rowcount == 1

    def revoke(self, grant_id: str, by: str, at: datetime) -> bool:
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE break_glass_grants SET state = 'revoked', revoked_by = %s, revoked_at = %s"
                " WHERE grant_id = %s AND state IN ('pending', 'active')",
                (by, self._d.time_in(at), grant_id),
            )
            return cur.rowcount == 1

    def list(self, tenant_id: str, limit: int) -> list[GrantRecord]:
        rows = self._db.all(
            f"SELECT {_COLS} FROM break_glass_grants WHERE tenant_id = %s"
            " ORDER BY requested_at DESC, grant_id LIMIT %s",
            (tenant_id, limit),
        )
        return [_grant(self._d, r) for r in rows]
