"""The tamper-evident audit log: the real :class:`~zumik_secrets.app.audit.AuditRecorder`.

:class:`AuditLog` is the one object the runtime, the servicers and the jobs hold; it composes
three parts, one owner each:

* :mod:`zumik_secrets.app.audit_writer` records (the outbox of changes, group commit, health);
* :mod:`zumik_secrets.app.audit_checkpoints` signs checkpoints, keeps the pins, publishes to the
  witness;
* :mod:`zumik_secrets.app.audit_reader` queries, verifies and exports.

Retention
    :meth:`sweep` removes, per tenant, the events older than the tenant's retention period,
    after storing a signed checkpoint over the last removed event (the *anchor*), so what
    remains still verifies from the anchor; the sweep itself is recorded in the tenant's chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.audit_checkpoints import AuditCheckpointer, CheckpointKeyInfo
from zumik_secrets.app.audit_reader import AuditReader
from zumik_secrets.app.audit_witness import AuditWitness
from zumik_secrets.app.audit_writer import AuditWriter, utc_now
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.app.metrics import Recorder
from zumik_secrets.core import audit_chain as chain
from zumik_secrets.core.audit_chain import ChainEvent, ChainReport, Checkpoint
from zumik_secrets.storage.ports import AuditFilter, AuditStore

SERVICE_ACTOR = "zumik-secrets"
DEFAULT_RETENTION = timedelta(days=400)


@dataclass
class SweepResult:
    """What a retention sweep removed, per tenant: ``{tenant: (through_sequence, deleted)}``."""

    pruned: dict[str, tuple[int, int]] = field(default_factory=dict)


class AuditLog:
    """Records, stores, checkpoints, verifies, exports and prunes the audit chains."""

    def __init__(
        self,
        store: AuditStore,
        keys: CheckpointKeys,
        *,
        clock: Callable[[], datetime] = utc_now,
        group_commit: bool = True,
        durable_timeout: float = 3.0,
        queue_limit: int = 10_000,
        enqueue_timeout: float = 1.0,
        max_batch: int = 512,
        linger: float = 0.0,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        retention: timedelta = DEFAULT_RETENTION,
        retention_for: Callable[[str], timedelta] | None = None,
        outbox_poll: float = 1.0,
        witness: AuditWitness | None = None,
    ) -> None:
        """Create the log (call :meth:`start` to run its threads).

        Args:
            store: The audit store.
            keys: Checkpoint signing keys (loaded).
            clock: Current time.
            group_commit, durable_timeout, queue_limit, enqueue_timeout, max_batch, linger,
                outbox_poll: The writer's (:class:`~zumik_secrets.app.audit_writer.AuditWriter`).
            checkpoint_every, checkpoint_interval: The checkpointer's
                (:class:`~zumik_secrets.app.audit_checkpoints.AuditCheckpointer`).
            retention: Default retention period.
            retention_for: Per-tenant retention (defaults to ``retention`` for every tenant).
            witness: Where signed checkpoints are also published (None: nowhere).
        """
        self._store = store
        self._clock = clock
        self._retention = retention
        self._retention_for = retention_for or (lambda _tenant: retention)
        self.checkpoints = AuditCheckpointer(
            store,
            keys,
            clock=clock,
            read_barrier=self._read_barrier,
            checkpoint_every=checkpoint_every,
            checkpoint_interval=checkpoint_interval,
            witness=witness,
        )
        self.writer = AuditWriter(
            store,
            clock=clock,
            group_commit=group_commit,
            durable_timeout=durable_timeout,
            queue_limit=queue_limit,
            enqueue_timeout=enqueue_timeout,
            max_batch=max_batch,
            linger=linger,
            outbox_poll=outbox_poll,
            on_stored=self.checkpoints.note_stored,
        )
        self.reader = AuditReader(
            store, keys, self.checkpoints, read_barrier=self._read_barrier, witness=witness
        )

    def _read_barrier(self) -> None:
        self.writer.read_barrier()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread and the periodic checkpoints."""
        self.writer.start()
        self.checkpoints.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), drain the outbox, stop the threads, then
        checkpoint what this process wrote. Idempotent."""
        self.writer.stop(timeout)
        self.checkpoints.stop()

    @property
    def healthy(self) -> bool:
        """False from a failed commit (or probe) until the next successful one."""
        return self.writer.healthy

    def probe(self) -> bool:
        """Try an audit write (rolled back); update and return :attr:`healthy`."""
        return self.writer.probe()

    @property
    def metrics(self) -> Recorder:
        """Where batch sizes, commit and durable-wait times and failures go."""
        return self.writer.metrics

    @metrics.setter
    def metrics(self, recorder: Recorder) -> None:
        self.writer.metrics = recorder

    @property
    def on_health_change(self) -> Callable[[bool], None]:
        """Called with the new health when it changes."""
        return self.writer.on_health_change

    @on_health_change.setter
    def on_health_change(self, observer: Callable[[bool], None]) -> None:
        self.writer.on_health_change = observer

    @property
    def queue_depth(self) -> int:
        """Events queued or in flight."""
        return self.writer.queue_depth

    @property
    def dropped(self) -> int:
        """Non-durable events given up on (each logged at ERROR)."""
        return self.writer.dropped

    @property
    def commits(self) -> int:
        """Transactions that stored events."""
        return self.writer.commits

    @property
    def drained(self) -> int:
        """Events moved from the outbox into the chains by this process."""
        return self.writer.drained

    @property
    def rewrites_detected(self) -> int:
        """Rewrites of the chain detected by the pin check."""
        return self.checkpoints.rewrites_detected

    # -- recording (the writer) ---------------------------------------------------------------

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        """See :meth:`AuditWriter.record`.

        Raises:
            Unavailable: reason ``AUDIT_UNAVAILABLE``, only when ``durable`` and the event
                could not be committed in time.
        """
        self.writer.record(entry, durable=durable)

    def change(
        self, *entries: AuditEntry, record_unchanged: bool = True
    ) -> AbstractContextManager[None]:
        """See :meth:`AuditWriter.change`.

        Raises:
            Unavailable: reason ``AUDIT_UNAVAILABLE``, only on its durable fallback.
        """
        return self.writer.change(*entries, record_unchanged=record_unchanged)

    def append(self, entry: AuditEntry) -> ChainEvent:
        """Record one event durably and return it as stored (:meth:`AuditWriter.append`).

        Raises:
            Unavailable: reason ``AUDIT_UNAVAILABLE`` when it could not be committed in time.
        """
        return self.writer.append(entry)

    def drain_outbox(self, wait: float = -1) -> int:
        """Move every outbox event into the chains now (:meth:`AuditWriter.drain_outbox`).

        Raises:
            Unavailable: storage is down, or ``wait`` ran out.
        """
        return self.writer.drain_outbox(wait)

    # -- checkpoints (the checkpointer) -------------------------------------------------------

    def checkpoint_moved_heads(self, limit: int = 10_000) -> int:
        """Sign a checkpoint over every head no checkpoint covers yet; returns how many.

        Raises:
            Unavailable: storage is down.
        """
        return self.checkpoints.checkpoint_moved_heads(limit)

    def create_checkpoint(self, tenant: str) -> Checkpoint:
        """Sign (or return the existing) checkpoint over the tenant's current head.

        Raises:
            Unavailable: storage is down.
        """
        return self.checkpoints.create_checkpoint(tenant)

    def checkpoint_keys(self) -> list[CheckpointKeyInfo]:
        """Every checkpoint key, newest first."""
        return self.checkpoints.checkpoint_keys()

    # -- reading (the reader) -----------------------------------------------------------------

    def verify(self, tenant: str, start_sequence: int = 0, end_sequence: int = 0) -> ChainReport:
        """Verify a range of a tenant's chain (:meth:`AuditReader.verify`).

        Raises:
            InvalidArgument: reason ``INVALID_RANGE``.
            Unavailable: storage is down, or the witness is unreadable.
        """
        return self.reader.verify(tenant, start_sequence, end_sequence)

    def export(self, tenant: str, start_sequence: int = 0) -> Iterator[str]:
        """The tenant's chain as self-verifying export lines (:meth:`AuditReader.export`).

        Raises:
            InvalidArgument: a negative start.
            Unavailable: storage is down.
        """
        return self.reader.export(tenant, start_sequence)

    def query(
        self, tenant: str, flt: AuditFilter, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ChainEvent], str]:
        """One page of a tenant's events matching ``flt`` (:meth:`AuditReader.query`).

        Raises:
            InvalidArgument: a bad page size or a token from another query.
            Unavailable: storage is down.
        """
        return self.reader.query(tenant, flt, page_size=page_size, page_token=page_token)

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
