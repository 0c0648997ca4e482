"""Bounded work per peer and per process: admission, per-peer caps, stream pool, load shedding.

DESIGN.md section 11 ("Bound before processing"): one caller must not be able to stop the
service for everyone. The threaded server has a fixed pool of workers; whatever holds one
(a slow call, an idle stream) holds it for every tenant. So:

- **Streams never sit in the unary pool.** Non-blocking handlers (``Health/Watch``) keep their
  nature and hold no thread at all; blocking stream handlers (reflection, ``ExportEvents``) run
  in their own pool (:attr:`Limits.stream_pool`), so a handful of idle streams cannot take the
  workers unary calls need; when that pool is full a new blocking stream is refused at once
  instead of queueing.
- **Per-peer caps.** A peer (the SPIFFE ID of its verified certificate; every certificate the
  policy does not name counts as one peer, ``""``) may hold at most ``max_calls_per_peer``
  *slow* unary calls (running for :data:`SLOW_CALL_SECONDS` or more: the ones that hold workers)
  and at most ``max_streams_per_peer`` streams at once; beyond, a new call is refused at once
  with RESOURCE_EXHAUSTED (``PEER_CALL_LIMIT`` / ``PEER_STREAM_LIMIT``). Fast calls never count:
  a busy but healthy client (one gateway serving every tenant at high concurrency) is never
  refused by this cap, while a peer whose calls hang (a dripping key server, a stalled
  dependency) can hold at most its cap of workers and leaves the rest to everyone else.
- **Load shedding.** The unary pool counts what was submitted and has not finished (running plus
  queued). Beyond ``workers + max_queued_calls`` a new call is answered RESOURCE_EXHAUSTED
  (``SERVER_OVERLOADED``) from a small pool of its own, within milliseconds, instead of waiting
  in a queue past its deadline; a queued call whose deadline passed while it waited is refused
  without running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from zumik_secrets.core.errors import ResourceExhausted

_LOG = logging.getLogger("zumik.server")

#: Longest peer identity kept as a counter key (SPIFFE IDs are far shorter; a longer one is cut).
MAX_PEER_KEY = 512
#: A unary call running this long counts against its peer's cap (it is holding a worker).
SLOW_CALL_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The limits (``ServerConfig`` fills them from ``ZUMIK_*``).

    Attributes:
        workers: Threads of the unary pool.
        max_calls_per_peer: Slow unary calls one peer may hold at once (0: ``workers * 3 // 4``,
            at least 1): a peer can never hold every worker with hanging calls.
        max_streams_per_peer: Streams one peer may hold open at once.
        stream_workers: Threads of the pool for blocking stream handlers; when all are taken a
            new blocking stream is refused at once (RESOURCE_EXHAUSTED ``SERVER_OVERLOADED``).
        max_queued_calls: Unary calls allowed to wait for a worker before new ones are shed.
    """

    workers: int = 16
    max_calls_per_peer: int = 0
    max_streams_per_peer: int = 8
    stream_workers: int = 32
    max_queued_calls: int = 64

    @property
    def calls_per_peer(self) -> int:
        """The effective per-peer unary cap."""
        if self.max_calls_per_peer > 0:
            return self.max_calls_per_peer
        return max(1, self.workers * 3 // 4)


_TASK_LOCK = threading.Lock()
"""Guards the hand-over between a task's end and a done-callback or waiter added meanwhile
(held for a few instructions; one lock for all tasks costs less than a Condition per task)."""

_PENDING, _FINISHED, _FAILED = 0, 1, 2


class _Task:
    """A submitted call and its outcome: the part of :class:`concurrent.futures.Future` grpcio
    and the tests use (``add_done_callback``, ``result``, ``done``), without a Condition, two
    lock cycles and a notify per call."""

    __slots__ = ("_args", "_callbacks", "_fn", "_kwargs", "_state", "_value", "_waiter")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._state = _PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Any], None]] | None = None
        self._waiter: threading.Event | None = None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(self)`` once the task finished (at once if it has)."""
        with _TASK_LOCK:
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        fn(self)

    def done(self) -> bool:
        """Whether the task finished (or was cancelled by a shutdown)."""
        return self._state != _PENDING

    def cancel(self) -> bool:
        """A task is never cancelled once submitted (grpcio does not ask)."""
        return False

    def cancelled(self) -> bool:
        """See :meth:`cancel`."""
        return False

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value (re-raises its exception).

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        with _TASK_LOCK:
            waiter = None
            if self._state == _PENDING:
                if self._waiter is None:
                    self._waiter = threading.Event()
                waiter = self._waiter
        if waiter is not None and not waiter.wait(timeout):
            raise TimeoutError
        if self._state == _FAILED:
            raise self._value
        return self._value

    def run(self) -> tuple[int, Any]:
        """Run the call; returns its outcome for :meth:`settle`."""
        try:
            return _FINISHED, self._fn(*self._args, **self._kwargs)
        except BaseException as error:  # noqa: BLE001 - kept for result(), as a Future does
            return _FAILED, error
        finally:
            self._fn = self._args = self._kwargs = None  # type: ignore[assignment]

    def settle(self, state: int, value: Any) -> None:
        """Record the outcome, wake a waiter and run the done-callbacks."""
        with _TASK_LOCK:
            self._state = state
            self._value = value
            callbacks, self._callbacks = self._callbacks, None
            waiter = self._waiter
        if waiter is not None:
            waiter.set()
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - as a Future: a failing callback is logged
                _LOG.exception("done-callback of a pool task failed")


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that knows how many submitted tasks have not finished (queued + running).

    Lean: a task is a :class:`_Task` on one :class:`queue.SimpleQueue`, run by up to
    ``max_workers`` threads started on demand; no Future, work item, idle semaphore or weak
    reference per call (measured at several percent of an empty RPC's server CPU). It stays a
    :class:`ThreadPoolExecutor` by type because grpcio runs a handler in the pool named by its
    ``experimental_thread_pool`` only if that is one (the stream pool relies on it).
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        """Create the pool (no thread starts before the first task)."""
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._prefix = thread_name_prefix or "pool"
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._count_lock = threading.Lock()
        self._unfinished = 0
        self._closed = False

    @property
    def unfinished(self) -> int:
        """Tasks submitted and not yet finished."""
        return self._unfinished

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Queue ``fn(*args, **kwargs)``, counting it until it returns (grpcio always runs
        what it submits, even for a call cancelled while queued, so the count cannot leak).

        Raises:
            RuntimeError: after :meth:`shutdown`.
        """
        task = _Task(fn, args, kwargs)
        with self._count_lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._unfinished += 1
            if self._unfinished > len(self._workers) and len(self._workers) < self._max_workers:
                worker = threading.Thread(
                    target=self._work,
                    name=f"{self._prefix}_{len(self._workers)}",
                    daemon=True,
                )
                self._workers.append(worker)
                worker.start()
        self._tasks.put(task)
        return task

    def _work(self) -> None:
        get = self._tasks.get
        while True:
            task = get()
            if task is None:
                return
            state, value = task.run()
            with self._count_lock:
                self._unfinished -= 1
            task.settle(state, value)
            del task, value

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; run what is queued (or drop it with ``cancel_futures``), then
        stop the threads (joined when ``wait``)."""
        with self._count_lock:
            self._closed = True
            workers = list(self._workers)
        if cancel_futures:
            while True:
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    with self._count_lock:
                        self._unfinished -= 1
                    task.settle(_FAILED, CancelledError())
        for _ in workers:
            self._tasks.put(None)
        if wait:
            for worker in workers:
                if worker is not threading.current_thread():
                    worker.join()


def _peer_limit(kind: str, limit: int) -> ResourceExhausted:
    if kind == "call":
        return ResourceExhausted(
            f"too many concurrent calls from this caller (at most {limit}); retry later",
            reason="PEER_CALL_LIMIT",
            retry_after_seconds=0.1,
            metadata={"limit": str(limit)},
        )
    return ResourceExhausted(
        f"too many concurrent streams from this caller (at most {limit}); retry later",
        reason="PEER_STREAM_LIMIT",
        retry_after_seconds=1.0,
        metadata={"limit": str(limit)},
    )


def overloaded() -> ResourceExhausted:
    """The answer of a shed call."""
    return ResourceExhausted(
        "the server is overloaded; retry with backoff",
        reason="SERVER_OVERLOADED",
        retry_after_seconds=0.1,
    )


class _Counter:
    """Concurrent holders per key; an entry exists only while its count is positive."""

    def __init__(self, limit: int, kind: str) -> None:
        self._limit = limit
        self._kind = kind
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def acquire(self, key: str) -> Callable[[], None]:
        key = key[:MAX_PEER_KEY]
        with self._lock:
            held = self._counts.get(key, 0)
            if held >= self._limit:
                raise _peer_limit(self._kind, self._limit)
            self._counts[key] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._counts.get(key, 1) - 1
                if left > 0:
                    self._counts[key] = left
                else:
                    self._counts.pop(key, None)

        return release

    def held(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key[:MAX_PEER_KEY], 0)


class _SlowCalls:
    """Running calls per key; refuses a new one while ``limit`` of the key's calls are slow."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, dict[object, float]] = {}

    def acquire(self, key: str) -> Callable[[], None]:
        key = key[:MAX_PEER_KEY]
        token = object()
        with self._lock:
            now = self._clock()
            running = self._running.setdefault(key, {})
            if len(running) >= self._limit:
                slow = sum(1 for started in running.values() if now - started >= SLOW_CALL_SECONDS)
                if slow >= self._limit:
                    raise _peer_limit("call", self._limit)
            running[token] = now

        def release() -> None:
            with self._lock:
                calls = self._running.get(key)
                if calls is not None:
                    calls.pop(token, None)
                    if not calls:
                        del self._running[key]

        return release

    def held(self, key: str) -> int:
        with self._lock:
            return len(self._running.get(key[:MAX_PEER_KEY], {}))


