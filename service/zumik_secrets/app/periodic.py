"""The one periodic background job: a daemon thread calling a function on a timer.

Every background loop of the service (the fingerprint sweep, retention runs, usage flushes, the
change watcher's polls, the denial-audit flushes) is a :class:`PeriodicJob`, so they share one
behaviour:

* ``start`` starts the thread (idempotent); the first run comes one interval after it, or at
  once after :meth:`PeriodicJob.wake`.
* A run that raises does not end the job: a :class:`~zumik_secrets.core.errors.ZumikError` (an
  outage: storage, a KMS) is logged as a warning with its reason, anything else with its
  traceback; the next run comes one interval later.
* ``stop`` wakes the thread, waits for the run in progress (at most ``join_timeout``), then runs
  ``drain`` once if given (a final flush, so a clean shutdown loses nothing). Idempotent: the
  drain runs once, and only after a start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from zumik_secrets.core.errors import ZumikError


class PeriodicJob:
    """Runs ``run`` every ``interval`` seconds in one daemon thread."""

    def __init__(
        self,
        name: str,
        interval: float,
        run: Callable[[], object],
        *,
        log: logging.Logger,
        drain: Callable[[], object] | None = None,
        join_timeout: float = 5.0,
    ) -> None:
        """Create the job (not started).

        Args:
            name: What it does, for the thread name (``zumik-<name>``) and log lines.
            interval: Seconds between the end of one run and the start of the next.
            run: The work; its result is ignored, its exceptions logged.
            log: Where failures are logged.
            drain: Called once by :meth:`stop` after the thread ended (exceptions logged).
            join_timeout: Longest wait in :meth:`stop` for the run in progress, seconds.
        """
        self.name = name
        self._interval = interval
        self._run = run
        self._log = log
        self._drain = drain
        self._join_timeout = join_timeout
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Runs that raised since start (a metric for tests and operators).
        self.failures = 0

    @property
    def interval(self) -> float:
        """Seconds between runs (part of bounds the service states, e.g. destruction delay)."""
        return self._interval

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread (a second start while it runs does nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"zumik-{self.name.replace(' ', '-')}", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """Run as soon as the run in progress (if any) ends, instead of at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread, then drain once. Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stopping.set()
            self._wake.set()
        thread.join(timeout=self._join_timeout)
        if thread.is_alive():
            self._log.error("%s did not stop within %.1f s", self.name, self._join_timeout)
        if self._drain is not None:
            self._guarded(self._drain)

    def run_once(self) -> bool:
        """Run the work now in the calling thread; True when it did not raise (failures are
        logged, as in the thread)."""
        return self._guarded(self._run)

    def _guarded(self, work: Callable[[], object]) -> bool:
        try:
            work()
        except ZumikError as error:
            self.failures += 1
            self._log.warning("%s failed: %s", self.name, error.reason)
            return False
        except Exception:  # noqa: BLE001 - a background job must never end its thread
            self.failures += 1
            self._log.exception("%s failed", self.name)
            return False
        return True

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            self._guarded(self._run)


__all__ = ["PeriodicJob"]
