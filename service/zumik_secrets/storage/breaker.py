"""A circuit breaker for the database (issue 24; finding 7 of issue 15).

While the database is down every call used to wait out the pool timeout (3 s) before answering
UNAVAILABLE, holding a worker thread meanwhile: a few failing calls a second filled the worker
pool. The breaker opens after ``threshold`` consecutive connection failures; while open, calls
fail at once (UNAVAILABLE in microseconds, with a retry hint) instead of waiting. After
``open_seconds`` one trial call goes through (half-open): success closes the breaker, failure
opens it again. The store's readiness probe (run every quarter second while unhealthy) closes
it as soon as the database answers, so recovery does not wait for the trial.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from zumik_secrets.core import errors

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker; thread-safe, cheap when closed (one attribute read)."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        open_seconds: float = 1.0,
        make_error: Callable[[], errors.Unavailable],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a closed breaker.

        Args:
            threshold: Consecutive failures that open it.
            open_seconds: How long it stays open before a trial call.
            make_error: The error of a call refused while open.
            clock: Monotonic seconds.
        """
        self._threshold = threshold
        self._open_seconds = open_seconds
        self._make_error = make_error
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial = False
        self.opened = 0  # times it opened (for tests and metrics)

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        return self._state

    def before(self) -> None:
        """Call before using the database.

        Raises:
            Unavailable: the breaker is open (or half-open with its trial call in flight).
        """
        if self._state == CLOSED:
            return
        with self._lock:
            if self._state == CLOSED:
                return
            now = self._clock()
            if self._state == OPEN and now - self._opened_at >= self._open_seconds:
                self._state = HALF_OPEN
                self._trial = False
            if self._state == HALF_OPEN and not self._trial:
                self._trial = True  # this call is the trial
                return
            left = max(0.05, self._open_seconds - (now - self._opened_at))
        error = self._make_error()
        error.retry_after_seconds = left
        raise error

    def success(self) -> None:
        """A call reached the database (closes the breaker)."""
        if self._state == CLOSED and self._failures == 0:
            return
        with self._lock:
            self._failures = 0
            self._state = CLOSED
            self._trial = False

    def failure(self) -> None:
        """A call could not reach the database."""
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self._failures >= self._threshold
            ):
                if self._state == CLOSED:
                    self.opened += 1
                self._state = OPEN
                self._opened_at = self._clock()
                self._trial = False

    def reset(self) -> None:
        """Close the breaker (the readiness probe reached the database)."""
        self.success()
