"""LISTEN on the change feed's channel, on a dedicated connection in a daemon thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

NOTIFY_CHANNEL = "zumik_changes"
"""The channel every change is notified on (payload: the new highest seq)."""

_log = logging.getLogger(__name__)


class PgChangeListener:
    """A LISTEN subscription on a dedicated connection (outside the pool), in a daemon thread.

    Reconnects with backoff if the connection drops, and calls the callback after each
    reconnect because notifications sent meanwhile are lost.
    """

    _POLL_SECONDS = 0.25  # how often the thread checks for stop(); bounds stop() latency

    def __init__(
        self, conninfo: str, connect_kwargs: Mapping[str, Any], callback: Callable[[], None]
    ) -> None:
        self._conninfo = conninfo
        self._kwargs = dict(connect_kwargs)
        self._callback = callback
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.first_attempt_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zumik-pg-listen", daemon=True)
        self._thread.start()

    def _fire(self) -> None:
        try:
            self._callback()
        except Exception:  # noqa: BLE001 - a broken callback must not kill the listener
            _log.exception("change listener callback failed")

    def _run(self) -> None:
        backoff = 0.1
        connected_before = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.ready.set()
                    self.first_attempt_done.set()
                    if connected_before:
                        self._fire()
                    connected_before = True
                    backoff = 0.1
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=self._POLL_SECONDS):
                            self._fire()
                            if self._stop.is_set():
                                break
            except psycopg.Error:
                self.first_attempt_done.set()
                _log.warning("change listener lost its connection; reconnecting")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def stop(self) -> None:
        """Stop listening and close the dedicated connection. Idempotent."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
