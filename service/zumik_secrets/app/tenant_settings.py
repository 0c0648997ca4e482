"""Per-tenant settings: the telemetry mode for now (retention joins with the purge work).

Reads on the hot path (is this tenant in the richer telemetry mode?) come from an in-memory map
refreshed on change-feed notices, so the access log costs no database round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from zumik_secrets.core.names import validate_tenant_id
from zumik_secrets.storage.ports import TenantSettingsStore
from zumik_secrets.storage.records import ChangeRecord, TenantSettings

DEFAULT_MODE = "default"
RICH_MODE = "rich"
_MAX_CACHED = 100_000


def _now() -> datetime:
    return datetime.now(UTC)


class TenantSettingsService:
    """Reads and writes tenant settings; answers the rich-mode question from memory."""

    def __init__(self, store: TenantSettingsStore, clock: Callable[[], datetime] = _now) -> None:
        """Create the service over ``store``."""
        self._store = store
        self._clock = clock
        self._modes: dict[str, bool] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> TenantSettings:
        """The tenant's settings, or the defaults for a tenant never configured.

        Raises:
            Unavailable: storage is down.
        """
        settings = self._store.get(tenant_id)
        if settings is None:
            return TenantSettings(tenant_id, DEFAULT_MODE, datetime.fromtimestamp(0, UTC))
        return settings

    def set_telemetry_mode(self, tenant_id: str, mode: str) -> TenantSettings:
        """Switch a tenant's telemetry mode (``default`` or ``rich``).

        Raises:
            InvalidArgument: bad tenant id.
            Unavailable: storage is down.
        """
        validate_tenant_id(tenant_id)
        if mode not in (DEFAULT_MODE, RICH_MODE):
            raise ValueError(mode)
        settings = TenantSettings(tenant_id, mode, self._clock())
        self._store.put(settings)
        self._forget(tenant_id)
        return settings

    def rich_mode(self, tenant_id: str) -> bool:
        """Whether the tenant opted into richer telemetry (cached; False if storage is down)."""
        cached = self._modes.get(tenant_id)
        if cached is not None:
            return cached
        try:
            settings = self._store.get(tenant_id)
        except Exception:  # noqa: BLE001 - telemetry never fails a call; default mode is safe
            return False
        rich = settings is not None and settings.telemetry_mode == RICH_MODE
        with self._lock:
            if len(self._modes) >= _MAX_CACHED:
                self._modes.clear()
            self._modes[tenant_id] = rich
        return rich

    def on_change(self, record: ChangeRecord) -> None:
        """Change-feed subscriber: drop the cached mode of the changed tenant."""
        self._forget(record.entity_id)

    def _forget(self, tenant_id: str) -> None:
        with self._lock:
            self._modes.pop(tenant_id, None)
