"""Bounds on work that waits for someone else: breakers, per-tenant caps, per-key locks.

DESIGN.md section 11: no network call runs under a lock shared across tenants or without an
overall deadline. The pieces (issue 15, finding 3: one tenant's dripping key server pinned every
worker through a process-wide stripe lock):

- :class:`CircuitBreaker` per customer key server: after ``failures`` consecutive failures
  (unreachable, timed out, 5xx) calls fail at once with UNAVAILABLE for ``open_seconds``; then
  one probe is let through, and its outcome closes or reopens the circuit.
- :class:`TenantGate`: at most ``limit`` calls of one tenant wait on its customer key at once
  (the call to the key server and the calls waiting for that call's answer); beyond, the call is
  refused at once with RESOURCE_EXHAUSTED ``CUSTOMER_KEY_BUSY``.
- :class:`KeyedLocks`: single-flight per key (one data-key version, one triple), never per
  stripe: a lock is shared only by calls for the same key, hence the same tenant; a waiter waits
  no longer than its caller's deadline, and when the call it waited for failed it gets the same
  answer at once instead of repeating the slow call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

from zumik_secrets.app.deadlines import budget
from zumik_secrets.core.errors import ResourceExhausted, Unavailable, ZumikError

#: Most breakers kept (one per customer key server); closed ones are forgotten first.
MAX_BREAKERS = 10_000


class CircuitOpen(Exception):
    """The circuit is open: fail the call fast (the adapter maps it to its UNAVAILABLE)."""


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    def __init__(
        self,
        failures: int = 3,
        open_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open after ``failures`` consecutive failures, for ``open_seconds``."""
        self._threshold = failures
        self._open_seconds = open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` (failing fast) or ``half_open`` (a probe may go or is going)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._probing or self._clock() - self._opened_at >= self._open_seconds:
                return "half_open"
            return "open"

    @property
    def is_closed(self) -> bool:
        """Whether the breaker has seen no failure since its last success."""
        with self._lock:
            return self._opened_at is None and self._failures == 0

    def before(self) -> None:
        """Ask to make a call.

        Raises:
            CircuitOpen: the circuit is open (or half-open with its probe in flight).
        """
        with self._lock:
            if self._opened_at is None:
                return
            if self._clock() - self._opened_at < self._open_seconds or self._probing:
                raise CircuitOpen()
            self._probing = True

    def success(self) -> None:
        """The call succeeded: close the circuit."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def failure(self) -> None:
        """The call failed (unreachable, timed out): count it, open past the threshold."""
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self._threshold:
                self._opened_at = self._clock()
            self._probing = False

    def neutral(self) -> None:
        """The call got an answer that says nothing about reachability (a refusal)."""
        self.success()


class Breakers:
    """One :class:`CircuitBreaker` per server (bounded)."""

    def __init__(self, failures: int = 3, open_seconds: float = 10.0) -> None:
        """Breakers open after ``failures`` failures, for ``open_seconds``."""
        self._failures = failures
        self._open_seconds = open_seconds
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def for_server(self, server: str) -> CircuitBreaker:
        """The breaker of ``server`` (``scheme://host:port``)."""
        with self._lock:
            breaker = self._breakers.get(server)
            if breaker is None:
                if len(self._breakers) >= MAX_BREAKERS:
                    self._breakers = {k: b for k, b in self._breakers.items() if not b.is_closed}
                    if len(self._breakers) >= MAX_BREAKERS:
                        self._breakers.clear()
                breaker = CircuitBreaker(self._failures, self._open_seconds)
                self._breakers[server] = breaker
            return breaker

    def states(self) -> dict[str, int]:
        """How many breakers are ``closed``, ``open`` and ``half_open`` now (the metrics)."""
        with self._lock:
            breakers = list(self._breakers.values())
        counts = {"closed": 0, "open": 0, "half_open": 0}
        for breaker in breakers:
            counts[breaker.state] += 1
        return counts


def customer_key_busy(limit: int) -> ResourceExhausted:
    """Too many calls of this tenant already wait on its customer key."""
    return ResourceExhausted(
        f"too many calls of this tenant wait on its customer-managed key (at most {limit});"
        " retry later",
        reason="CUSTOMER_KEY_BUSY",
        retry_after_seconds=1.0,
        metadata={"limit": str(limit)},
    )


class TenantGate:
    """At most ``limit`` concurrent holders per tenant; beyond, refused at once."""

    def __init__(self, limit: int = 4) -> None:
        """Allow ``limit`` holders per tenant."""
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    @contextmanager
    def enter(self, tenant_id: str) -> Iterator[None]:
        """Hold one of the tenant's slots for the body.

        Raises:
            ResourceExhausted: ``CUSTOMER_KEY_BUSY``.
        """
        with self._lock:
            held = self._held.get(tenant_id, 0)
            if held >= self.limit:
                raise customer_key_busy(self.limit)
            self._held[tenant_id] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held.get(tenant_id, 1) - 1
                if left > 0:
                    self._held[tenant_id] = left
                else:
                    self._held.pop(tenant_id, None)

    def held(self, tenant_id: str) -> int:
        """Slots the tenant holds now."""
        with self._lock:
            return self._held.get(tenant_id, 0)


def key_busy() -> Unavailable:
    """A waiter gave up: the call loading the same key did not finish within its deadline."""
    return Unavailable(
        "the key is being loaded by another call that did not finish in time; retry later",
        reason="DATA_KEY_BUSY",
    )


class _Entry:
    __slots__ = ("busy", "cond", "done", "failed", "users")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.busy = False
        self.users = 0
        self.done = 0  # holders that finished
        self.failed: tuple[int, ZumikError] | None = None  # (done count after it, the error)


class KeyedLocks:
    """Single-flight locks, one per key, created on demand and dropped when unused."""

    def __init__(self, max_wait: float = 30.0) -> None:
        """Waiters wait at most ``max_wait`` seconds (less when their deadline is nearer)."""
        self._max_wait = max_wait
        self._lock = threading.Lock()
        self._locks: dict[Hashable, _Entry] = {}

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        """Hold ``key``'s lock for the body.

        A call that waited while the holder failed gets the holder's error at once (its key
        server timed out, say) instead of making the same slow call again, one waiter after the
        other; a call that arrives after that failure tries again itself.

        Raises:
            Unavailable: ``DATA_KEY_BUSY`` when the wait outlasts the caller's deadline.
            ZumikError: the error of the holder this call waited for.
        """
        with self._lock:
            entry = self._locks.get(key)
            if entry is None:
                entry = _Entry()
                self._locks[key] = entry
            entry.users += 1
        try:
            deadline = time.monotonic() + budget(self._max_wait)
            with entry.cond:
                seen = entry.done
                while True:
                    failed = entry.failed
                    if failed is not None and failed[0] > seen:
                        raise failed[1]
                    if not entry.busy:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise key_busy()
                    entry.cond.wait(left)
                entry.busy = True
            error: ZumikError | None = None
            try:
                yield
            except ZumikError as exc:
                error = exc
                raise
            finally:
                with entry.cond:
                    entry.done += 1
                    entry.failed = None if error is None else (entry.done, error)
                    entry.busy = False
                    entry.cond.notify_all()
        finally:
            with self._lock:
                entry.users -= 1
                if entry.users == 0:
                    self._locks.pop(key, None)

    def __len__(self) -> int:
        """Keys with a lock now (tests)."""
        with self._lock:
            return len(self._locks)
