"""The audit writer: records events into the hash chains, with group commit and the outbox.

Changes (the outbox)
    ``with writer.change(entry):`` around the storage call that makes a change stages the entry's
    draft; the adapters write it to ``audit_outbox`` in that call's transaction
    (:mod:`zumik_secrets.storage.outbox`), so the change and its event are both committed or
    neither. The writer thread moves outbox rows into the chain (drain: chain and delete in one
    transaction, ``max_batch`` at a time) when this process wrote some, every ``outbox_poll``
    seconds for other processes' rows (a replica killed before its writer ran), at start and at
    stop. Reads of the chain (query, verify, export, checkpoint) drain first
    (:meth:`AuditWriter.read_barrier`). Nobody waits for the chain: the caller's transaction made
    the event durable.

Recording (events that record no change)
    ``record(entry, durable=...)`` cleans the entry (secret-looking values become
    ``[REDACTED]``, see :func:`zumik_secrets.core.audit_events.sanitize`; an entry that carries
    its :class:`~zumik_secrets.app.audit.CleanFields` was cleaned once by whoever rendered it),
    gives it an id and a time, and queues it for the writer thread.

Group commit
    One writer thread takes *everything* queued (up to ``max_batch`` events) and stores it in
    one transaction (the store chains each tenant's events under that tenant's head lock), so
    many events share one commit. Events that arrive while a commit is in flight form the next
    batch. A durable event is committed at once; when only non-durable events are queued the
    writer lingers up to ``linger`` (``ZUMIK_AUDIT_LINGER_MS``, 20 ms) for more, so a steady
    stream of verification events costs one commit per linger instead of one per few events
    (the wake-ups and commits were most of a warm VerifyApiKey's audit cost, bench/README.md).
    Callers wake the writer only when it sleeps idle, or when their event cannot wait. Bounds:

    * ``durable=True`` callers wait for their batch's commit (one held lock each, released by
      the writer) at most ``durable_timeout`` seconds, then get :class:`Unavailable` (reason
      ``AUDIT_UNAVAILABLE``). If the commit fails they get it at once.
    * ``durable=False`` callers do not wait; their events are written by the next commit, within
      the linger plus one commit (well under 50 ms at the measured commit latencies). If a
      commit fails their events go back to the head of the queue and are retried (backoff
      50 ms doubling to 0.5 s) while the process lives: never silently dropped.
    * The queue is bounded (``queue_limit`` events, retried ones included). When it is full
      ``durable=False`` callers block up to ``enqueue_timeout`` (1 s, and never past their
      deadline) for room, and not at all while the store is unhealthy; only if the store has
      been failing long enough to fill it *and* the wait runs out is an event dropped, and then
      it is counted (:attr:`AuditLog.dropped`) and logged at ERROR, with health already
      NOT_SERVING. (Events of changes never take this path: they commit with the change.)
      ``durable=True`` callers wait for room within their own deadline and get
      Unavailable otherwise.

Health
    :attr:`healthy` turns False when a commit fails and True after the next success; while
    unhealthy and idle the writer probes the store (an insert rolled back) every half second, so
    health recovers without traffic and without a restart.

Stored events are reported to ``on_stored`` (the checkpointer pins them and counts them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TypedDict

from opentelemetry import trace

from zumik_secrets.app.audit import (
    REASON_AUDIT_UNAVAILABLE,
    AuditEntry,
    clean_fields,
    note_recorded,
)
from zumik_secrets.app.metrics import NOOP, Recorder
from zumik_secrets.core import audit_chain as chain
from zumik_secrets.core import deadlines
from zumik_secrets.core.audit_chain import ChainEvent, EventDraft
from zumik_secrets.core.errors import Unavailable, ZumikError
from zumik_secrets.core.handles import new_handle
from zumik_secrets.storage import outbox
from zumik_secrets.storage.ports import AuditStore

_LOG = logging.getLogger("zumik.audit")

_MAX_BACKOFF = 0.5
"""Longest pause of the writer between attempts while the store fails, seconds."""
_TRACER = trace.get_tracer("zumik_secrets.audit")


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


def audit_unavailable() -> Unavailable:
    """The error of a durable record that could not be made durable."""
    return Unavailable("the audit log is unavailable, retry later", reason=REASON_AUDIT_UNAVAILABLE)


class _Pending:
    """A queued event; a durable one carries ``done``, a lock held until it is settled.

    A plain lock (acquired here, released once by whoever settles the event) is the cheapest
    way for the caller to wait: ``acquire(timeout=...)`` waits in C without the GIL, where a
    ``threading.Event`` builds a Python condition and a waiter lock on every call.
    """

    __slots__ = (
        "cancelled",
        "done",
        "draft",
        "dropped",
        "durable",
        "error",
        "link",
        "result",
        "taken",
    )

    def __init__(self, draft: EventDraft, *, durable: bool) -> None:
        self.draft = draft
        self.durable = durable
        self.done: threading.Lock | None = None
        if durable:
            self.done = threading.Lock()
            self.done.acquire()
        self.result: ChainEvent | None = None
        self.error: ZumikError | None = None
        self.taken = False
        self.cancelled = False
        self.dropped = False  # a non-durable event given up on (counted and logged)
        # The waiting caller's span (durable events while tracing): the commit span links it.
        self.link: trace.SpanContext | None = None

    def settle(self) -> None:
        """Wake the waiting caller (durable events; called once, when stored or failed)."""
        if self.done is not None:
            self.done.release()


class WriterOptions(TypedDict, total=False):
    """The writer's tuning (the keyword arguments of :class:`AuditWriter` after ``clock``)."""

    group_commit: bool
    durable_timeout: float
    queue_limit: int
    enqueue_timeout: float
    max_batch: int
    linger: float
    outbox_poll: float


