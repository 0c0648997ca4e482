"""The background thread that keeps usage writes off the verify path.

Every ``flush_interval`` seconds it writes the batched API-key ``last_used_at`` and session
``last_seen_at`` times (one statement each), and every ``sweep_interval`` seconds it deletes
expired and revoked sessions. ``stop`` flushes once more so a clean shutdown loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from zumik_secrets.core.errors import ZumikError

_LOG = logging.getLogger("zumik.usage")


class UsageFlusher:
    """Runs the flush and sweep callables on a timer in one daemon thread."""

    def __init__(
        self,
        flushes: list[Callable[[], int]],
        sweeps: list[Callable[[], int]],
        *,
        flush_interval: float = 1.0,
        sweep_interval: float = 300.0,
    ) -> None:
        """Create the flusher (not started).

        Args:
            flushes: Called every ``flush_interval`` seconds (each returns rows written).
            sweeps: Called every ``sweep_interval`` seconds (each returns rows deleted).
            flush_interval: Seconds between flushes.
            sweep_interval: Seconds between sweeps.
        """
        self._flushes = flushes
        self._sweeps = sweeps
        self._flush_interval = flush_interval
        self._sweep_interval = sweep_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="zumik-usage", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then flush once more. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            self.flush()

    def flush(self) -> None:
        """Run every flush now (storage errors are logged; the batches are kept)."""
        self._run_all(self._flushes, "flush")

    def sweep(self) -> None:
        """Run every sweep now (storage errors are logged)."""
        self._run_all(self._sweeps, "sweep")

    @staticmethod
    def _run_all(jobs: list[Callable[[], int]], what: str) -> None:
        for job in jobs:
            try:
                job()
            except ZumikError as error:
                _LOG.warning("usage %s failed: %s", what, error.reason)
            except Exception:  # noqa: BLE001 - a background job must never kill the thread
                _LOG.exception("usage %s failed", what)

    def _run(self) -> None:
        next_sweep = time.monotonic() + self._sweep_interval
        while not self._stop.wait(self._flush_interval):
            self.flush()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self._sweep_interval
                self.sweep()
