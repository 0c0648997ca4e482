"""Per-tenant settings: the telemetry mode and the retention periods.

Reads on hot paths (is this tenant in the richer telemetry mode? what is its default session
lifetime?) come from an in-memory map refreshed on change-feed notices, so they cost no database
round trip after the first.

Retention fields are optional per tenant; unset means the service default (``RetentionDefaults``,
from the server configuration). Bounds: audit events 1 day to 10 years, revoked or expired API
keys 0 (delete at the next sweep) to 10 years, session absolute lifetime 5 minutes to 30 days.
Every change is recorded in the tenant's audit chain (``tenant.settings.update``, written in the
change's transaction).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditRecorder, audited_change, event
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.names import validate_tenant_id
from zumik_secrets.core.purge_receipts import InvalidReceipt, parse_statement
from zumik_secrets.storage.ports import PurgeStore, TenantSettingsStore
from zumik_secrets.storage.records import ChangeRecord, TenantSettings

DEFAULT_MODE = "default"
RICH_MODE = "rich"
_MAX_CACHED = 100_000
_EPOCH = datetime.fromtimestamp(0, UTC)

RETENTION_FIELDS = ("audit_retention", "revoked_key_retention", "session_absolute_lifetime")
BOUNDS: Mapping[str, tuple[timedelta, timedelta]] = {
    "audit_retention": (timedelta(days=1), timedelta(days=3650)),
    "revoked_key_retention": (timedelta(0), timedelta(days=3650)),
    "session_absolute_lifetime": (timedelta(minutes=5), timedelta(days=30)),
}
REASON_RETENTION_OUT_OF_RANGE = "RETENTION_OUT_OF_RANGE"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RetentionDefaults:
    """The retention periods of a tenant that set none.

    Attributes:
        audit_retention: How long audit events are kept.
        revoked_key_retention: How long revoked or expired API keys are kept.
        session_absolute_lifetime: Default absolute lifetime of new sessions.
    """

    audit_retention: timedelta = timedelta(days=400)
    revoked_key_retention: timedelta = timedelta(days=30)
    session_absolute_lifetime: timedelta = timedelta(hours=12)


def check_retention(field: str, value: timedelta) -> timedelta:
    """Return ``value`` if it is whole seconds within the field's bounds.

    Raises:
        InvalidArgument: reason ``RETENTION_OUT_OF_RANGE``.
    """
    low, high = BOUNDS[field]
    if not low <= value <= high or value.microseconds:
        raise retention_out_of_range(field)
    return value


def retention_out_of_range(field: str) -> InvalidArgument:
    """The answer for a retention value outside its bounds (or not whole seconds)."""
    low, high = BOUNDS[field]
    message = (
        f"must be whole seconds from {int(low.total_seconds())}s to {int(high.total_seconds())}s"
    )
    return InvalidArgument(
        f"settings.{field} {message}",
        reason=REASON_RETENTION_OUT_OF_RANGE,
        metadata={"field": f"settings.{field}"},
        violations=[FieldViolation(f"settings.{field}", message)],
    )


class TenantSettingsService:
    """Reads and writes tenant settings; answers hot-path questions from memory."""

    def __init__(
        self,
        store: TenantSettingsStore,
        clock: Callable[[], datetime] = _now,
        *,
        defaults: RetentionDefaults | None = None,
        receipts: PurgeStore | None = None,
    ) -> None:
        """Create the service over ``store``.

        Args:
            store: Where settings live.
            clock: Current time.
            defaults: Retention periods of tenants that set none.
            receipts: Purge receipts, to keep honouring a purged tenant's audit retention
                after its settings row is gone.
        """
        self._store = store
        self._clock = clock
        self._defaults = defaults or RetentionDefaults()
        self._receipts = receipts
        self._cache: dict[str, TenantSettings | None] = {}
        self._lock = threading.Lock()
        self.audit: AuditRecorder | None = None
        """Where changes are recorded (set by the server wiring; None records nothing)."""

    @property
    def defaults(self) -> RetentionDefaults:
        """The service-wide retention defaults."""
        return self._defaults

    def get(self, tenant_id: str) -> TenantSettings:
        """The tenant's settings as stored (retention fields None where unset), or the defaults
        for a tenant never configured.

        Raises:
            Unavailable: storage is down.
        """
        settings = self._store.get(tenant_id)
        if settings is None:
            return TenantSettings(tenant_id, DEFAULT_MODE, _EPOCH)
        return settings

    def effective(self, tenant_id: str) -> TenantSettings:
        """The tenant's settings with every unset retention field replaced by its default.

        Raises:
            Unavailable: storage is down.
        """
        settings = self.get(tenant_id)
        return replace(
            settings,
            audit_retention=settings.audit_retention or self._defaults.audit_retention,
            revoked_key_retention=(
                self._defaults.revoked_key_retention
                if settings.revoked_key_retention is None
                else settings.revoked_key_retention
            ),
            session_absolute_lifetime=(
                settings.session_absolute_lifetime or self._defaults.session_absolute_lifetime
            ),
        )

    def update(
        self, tenant_id: str, changes: Mapping[str, str | timedelta | None], actor: Actor
    ) -> TenantSettings:
        """Change some fields: ``telemetry_mode`` (``default``/``rich``) and the retention
        fields (a timedelta within bounds, or None to go back to the default).

        Raises:
            InvalidArgument: bad tenant id, or a value out of bounds.
            Unavailable: storage is down, or the audit event could not be made durable (the
                change is then undone).
        """
        validate_tenant_id(tenant_id)
        before = self._store.get(tenant_id)
        current = before or TenantSettings(tenant_id, DEFAULT_MODE, _EPOCH)
        values: dict[str, object] = {}
        attributes: dict[str, str] = {}
        for name, value in changes.items():
            if name == "telemetry_mode":
                if value not in (DEFAULT_MODE, RICH_MODE):
                    raise ValueError(value)
                values[name] = value
                attributes[name] = str(value)
            elif name in RETENTION_FIELDS:
                if value is not None and not isinstance(value, timedelta):
                    raise TypeError(name)
                if value is not None:
                    check_retention(name, value)
                values[name] = value
                attributes[f"{name}_seconds"] = (
                    "default" if value is None else str(int(value.total_seconds()))
                )
            else:
                raise KeyError(name)
        updated = replace(current, updated_at=self._clock(), **values)  # type: ignore[arg-type]
        if self.audit is None:
            self._store.put(updated)
        else:
            target = f"tenants/{tenant_id}/settings"
            entry = event(actor, tenant_id, "tenant.settings.update", target, attributes=attributes)
            try:
                with audited_change(self.audit, entry):
                    self._store.put(updated)
            finally:
                self._forget(tenant_id)
        self._forget(tenant_id)
        return updated

    # -- hot-path reads ------------------------------------------------------------------------

    def _cached(self, tenant_id: str) -> TenantSettings | None:
        if tenant_id in self._cache:
            return self._cache[tenant_id]
        settings = self._store.get(tenant_id)
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[tenant_id] = settings
        return settings

    def rich_mode(self, tenant_id: str) -> bool:
        """Whether the tenant opted into richer telemetry (cached; False if storage is down)."""
        try:
            settings = self._cached(tenant_id)
        except Exception:  # noqa: BLE001 - telemetry never fails a call; default mode is safe
            return False
        return settings is not None and settings.telemetry_mode == RICH_MODE

    def session_absolute_lifetime(self, tenant_id: str) -> timedelta:
        """The default absolute lifetime of the tenant's new sessions (cached).

        Raises:
            Unavailable: storage is down.
        """
        settings = self._cached(tenant_id)
        if settings is None or settings.session_absolute_lifetime is None:
            return self._defaults.session_absolute_lifetime
        return settings.session_absolute_lifetime

    def audit_retention_for(self, tenant_id: str) -> timedelta:
        """How long the tenant's audit events are kept: its setting, else (for a purged tenant)
        what its purge receipt promised, else the default. Tenant ``-`` (the service chain)
        always gets the default.

        Raises:
            Unavailable: storage is down.
        """
        settings = self._store.get(tenant_id) if tenant_id != "-" else None
        if settings is not None and settings.audit_retention is not None:
            return settings.audit_retention
        if settings is None and self._receipts is not None and tenant_id != "-":
            receipt = self._receipts.latest_receipt(f"tenants/{tenant_id}")
            if receipt is not None:
                try:
                    stmt = parse_statement(receipt.statement)
                except InvalidReceipt:
                    return self._defaults.audit_retention
                for item in stmt.retained:
                    if item.kind == "audit_events":
                        return timedelta(seconds=item.retention_seconds)
        return self._defaults.audit_retention

    def on_change(self, record: ChangeRecord) -> None:
        """Change-feed subscriber: drop the cached settings of the changed tenant."""
        self._forget(record.entity_id)

    def _forget(self, tenant_id: str) -> None:
        with self._lock:
            self._cache.pop(tenant_id, None)
