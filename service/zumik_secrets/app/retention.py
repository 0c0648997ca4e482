"""Retention sweeps: what each tenant's retention settings promise, enforced.

One run (:meth:`Retention.run`, for one tenant or for all) removes:

- ``sessions``: sessions revoked, or past their absolute or idle expiry, more than a minute ago
  (the margin lets another replica's unflushed use save a session);
- ``api_keys``: API keys revoked, or expired, longer ago than their tenant's
  ``revoked_key_retention`` (default from the configuration);
- ``audit_events``: audit events older than their tenant's ``audit_retention``, behind a signed
  anchor checkpoint so the rest still verifies (:meth:`AuditLog.sweep`);
- ``changes`` (all-tenant runs only): change-feed records older than an hour. They only tell
  replicas which cache entries to drop, every replica reads them within a second, and they name
  ids (of purged keys too), so they are not kept.

Each run is recorded (``retention.run``, durable, with the counts) in the tenant's audit chain,
or in the service chain (``-``) for an all-tenant run. The server runs it every
``ZUMIK_RETENTION_INTERVAL`` seconds on a background thread (:class:`RetentionScheduler`); the
``RunRetention`` RPC and ``zumik-secrets retention run`` run it on demand. Several replicas
sweeping at once is safe: every step is an idempotent delete, and audit pruning is per tenant
under its chain lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from zumik_secrets.app.actor import SYSTEM, Actor
from zumik_secrets.app.audit import event, record
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.app.sessions import SWEEP_MARGIN
from zumik_secrets.app.tenant_settings import BOUNDS, TenantSettingsService
from zumik_secrets.storage.ports import ApiKeyStore, AuditStore, ChangeFeed, SessionStore

_LOG = logging.getLogger("zumik.retention")

CHANGE_FEED_RETENTION = timedelta(hours=1)
DEFAULT_INTERVAL = 3600.0
KINDS = ("sessions", "api_keys", "audit_events", "changes")


def _now() -> datetime:
    return datetime.now(UTC)


class Retention:
    """Runs the retention sweeps."""

    def __init__(
        self,
        *,
        sessions: SessionStore,
        api_keys: ApiKeyStore,
        changes: ChangeFeed,
        audit_store: AuditStore,
        audit_log: AuditLog,
        settings: TenantSettingsService,
        before_session_sweep: Callable[[], object] = lambda: None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the sweeps.

        Args:
            sessions: Session store.
            api_keys: API-key store.
            changes: Change feed.
            audit_store: Audit store (to find tenants with old events).
            audit_log: Prunes audit chains behind signed anchors, and records the runs.
            settings: Per-tenant retention (and the defaults).
            before_session_sweep: Called first (the server flushes batched session use, so a
                session used on this replica since the last flush is not swept).
            clock: Current time.
        """
        self._sessions = sessions
        self._api_keys = api_keys
        self._changes = changes
        self._audit_store = audit_store
        self._audit = audit_log
        self._settings = settings
        self._before_session_sweep = before_session_sweep
        self._clock = clock

    def run(self, tenant: str | None = None, actor: Actor = SYSTEM) -> dict[str, int]:
        """Run every sweep now, for one tenant or (None) for all.

        Returns:
            How many items each sweep removed, by kind (``sessions``, ``api_keys``,
            ``audit_events``, and ``changes`` for all-tenant runs).

        Raises:
            Unavailable: storage or the audit log is down (what ran before stays done).
        """
        now = self._clock()
        removed: dict[str, int] = {}
        self._before_session_sweep()
        removed["sessions"] = self._sessions.delete_expired(now - SWEEP_MARGIN, tenant_id=tenant)
        removed["api_keys"] = self._api_keys.delete_dead_keys(
            now, self._settings.defaults.revoked_key_retention, tenant_id=tenant
        )
        # The shortest allowed retention finds every tenant that may have something to prune;
        # the sweep then applies each tenant's own period.
        shortest = BOUNDS["audit_retention"][0]
        tenants = (
            [tenant]
            if tenant is not None
            else self._audit_store.tenants_with_events_before(now - shortest)
        )
        swept = self._audit.sweep(now, tenants=tenants)
        removed["audit_events"] = sum(deleted for _seq, deleted in swept.pruned.values())
        if tenant is None:
            removed["changes"] = self._changes.prune_before(now - CHANGE_FEED_RETENTION)
        counts = {kind: str(n) for kind, n in removed.items()}
        entry = event(actor, tenant, "retention.run", f"tenants/{tenant or '-'}", attributes=counts)
        record(self._audit, entry, durable=True)
        _LOG.info("retention run", extra={"tenant": tenant or "-", "removed": removed})
        return removed


def scheduler(retention: Retention, interval: float = DEFAULT_INTERVAL) -> PeriodicJob:
    """The job running :meth:`Retention.run` for every tenant every ``interval`` seconds (not
    started; its first run comes one interval after the start)."""
    return PeriodicJob("retention run", interval, retention.run, log=_LOG)
