"""Follows the store's change feed and tells in-memory caches what changed elsewhere.

Revocations, rotations and settings changes made by any replica are appended to the change feed
in the same transaction as the change. This watcher reads the feed after a PostgreSQL NOTIFY (or
every ``poll_interval`` seconds, which is the only signal on SQLite and the safety net on
PostgreSQL) and calls the subscribers registered for each kind. The propagation bound is
therefore ``poll_interval`` plus one feed read, whichever backend is used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

from zumik_secrets.app.metrics import NOOP, Recorder
from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.core.errors import ZumikError
from zumik_secrets.storage.ports import ChangeFeed, ChangeListener
from zumik_secrets.storage.records import ChangeRecord

_LOG = logging.getLogger("zumik.changes")

Subscriber = Callable[[ChangeRecord], None]

#: A caller about to answer from feed-invalidated memory reads the feed itself when the last
#: read is older than this many poll intervals (:meth:`ChangeWatcher.catch_up`): a healthy
#: watcher reads every interval, so only a paused or starved process pays for it.
CATCH_UP_POLLS = 3


def freshness_bound(poll_interval: float) -> float:
    """How long after its last successful read the feed still counts as followed, seconds:
    two poll intervals plus a second for a slow read (the propagation bound that caches
    relying on the feed promise)."""
    return 2 * poll_interval + 1.0


class ChangeWatcher:
    """A background thread dispatching change records to subscribers."""

    def __init__(self, feed: ChangeFeed, *, poll_interval: float = 0.25) -> None:
        """Create the watcher (not started).

        Args:
            feed: The store's change feed.
            poll_interval: Longest time between two reads of the feed, in seconds.
        """
        self._feed = feed
        self._poll_interval = poll_interval
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)
        self._job = PeriodicJob("change watcher", poll_interval, self._poll, log=_LOG)
        self._listener: ChangeListener | None = None
        self._seq = 0
        self._poll_lock = threading.Lock()
        self._catch_up_after = CATCH_UP_POLLS * poll_interval
        self._next_catch_up = 0.0
        #: Monotonic time of the last successful read of the feed (the metrics report its age).
        self.last_success = time.monotonic()
        #: Where the delay from a change's commit to its dispatch here goes.
        self.metrics: Recorder = NOOP

    @property
    def poll_interval(self) -> float:
        """The stated propagation bound, in seconds (plus one feed read)."""
        return self._poll_interval

    def is_fresh(self) -> bool:
        """Whether the feed was read within :func:`freshness_bound` (every change committed
        before then has been dispatched)."""
        return time.monotonic() - self.last_success <= freshness_bound(self._poll_interval)

    def subscribe(self, kind: str, subscriber: Subscriber) -> None:
        """Call ``subscriber`` for every change of ``kind`` made from now on."""
        self._subscribers[kind].append(subscriber)

    def start(self) -> None:
        """Start following the feed from its current end.

        Raises:
            Unavailable: storage is down.
        """
        self._seq = self._feed.latest_seq()
        self._listener = self._feed.listen(self._job.wake)
        self._job.start()

    def stop(self) -> None:
        """Stop the thread and the listener."""
        if self._listener is not None:
            self._listener.stop()
        self._job.stop()

    def poll_once(self) -> int:
        """Read and dispatch whatever is new; returns how many records were dispatched.

        Serialised: a caller that polls to apply its own change before answering waits for a
        concurrent poll (the watcher thread's) to finish dispatching what it already read, so
        the change is applied when this returns, whoever read it.
        """
        with self._poll_lock:
            return self._poll_locked()

    def catch_up(self) -> None:
        """Before answering from feed-invalidated memory: if the feed was last read more than
        :data:`CATCH_UP_POLLS` poll intervals ago (this process was paused, starved of CPU, or
        its watcher thread stalled), read it now, in the caller's thread.

        One caller reads; the others wait for that read (at most one poll interval) and then do
        not read again. A feed outage is not raised (the caches behave as during any outage:
        the watcher thread keeps retrying) and the next attempt from a caller comes one poll
        interval later, so an outage does not turn every call into a failing read. Costs one
        clock read otherwise.
        """
        now = time.monotonic()
        if now - self.last_success <= self._catch_up_after or now < self._next_catch_up:
            return
        # Wait at most one poll interval for a read in progress (the watcher thread's, after a
        # pause, takes milliseconds); one stuck in a database outage must not hold every caller.
        if not self._poll_lock.acquire(timeout=self._poll_interval):
            return
        try:
            if time.monotonic() - self.last_success <= self._catch_up_after:
                return  # another caller (or the watcher thread) read it meanwhile
            self._poll_locked()
        except ZumikError:
            self._next_catch_up = time.monotonic() + self._poll_interval
            _LOG.warning("change feed unavailable; answering from memory as in an outage")
        finally:
            self._poll_lock.release()

    def caught_up(self) -> bool:
        """:meth:`catch_up`, then :meth:`is_fresh` (for a cache that is bypassed while stale)."""
        self.catch_up()
        return self.is_fresh()

    def poll_once_quietly(self) -> None:
        """:meth:`poll_once` for a caller whose change is already committed: a feed outage is
        logged, not raised (the watcher thread applies the change once the feed is back)."""
        try:
            self.poll_once()
        except ZumikError:
            _LOG.warning("change feed unavailable; the watcher applies the change later")

    def _poll_locked(self) -> int:
        dispatched = 0
        while True:
            batch = self._feed.since(self._seq)
            self.last_success = time.monotonic()
            if batch and self.metrics.enabled:
                now = datetime.now(UTC)
                for record in batch:
                    self.metrics.change_applied((now - record.at).total_seconds())
            for record in batch:
                self._seq = max(self._seq, record.seq)
                for subscriber in self._subscribers.get(record.kind, ()):
                    try:
                        subscriber(record)
                    except Exception:  # noqa: BLE001 - one broken cache must not block the others
                        _LOG.exception("change subscriber failed", extra={"kind": record.kind})
                dispatched += 1
            if len(batch) < 1000:
                return dispatched

    def _poll(self) -> None:
        try:
            self.poll_once()
        except ZumikError:
            _LOG.warning("change feed unavailable; retrying")
