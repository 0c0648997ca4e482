"""The background thread that keeps usage writes off the verify path.

Every ``flush_interval`` seconds it writes the batched API-key ``last_used_at`` and session
``last_seen_at`` times (one statement each), and every ``sweep_interval`` seconds it deletes
expired and revoked sessions. ``stop`` flushes once more so a clean shutdown loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.core.errors import ZumikError

_LOG = logging.getLogger("zumik.usage")


class UsageFlusher:
    """Runs the flush and sweep callables on a timer in one daemon thread (a
    :class:`~zumik_secrets.app.periodic.PeriodicJob` that flushes, and sweeps when due)."""

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
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self._job = PeriodicJob("usage", flush_interval, self._tick, log=_LOG, drain=self.flush)

    def start(self) -> None:
        """Start the thread."""
        self._next_sweep = time.monotonic() + self._sweep_interval
        self._job.start()

    def stop(self) -> None:
        """Stop the thread, then flush once more. Idempotent."""
        self._job.stop()

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

    def _tick(self) -> None:
        self.flush()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self._sweep_interval
            self.sweep()