class AuditWriter:
    """Records events: the queue, the writer thread (group commit), the outbox drain, health."""

    def __init__(
        self,
        store: AuditStore,
        *,
        clock: Callable[[], datetime] = utc_now,
        group_commit: bool = True,
        durable_timeout: float = 3.0,
        queue_limit: int = 10_000,
        enqueue_timeout: float = 1.0,
        max_batch: int = 512,
        linger: float = 0.0,
        outbox_poll: float = 1.0,
        on_stored: Callable[[list[ChainEvent]], None] = lambda events: None,
    ) -> None:
        """Create the writer (call :meth:`start` to run its thread).

        Args:
            store: The audit store.
            clock: Current time.
            group_commit: Write through the writer thread (True) or in the caller's thread,
                one transaction per event (False: for measurements).
            durable_timeout: Longest a durable record waits for its commit, seconds (and never
                past the caller's deadline minus a margin). Below the client's default
                deadline (5 s), so a durable call fails UNAVAILABLE rather than time out.
            queue_limit: Events queued (retries included) before callers block.
            enqueue_timeout: Longest a non-durable record waits for queue room, seconds.
            max_batch: Most events per transaction.
            linger: When only non-durable events are queued, how long the writer waits for
                more before committing, seconds (0: commit at once). A durable event or a full
                batch ends the wait. Fewer, larger commits cost less CPU per event; nobody
                waits for a non-durable event, so only its time to disk grows.
            outbox_poll: Seconds between looks at the outbox for events this process did not
                write (another replica's, or one killed before its writer drained them).
            on_stored: Called with the events of every commit (in the committing thread).
        """
        self._store = store
        self._clock = clock
        self._group_commit = group_commit
        self._durable_timeout = durable_timeout
        self._queue_limit = queue_limit
        self._enqueue_timeout = enqueue_timeout
        self._max_batch = max_batch
        self._linger = linger
        self._outbox_poll = outbox_poll
        self._on_stored = on_stored
        self._outbox_due = True  # drain leftovers at start
        self._next_outbox_poll = 0.0
        self._drain_lock = threading.Lock()
        self.drained = 0
        # One lock, two conditions: the writer waits on ``_work``, callers waiting for queue
        # room on ``_room``. A caller wakes the writer only when it is idle (or lingering and the
        # event cannot wait), so a busy writer is not woken once per event.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # queued + in flight, under _lock
        self._durable_queued = 0  # durable events in _queue, under _lock
        self._writer_waiting = False  # the writer sleeps on _work, under _lock
        self._lingering = False  # ... and may sleep on until the linger ends, under _lock
        self._stopping = False
        self._stop = threading.Event()
        self._healthy = True
        self.dropped = 0
        self.commits = 0
        self.on_health_change: Callable[[bool], None] = lambda healthy: None
        #: Where batch sizes, commit and durable-wait times and failures go (the runtime sets it).
        self.metrics: Recorder = NOOP
        # Daemon: if the store is down at shutdown, stop() gives up after its timeout (and logs
        # what was left) instead of keeping the process alive.
        self._writer = threading.Thread(
            target=self._write_loop, name="zumik-audit-writer", daemon=True
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (with group commit)."""
        if self._group_commit:
            self._writer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), stop the thread, drain the outbox (so a
        final checkpoint covers this process's changes). Idempotent."""
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._room.notify_all()
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join(timeout)
        try:
            self.drain_outbox()
        except Exception:  # noqa: BLE001 - what is left is drained at the next start
            _LOG.warning("audit outbox not drained at shutdown (drained at the next start)")
        with self._lock:
            left = [p for p in self._queue if not p.cancelled]
        if left:
            _LOG.error("audit events not written at shutdown", extra={"count": len(left)})

    @property
    def healthy(self) -> bool:
        """False from a failed commit (or probe) until the next successful one."""
        return self._healthy

    def _set_healthy(self, ok: bool) -> None:
        if ok == self._healthy:
            return
        self._healthy = ok
        if ok:
            _LOG.warning("audit store recovered")
        else:
            _LOG.error("audit store unavailable: durable audit records fail closed")
        try:
            self.on_health_change(ok)
        except Exception:  # noqa: BLE001 - a broken observer must not stop the writer
            _LOG.exception("audit health observer failed")

    # -- recording --------------------------------------------------------------------------

    def _draft(self, entry: AuditEntry) -> EventDraft:
        clean = entry.clean or clean_fields(entry.target, entry.reason, entry.attributes)
        return EventDraft(
            tenant=entry.tenant_id or chain.SERVICE_TENANT,
            event_id=new_handle("evt"),
            time=self._clock().astimezone(UTC),
            actor=entry.actor,
            actor_subject=entry.actor_subject,
            action=entry.action,
            target=clean.target,
            outcome=entry.outcome,
            reason=clean.reason,
            trace_id=entry.trace_id,
            attributes=clean.attributes,
        )

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        """Record one event (see the module docstring for the bounds).

        Raises:
            Unavailable: reason ``AUDIT_UNAVAILABLE``, only when ``durable`` and the event
                could not be committed within ``durable_timeout``.
        """
        if durable:
            self.append(entry)
            return
        pending = _Pending(self._draft(entry), durable=False)
        self._submit(pending)
        if not pending.dropped:
            note_recorded(entry.actor)

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Iterator[None]:
        """Record ``entries`` in the transaction of the change the block makes (issue 24).

        Wrap exactly the one storage call that makes the change. The events are written to the
        outbox in that call's transaction, so after any crash the change and its events are
        both there or both absent; the writer thread moves them into the chain (at once, and
        at the next start for leftovers). Nobody waits for the chain.

        If the block raises, nothing is recorded (the caller records a failure if it wants).
        If the block made no change (a revoke of an already revoked key), the events are
        recorded durably instead (:meth:`append`), unless ``record_unchanged`` is False (a
        caller that retries a lost race records nothing for the attempt).

        Raises:
            Unavailable: reason ``AUDIT_UNAVAILABLE``, only on that durable fallback.
        """
        drafts = [self._draft(entry) for entry in entries]
        with outbox.staged(drafts) as holder:
            yield
        if holder.taken:
            self._outbox_written()
            for entry in entries:
                note_recorded(entry.actor)
            return
        if record_unchanged:
            for entry in entries:
                self.append(entry)

    def _outbox_written(self) -> None:
        """Wake the writer to chain the outbox (events of this process just committed)."""
        if self._outbox_due:
            return
        with self._lock:
            self._outbox_due = True
            if self._writer_waiting and not self._lingering:
                self._work.notify()

    def drain_outbox(self, wait: float = -1) -> int:
        """Move every outbox event into the chains now; returns how many.

        Serialised within this process (``wait``: longest wait for another drain of this
        process, seconds; -1 waits for it); other processes drain their share in parallel.

        Raises:
            Unavailable: storage is down (what was moved stays moved), or ``wait`` ran out.
        """
        moved = 0
        if not self._drain_lock.acquire(timeout=wait):
            raise audit_unavailable()
        try:
            self._outbox_due = False
            while True:
                started = time.monotonic()
                try:
                    events = self._store.drain_outbox(self._max_batch)
                except BaseException:
                    self._outbox_due = True
                    self.metrics.audit_batch(0, time.monotonic() - started, False)
                    raise
                if events:
                    self.metrics.audit_batch(len(events), time.monotonic() - started, True)
                moved += len(events)
                self.drained += len(events)
                if events:
                    self.commits += 1
                    self._count(events)
                if len(events) < self._max_batch:
                    return moved
        finally:
            self._drain_lock.release()

    def read_barrier(self) -> None:
        """Before a read of the chain: chain what waits in the outbox (read your changes)."""
        # On failure the read itself reports the outage, or shows what is chained.
        with contextlib.suppress(ZumikError):
            self.drain_outbox(wait=deadlines.budget(1.0))

    def append(self, entry: AuditEntry) -> ChainEvent:
        """Record one event durably and return it as stored (with sequence and hash).

        Raises:
            Unavailable: reason ``AUDIT_UNAVAILABLE`` when it could not be committed in time.
        """
        try:
            wait = deadlines.budget(self._durable_timeout)
        except Unavailable:
            raise audit_unavailable() from None
        pending = _Pending(self._draft(entry), durable=True)
        started = time.monotonic()
        deadline = started + wait
        outcome = "error"
        # A child span of the call: the wait for the commit holding this event (a no-op span
        # when tracing is off). It carries the action only, never the event's content.
        with _TRACER.start_as_current_span(
            "zumik.audit.append", attributes={"zumik.audit.action": pending.draft.action}
        ) as span:
            if span.is_recording():
                pending.link = span.get_span_context()
            try:
                self._submit(pending, deadline)
                done = pending.done
                if done is None or not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    with self._lock:
                        if not pending.taken:
                            pending.cancelled = True
                    if pending.result is not None:
                        outcome = "ok"
                        note_recorded(entry.actor)
                        return pending.result
                    outcome = "timeout"
                    raise audit_unavailable()
                if pending.error is not None or pending.result is None:
                    raise audit_unavailable()
                outcome = "ok"
                note_recorded(entry.actor)
                return pending.result
            finally:
                self.metrics.audit_durable_wait(time.monotonic() - started, outcome)
                if outcome != "ok":
                    span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))

    def _submit(self, pending: _Pending, deadline: float | None = None) -> None:
        if deadline is None:
            # A non-durable event waits for queue room only while the store works (room then
            # comes within a commit) and never past the caller's deadline: during an outage a
            # full queue would otherwise hold every call's worker for the whole wait.
            wait = 0.0 if not self._healthy else self._enqueue_timeout
            left = deadlines.remaining()
            if left is not None:
                wait = max(0.0, min(wait, left))
            deadline = time.monotonic() + wait
        if self._group_commit and self._enqueue(pending, deadline):
            return
        self._write_direct(pending)

    def _enqueue(self, pending: _Pending, deadline: float) -> bool:
        """Queue for the writer; False when stopping (the caller writes it directly).

        Raises:
            Unavailable: a durable event found no room before its deadline.
        """
        with self._lock:
            while self._queued >= self._queue_limit and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._room.wait(remaining)
            if self._stopping:
                return False
            if self._queued >= self._queue_limit:
                if pending.durable:
                    raise audit_unavailable()
                self.dropped += 1
                pending.dropped = True
                _LOG.error(
                    "audit queue full: event dropped",
                    extra={"action": pending.draft.action, "dropped_total": self.dropped},
                )
                return True
            self._queue.append(pending)
            self._queued += 1
            if pending.durable:
                self._durable_queued += 1
            if self._writer_waiting and (
                not self._lingering or pending.durable or len(self._queue) >= self._max_batch
            ):
                self._work.notify()
            return True

    def _write_direct(self, pending: _Pending) -> None:
        """One event, one transaction, in the caller's thread (no group commit)."""
        try:
            (pending.result,) = self._store.append([pending.draft])
        except ZumikError as exc:
            self._set_healthy(False)
            pending.error = exc
            if pending.durable:
                raise audit_unavailable() from exc
            self.dropped += 1
            pending.dropped = True
            _LOG.error("audit event not written", extra={"action": pending.draft.action})
            return
        self._set_healthy(True)
        pending.settle()
        self._count([pending.result])

    # -- the writer thread ------------------------------------------------------------------

    def _take_batch(self) -> list[_Pending] | None:
        """Wait for work; None when stopping with nothing left."""
        with self._lock:
            while not self._queue:
                if self._stopping:
                    return None
                if self._outbox_due or time.monotonic() >= self._next_outbox_poll:
                    return []  # the outbox first
                if not self._healthy:
                    self._sleep(0.5)
                    if not self._queue:
                        return []  # idle while unhealthy: probe
                    break
                self._sleep(max(0.0, min(1.0, self._next_outbox_poll - time.monotonic())))
            if self._linger > 0:
                self._linger_for_more()
            batch: list[_Pending] = []
            while self._queue and len(batch) < self._max_batch:
                pending = self._queue.popleft()
                if pending.durable:
                    self._durable_queued -= 1
                if pending.cancelled:
                    self._queued -= 1
                    continue
                pending.taken = True
                batch.append(pending)
            self._room.notify_all()
            return batch

    def _sleep(self, timeout: float) -> None:
        """Wait on ``_work`` (lock held) with the writer marked as waiting."""
        self._writer_waiting = True
        try:
            self._work.wait(timeout)
        finally:
            self._writer_waiting = False

    def _linger_for_more(self) -> None:
        """With only non-durable events queued, wait up to ``linger`` for a fuller batch."""
        deadline = time.monotonic() + self._linger
        self._lingering = True
        try:
            while (
                not self._stopping
                and self._durable_queued == 0
                and len(self._queue) < self._max_batch
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._sleep(remaining)
        finally:
            self._lingering = False

    def _drain_in_writer(self) -> bool:
        """Drain the outbox when due; False if the store failed (the writer backs off)."""
        now = time.monotonic()
        if not self._outbox_due and now < self._next_outbox_poll:
            return True
        self._next_outbox_poll = now + self._outbox_poll
        try:
            moved = self.drain_outbox()
        except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
            if not isinstance(exc, Unavailable):
                _LOG.error("audit outbox drain failed unexpectedly", exc_info=exc)
            self._set_healthy(False)
            return False
        if moved:  # an empty outbox says nothing about whether the chain takes writes
            self._set_healthy(True)
        return True

    def _write_loop(self) -> None:
        backoff = 0.05
        while True:
            if not self._drain_in_writer():
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, _MAX_BACKOFF)
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                if not self._healthy:
                    self.probe()
                continue
            started = time.monotonic()
            try:
                with self._commit_span(batch):
                    stored = self._store.append([p.draft for p in batch])
            except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
                self.metrics.audit_batch(len(batch), time.monotonic() - started, False)
                self._failed(batch, exc)
                if self._stop.wait(backoff):
                    return  # stopping while the store fails: stop() reports what is left
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.05
            self.metrics.audit_batch(len(batch), time.monotonic() - started, True)
            self.commits += 1
            self._set_healthy(True)
            with self._lock:
                self._queued -= len(batch)
                self._room.notify_all()
            for pending, event in zip(batch, stored, strict=True):
                pending.result = event
                pending.settle()
            self._count(stored)

    def _commit_span(self, batch: list[_Pending]) -> AbstractContextManager[trace.Span]:
        """The span of one group commit, linked to the spans of the durable callers waiting
        for it (a batch serves many calls, so it is nobody's child)."""
        links = [trace.Link(p.link) for p in batch if p.link is not None]
        if not links:
            # Batches of non-durable events only: no traced caller waits, no span (a root span
            # per linger would be noise).
            return nullcontext(trace.INVALID_SPAN)
        return _TRACER.start_as_current_span(
            "zumik.audit.commit",
            kind=trace.SpanKind.INTERNAL,
            links=links,
            attributes={"zumik.audit.batch_size": len(batch)},
        )

    @property
    def queue_depth(self) -> int:
        """Events queued or in flight (the metrics read it when scraped)."""
        return self._queued

    def _failed(self, batch: list[_Pending], exc: Exception) -> None:
        self.metrics.audit_append_failed(len(batch), any(p.durable for p in batch))
        outage = isinstance(exc, Unavailable)
        if not outage:
            _LOG.error("audit batch failed unexpectedly", exc_info=exc)
        self._set_healthy(False)
        # Non-durable events are kept for the retry (unless the failure is not an outage, when
        # retrying would fail forever); durable callers learn of the failure at once.
        keep = [p for p in batch if not p.durable] if outage else []
        with self._lock:
            for pending in reversed(keep):
                pending.taken = False
                self._queue.appendleft(pending)
            self._queued -= len(batch) - len(keep)
            self._room.notify_all()
        if not outage:
            self.dropped += sum(1 for p in batch if not p.durable)
        for pending in batch:
            if pending.durable:
                pending.error = audit_unavailable()
                pending.settle()

    def probe(self) -> bool:
        """Try an audit write (rolled back); update and return :attr:`healthy`."""
        try:
            with deadlines.bounded(1.0):
                self._store.probe_write()
        except Exception:  # noqa: BLE001 - any failure means still unhealthy
            return False
        self._set_healthy(True)
        return True

    def _count(self, stored: list[ChainEvent]) -> None:
        self._on_stored(stored)
