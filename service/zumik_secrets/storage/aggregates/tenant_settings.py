"""Per-tenant settings (:class:`~zumik_secrets.storage.ports.TenantSettingsStore`)."""

from __future__ import annotations

from zumik_secrets.storage import _common as c
from zumik_secrets.storage.aggregates import fence
from zumik_secrets.storage.records import TenantSettings
from zumik_secrets.storage.sql.kernel import Kernel


class SqlTenantSettingsStore:
    """:class:`~zumik_secrets.storage.ports.TenantSettingsStore` over a SQL kernel."""

    def __init__(self, db: Kernel) -> None:
        self._db = db
        self._d = db.dialect

    def get(self, tenant_id: str) -> TenantSettings | None:
        row = self._db.one(
            "SELECT tenant_id, telemetry_mode, updated_at, audit_retention_s,"
            " revoked_key_retention_s, session_absolute_lifetime_s FROM tenant_settings"
            " WHERE tenant_id = %s",
            (tenant_id,),
        )
        if row is None:
            return None
        return TenantSettings(
            row[0], row[1], self._d.time_out(row[2]), *(c.opt_seconds(v) for v in row[3:6])
        )

    def put(self, settings: TenantSettings) -> None:
        with self._db.transaction() as conn:
            fence.check(self._db, conn, settings.tenant_id, None)  # a tenant purge only
            conn.execute(
                "INSERT INTO tenant_settings (tenant_id, telemetry_mode, updated_at,"
                " audit_retention_s, revoked_key_retention_s, session_absolute_lifetime_s)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id) DO UPDATE SET"
                " telemetry_mode = excluded.telemetry_mode, updated_at = excluded.updated_at,"
                " audit_retention_s = excluded.audit_retention_s,"
                " revoked_key_retention_s = excluded.revoked_key_retention_s,"
                " session_absolute_lifetime_s = excluded.session_absolute_lifetime_s",
                (
                    settings.tenant_id,
                    settings.telemetry_mode,
                    self._d.time_in(settings.updated_at),
                    c.opt_to_seconds(settings.audit_retention),
                    c.opt_to_seconds(settings.revoked_key_retention),
                    c.opt_to_seconds(settings.session_absolute_lifetime),
                ),
            )
            self._db.record_changes(conn, "tenant_settings", [settings.tenant_id])
