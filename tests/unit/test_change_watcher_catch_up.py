"""ChangeWatcher.catch_up: a process behind the feed reads it before answering from memory."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from zumik_secrets.app.change_watcher import CATCH_UP_POLLS, ChangeWatcher
from zumik_secrets.core.errors import Unavailable
from zumik_secrets.storage.records import ChangeRecord


class _Feed:
    def __init__(self) -> None:
        self.reads = 0
        self.down = False
        self.records: list[ChangeRecord] = []

    def since(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        self.reads += 1
        if self.down:
            raise Unavailable("storage is unavailable, retry later")
        return [r for r in self.records if r.seq > seq][:limit]

    def latest_seq(self) -> int:
        return max((r.seq for r in self.records), default=0)

    def listen(self, callback: object) -> None:
        return None


def _watcher(feed: _Feed) -> ChangeWatcher:
    return ChangeWatcher(feed, poll_interval=0.25)  # type: ignore[arg-type]


def test_a_fresh_watcher_costs_no_read() -> None:
    feed = _Feed()
    watcher = _watcher(feed)
    for _ in range(100):
        watcher.catch_up()
    assert feed.reads == 0


def test_a_stale_watcher_reads_once_and_dispatches() -> None:
    feed = _Feed()
    watcher = _watcher(feed)
    seen: list[str] = []
    watcher.subscribe("api_key", lambda record: seen.append(record.entity_id))
    feed.records.append(ChangeRecord(1, "api_key", "key_1", datetime.now(UTC)))
    watcher.last_success = time.monotonic() - CATCH_UP_POLLS * 0.25 - 0.1
    watcher.catch_up()
    watcher.catch_up()
    assert seen == ["key_1"]
    assert feed.reads == 1


def test_an_outage_is_not_raised_and_retried_at_most_once_an_interval() -> None:
    feed = _Feed()
    feed.down = True
    watcher = _watcher(feed)
    watcher.last_success = time.monotonic() - 10
    for _ in range(50):
        watcher.catch_up()  # never raises
    assert feed.reads == 1
    assert not watcher.caught_up()
    time.sleep(0.3)
    feed.down = False
    assert watcher.caught_up()
    assert feed.reads == 2


def test_a_read_stuck_elsewhere_holds_a_caller_at_most_one_interval() -> None:
    feed = _Feed()
    watcher = _watcher(feed)
    watcher.last_success = time.monotonic() - 10
    with watcher._poll_lock:  # the watcher thread's read, stuck in an outage
        started = time.monotonic()
        watcher.catch_up()
        assert time.monotonic() - started < 1.0
    assert feed.reads == 0