class Limits:
    """The admission state of one server process."""

    def __init__(
        self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Create the pools and counters (``clock``: for tests)."""
        self.settings = settings
        self.unary_pool = CountingExecutor(settings.workers, thread_name_prefix="zumik-rpc")
        self.stream_pool = CountingExecutor(
            settings.stream_workers, thread_name_prefix="zumik-stream"
        )
        #: Answers shed calls, over-long method paths and health checks; two threads suffice
        #: (each takes microseconds).
        self.shed_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zumik-shed")
        self._calls = _SlowCalls(settings.calls_per_peer, clock)
        self._streams = _Counter(settings.max_streams_per_peer, "stream")
        self.shed_count = 0

    def overloaded(self) -> bool:
        """Whether a new unary call should be shed (called on grpc's polling thread: cheap)."""
        over = self.unary_pool.unfinished >= self.settings.workers + self.settings.max_queued_calls
        if over:
            self.shed_count += 1
        return over

    def streams_full(self) -> bool:
        """Whether every stream worker is taken: a new blocking stream is refused at once
        rather than queued behind streams that may stay open for the connection's life."""
        full = self.stream_pool.unfinished >= self.settings.stream_workers
        if full:
            self.shed_count += 1
        return full

    def admit(self, peer: str, time_remaining: float | None) -> Callable[[], None]:
        """Take one of ``peer``'s unary-call slots; returns its release (call it once).

        Raises:
            ResourceExhausted: ``PEER_CALL_LIMIT``, or ``SERVER_OVERLOADED`` when the call's
                deadline passed while it waited for a worker.
        """
        if time_remaining is not None and time_remaining <= 0:
            raise overloaded()
        return self._calls.acquire(peer)

    @contextmanager
    def call(self, peer: str, time_remaining: float | None) -> Iterator[None]:
        """Hold one of ``peer``'s unary-call slots for the body (see :meth:`admit`)."""
        release = self.admit(peer, time_remaining)
        try:
            yield
        finally:
            release()

    def stream(self, peer: str) -> Callable[[], None]:
        """Take one of ``peer``'s stream slots; returns the (idempotent) release.

        Raises:
            ResourceExhausted: ``PEER_STREAM_LIMIT``.
        """
        return self._streams.acquire(peer)

    def calls_held(self, peer: str) -> int:
        """Unary calls ``peer`` runs now (tests, metrics)."""
        return self._calls.held(peer)

    def streams_held(self, peer: str) -> int:
        """Streams ``peer`` holds now (tests, metrics)."""
        return self._streams.held(peer)

    def shutdown(self) -> None:
        """Stop the side pools (the server stops the unary pool's work itself)."""
        self.stream_pool.shutdown(wait=False, cancel_futures=True)
        self.shed_pool.shutdown(wait=False, cancel_futures=True)
