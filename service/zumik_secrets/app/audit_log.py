"""The tamper-evident audit log: the real :class:`~zumik_secrets.app.audit.AuditRecorder`.

:class:`AuditLog` is the one object the runtime, the servicers and the jobs hold; it is the
writer and composes the other two parts, one owner each:

* :mod:`zumik_secrets.app.audit_writer` records (the outbox of changes, group commit, health):
  :class:`AuditLog` is an :class:`~zumik_secrets.app.audit_writer.AuditWriter`;
* :mod:`zumik_secrets.app.audit_checkpoints` signs checkpoints, keeps the pins, publishes to the
  witness;
* :mod:`zumik_secrets.app.audit_reader` queries, verifies and exports.

Retention
    :meth:`sweep` removes, per tenant, the events older than the tenant's retention period,
    after storing a signed checkpoint over the last removed event (the *anchor*), so what
    remains still verifies from the anchor; the sweep itself is recorded in the tenant's chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Unpack

from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.audit_checkpoints import AuditCheckpointer
from zumik_secrets.app.audit_reader import AuditReader
from zumik_secrets.app.audit_witness import AuditWitness
from zumik_secrets.app.audit_writer import AuditWriter, WriterOptions, utc_now
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.core import audit_chain as chain
from zumik_secrets.storage.ports import AuditStore

SERVICE_ACTOR = "zumik-secrets"
DEFAULT_RETENTION = timedelta(days=400)


@dataclass
class SweepResult:
    """What a retention sweep removed, per tenant: ``{tenant: (through_sequence, deleted)}``."""

    pruned: dict[str, tuple[int, int]] = field(default_factory=dict)


class AuditLog(AuditWriter):
    """Records (as the writer), checkpoints, verifies, exports and prunes the audit chains."""

    def __init__(
        self,
        store: AuditStore,
        keys: CheckpointKeys,
        *,
        clock: Callable[[], datetime] = utc_now,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        retention: timedelta = DEFAULT_RETENTION,
        retention_for: Callable[[str], timedelta] | None = None,
        witness: AuditWitness | None = None,
        **writer_options: Unpack[WriterOptions],
    ) -> None:
        """Create the log (call :meth:`start` to run its threads).

        Args:
            store, keys, clock, checkpoint_every, checkpoint_interval, witness: As for
                :class:`~zumik_secrets.app.audit_checkpoints.AuditCheckpointer`.
            retention: Default retention period.
            retention_for: Per-tenant retention (defaults to ``retention`` for every tenant).
            **writer_options: The writer's tuning
                (:class:`~zumik_secrets.app.audit_writer.WriterOptions`).
        """
        self.checkpoints = AuditCheckpointer(
            store,
            keys,
            clock=clock,
            read_barrier=self.read_barrier,
            checkpoint_every=checkpoint_every,
            checkpoint_interval=checkpoint_interval,
            witness=witness,
        )
        super().__init__(
            store, clock=clock, on_stored=self.checkpoints.note_stored, **writer_options
        )
        self.reader = AuditReader(
            store, keys, self.checkpoints, read_barrier=self.read_barrier, witness=witness
        )
        self._retention = retention
        self._retention_for = retention_for or (lambda _tenant: retention)

    def start(self) -> None:
        """Start the writer thread and the periodic checkpoints."""
        super().start()
        self.checkpoints.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), drain the outbox, stop the threads, then
        checkpoint what this process wrote (no unanchored tail after a clean stop). Idempotent."""
        super().stop(timeout)
        self.checkpoints.stop()

    # -- retention --------------------------------------------------------------------------

    def sweep(self, now: datetime | None = None, tenants: list[str] | None = None) -> SweepResult:
        """Remove events past each tenant's retention, keeping a signed anchor.

        The later retention job calls this; it is safe to run on several replicas at once.

        Args:
            now: The time to measure retention from (default: the clock).
            tenants: Only these tenants (default: every tenant with an event older than the
                default retention period).

        Returns:
            What was pruned, per tenant.

        Raises:
            Unavailable: storage is down.
        """
        now = now or self._clock()
        result = SweepResult()
        candidates = (
            tenants
            if tenants is not None
            else self._store.tenants_with_events_before(now - self._retention)
        )
        for tenant in candidates:
            retention = self._retention_for(tenant)
            point = self._store.prune_point(tenant, now - retention)
            if point is None:
                continue
            sequence, head_hash = point
            anchor = self.checkpoints.sign_anchor(tenant, sequence, head_hash, now)
            deleted = self._store.prune(anchor)
            self.checkpoints.publish([anchor])
            result.pruned[tenant] = (sequence, deleted)
            self.record(
                AuditEntry(
                    tenant_id=None if tenant == chain.SERVICE_TENANT else tenant,
                    actor=SERVICE_ACTOR,
                    actor_subject="",
                    action="audit.pruned",
                    target=f"tenants/{tenant}",
                    outcome="success",
                    reason="RETENTION",
                    attributes={
                        "through_sequence": str(sequence),
                        "deleted": str(deleted),
                        "retention_days": str(retention.days),
                    },
                ),
                durable=True,
            )
        return result
