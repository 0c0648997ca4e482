"""The audit checkpointer: signed checkpoints over the chains' heads, pins, and the witness.

Checkpoints
    A background thread signs a checkpoint for every chain whose head moved, every
    ``checkpoint_interval`` seconds, and sooner when a tenant gained ``checkpoint_every`` events
    in this process (and once more when the log stops). :meth:`create_checkpoint` signs one on
    demand, :meth:`export` one over the head it exports.

Witness and pins (issue 16)
    Every checkpoint signed here is also published to the witness
    (:mod:`zumik_secrets.app.audit_witness`), a sink the database writer cannot rewrite, and
    :meth:`verify` checks the chain against the witness's checkpoints too. The process also
    remembers, per tenant, the last link it wrote itself (a *pin*: sequence and hash). Before
    signing a head it checks that the stored event at the pinned sequence still has the pinned
    hash; since every hash covers all earlier events, that one read detects any rewrite of the
    chain up to the pin, including a re-linked one. On a mismatch it signs the pinned link (the
    truth as written) instead of the head, stores and publishes it, and logs an ERROR; every
    later verification then fails with ``CHECKPOINT_MISMATCH``. Pins live in memory: events
    written by a process that dies before its next checkpoint are pinned by nothing, so the
    unanchored tail is at most ``checkpoint_interval`` seconds or ``checkpoint_every`` events
    of a tenant.

The retention sweep's anchors are signed here too (:meth:`AuditCheckpointer.sign_anchor`).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from zumik_secrets.app.audit_witness import AuditWitness
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.core import audit_chain as chain
from zumik_secrets.core.audit_chain import ChainEvent, Checkpoint
from zumik_secrets.storage.ports import AuditStore

_LOG = logging.getLogger("zumik.audit")


@dataclass(frozen=True, slots=True)
class CheckpointKeyInfo:
    """A checkpoint key's public half as published.

    Attributes:
        kid: Key id.
        public_key: Raw Ed25519 public key.
        status: ``active`` or ``retired`` (``retiring`` keys no longer sign: retired here).
    """

    kid: str
    public_key: bytes
    status: str


class AuditCheckpointer:
    """Signs, stores and publishes checkpoints; remembers the last link this process wrote."""

    def __init__(
        self,
        store: AuditStore,
        keys: CheckpointKeys,
        *,
        clock: Callable[[], datetime],
        read_barrier: Callable[[], None],
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        witness: AuditWitness | None = None,
    ) -> None:
        """Create the checkpointer (call :meth:`start` to run its periodic job).

        Args:
            store: The audit store.
            keys: Checkpoint signing keys (loaded).
            clock: Current time.
            read_barrier: Called before an on-demand checkpoint reads a head (the writer's
                outbox drain: read your changes).
            checkpoint_every: Events of one tenant (in this process) that trigger a checkpoint.
            checkpoint_interval: Seconds between periodic checkpoints of moved heads.
            witness: Where signed checkpoints are also published (None: nowhere).
        """
        self._store = store
        self._keys = keys
        self._clock = clock
        self._read_barrier = read_barrier
        self._checkpoint_every = checkpoint_every
        self._witness = witness
        self._unpublished: list[Checkpoint] = []  # witness publishes to retry, under _pin_lock
        self._pins: dict[str, tuple[int, bytes]] = {}  # last link written here, per tenant
        self._published: dict[tuple[str, int, bytes], None] = {}  # under _pin_lock
        self._pin_lock = threading.Lock()
        self._since_checkpoint: defaultdict[str, int] = defaultdict(int)
        #: Rewrites detected by the pin check (each logged at ERROR and signed as the truth).
        self.rewrites_detected = 0
        # Periodic, sooner when woken by a busy tenant, and once more at a clean stop (anchor
        # what this process wrote, so a clean stop leaves no unanchored tail).
        self._job = PeriodicJob(
            "audit checkpoint",
            checkpoint_interval,
            self.checkpoint_moved_heads,
            log=_LOG,
            drain=self.checkpoint_moved_heads,
        )

    @property
    def keys(self) -> CheckpointKeys:
        """The checkpoint keys (sign and verify)."""
        return self._keys

    def start(self) -> None:
        """Start the periodic checkpoints."""
        self._job.start()

    def stop(self) -> None:
        """Stop them, with a final checkpoint of the moved heads (if started). Idempotent."""
        self._job.stop()

    def note_stored(self, stored: list[ChainEvent]) -> None:
        """Pin the last link of each tenant among ``stored`` and count events toward the next
        checkpoint (the writer reports every commit here)."""
        with self._pin_lock:
            for event in stored:
                pin = self._pins.get(event.tenant)
                if pin is None or pin[0] < event.sequence:
                    self._pins[event.tenant] = (event.sequence, event.hash)
        due = False
        for event in stored:
            self._since_checkpoint[event.tenant] += 1
            if self._since_checkpoint[event.tenant] >= self._checkpoint_every:
                due = True
        if due:
            self._job.wake()

    def checkpoint_moved_heads(self, limit: int = 10_000) -> int:
        """Sign a checkpoint over every head that no checkpoint covers yet.

        Returns:
            How many checkpoints were stored.

        Raises:
            Unavailable: storage is down.
        """
        self._since_checkpoint.clear()
        count = 0
        for tenant, sequence, head_hash in self._store.heads_without_checkpoint(limit):
            self.sign_head(tenant, sequence, head_hash)
            count += 1
        self.publish([])  # retry what the witness refused before
        return count

    def create_checkpoint(self, tenant: str) -> Checkpoint:
        """Sign (or return the existing) checkpoint over the tenant's current head.

        When the stored chain no longer extends what this process wrote (see the module
        docstring), the checkpoint returned is over the pinned link instead, and does not
        match the stored chain.

        Raises:
            Unavailable: storage is down.
        """
        self._read_barrier()
        sequence, head_hash = self._store.head(tenant) or (0, chain.GENESIS_HASH)
        return self.sign_head(tenant, sequence, head_hash)

    def sign_head(self, tenant: str, sequence: int, head_hash: bytes) -> Checkpoint:
        """Sign, store and publish a checkpoint over ``(sequence, head_hash)``, or over the
        pinned link when the stored chain no longer extends it (:meth:`pin_conflict`).

        Raises:
            Unavailable: storage is down.
        """
        truth = self.pin_conflict(tenant, sequence, head_hash)
        kid, signer = self._keys.checkpoint_signer()
        if truth is not None:
            self.rewrites_detected += 1
            _LOG.error(
                "audit chain rewritten in the database: the stored chain does not extend the "
                "link this process wrote; signing that link instead of the stored head",
                extra={"tenant": tenant, "pinned_sequence": truth[0], "head_sequence": sequence},
            )
            cp = chain.sign_checkpoint(signer, kid, tenant, truth[0], truth[1], self._clock())
            self._store.add_checkpoint(cp)
            self.publish([cp])
            return cp
        cp = self._store.add_checkpoint(
            chain.sign_checkpoint(signer, kid, tenant, sequence, head_hash, self._clock())
        )
        self.publish([cp])
        return cp

    def pin_conflict(
        self, tenant: str, sequence: int, head_hash: bytes
    ) -> tuple[int, bytes] | None:
        """The pinned link when the stored chain does not extend it, else None."""
        with self._pin_lock:
            pin = self._pins.get(tenant)
        if pin is None:
            return None
        pinned_sequence, pinned_hash = pin
        if pinned_sequence == sequence:
            return None if pinned_hash == head_hash else pin
        if pinned_sequence > sequence:
            # Either this process wrote more since the head was read (a race, not a rewrite:
            # the head has moved on meanwhile) or the head moved back (the tail was cut).
            current = self._store.head(tenant)
            if current is None or current[0] < pinned_sequence:
                return pin
        event = self._store.event(tenant, pinned_sequence)
        if event is None:
            first = self._store.first_sequence(tenant)
            # Pruned by retention: the signed retention anchor covers it.
            return None if first is not None and first > pinned_sequence else pin
        return None if event.hash == pinned_hash else pin

    def publish(self, checkpoints: list[Checkpoint]) -> None:
        """Publish to the witness; what fails is retried by the next checkpoint round."""
        if self._witness is None:
            return
        with self._pin_lock:
            fresh = []
            for cp in checkpoints:
                marker = (cp.tenant, cp.sequence, cp.head_hash)
                if marker not in self._published:
                    fresh.append(cp)
            batch = self._unpublished + fresh
            self._unpublished = []
        if not batch:
            return
        try:
            self._witness.publish(batch)
        except Exception:  # noqa: BLE001 - a witness outage must not stop the audit log
            _LOG.error("audit witness unavailable: checkpoints kept for a retry", exc_info=True)
            with self._pin_lock:
                self._unpublished = (batch + self._unpublished)[-10_000:]
            return
        with self._pin_lock:
            # Remember what was published recently, so exports over an unchanged head do not
            # append the same checkpoint again and again (bounded: a repeat is harmless).
            if len(self._published) > 10_000:
                self._published.clear()
            for cp in batch:
                self._published[(cp.tenant, cp.sequence, cp.head_hash)] = None

    def checkpoint_keys(self) -> list[CheckpointKeyInfo]:
        """Every checkpoint key, newest first."""
        return [
            CheckpointKeyInfo(
                rec.kid, rec.public_key, "active" if rec.state == "active" else "retired"
            )
            for rec in reversed(self._keys.trusted_records())
        ]

    def sign_anchor(self, tenant: str, sequence: int, head_hash: bytes, at: datetime) -> Checkpoint:
        """A checkpoint over a retention anchor (stored by the prune that uses it; published by
        the caller once stored)."""
        kid, signer = self._keys.checkpoint_signer()
        return chain.sign_checkpoint(signer, kid, tenant, sequence, head_hash, at)
