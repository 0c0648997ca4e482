"""Deadlines flowing down to every wait, and the database's circuit breaker (issue 24)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.core import deadlines
from zumik_secrets.core.errors import Unavailable
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.storage.breaker import CircuitBreaker
from zumik_secrets.storage.factory import open_store


def test_budget_is_the_limit_outside_a_call() -> None:
    assert deadlines.remaining() is None
    assert deadlines.budget(3.0) == 3.0


def test_budget_ends_before_the_callers_deadline() -> None:
    token = deadlines.enter(1.0)
    try:
        left = deadlines.budget(3.0)
        assert 0.7 < left <= 0.8  # one second minus the 0.2 s margin
        assert deadlines.budget(0.1) == 0.1
    finally:
        deadlines.leave(token)
    assert deadlines.remaining() is None


def test_a_short_deadline_still_leaves_time_for_the_work() -> None:
    token = deadlines.enter(0.1)
    try:
        assert 0.05 < deadlines.budget(3.0) <= 0.08
    finally:
        deadlines.leave(token)


def test_a_passed_deadline_is_unavailable_with_a_reason() -> None:
    token = deadlines.enter(0.0)
    try:
        with pytest.raises(Unavailable) as caught:
            deadlines.budget(3.0)
        assert caught.value.reason == "DEADLINE_TOO_SHORT"
        assert caught.value.retry_after_seconds > 0
    finally:
        deadlines.leave(token)


def test_bounded_nests_and_never_extends_the_call() -> None:
    with deadlines.bounded(1.0):
        assert 0.9 < deadlines.budget(5.0) <= 1.0
        with deadlines.bounded(10.0):
            assert deadlines.budget(50.0) <= 1.0  # the outer bound still holds
    token = deadlines.enter(0.5)
    try:
        with deadlines.bounded(10.0):
            assert deadlines.budget(50.0) <= 0.5
    finally:
        deadlines.leave(token)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(
        threshold=3,
        open_seconds=1.0,
        make_error=lambda: Unavailable("down", reason="STORAGE_UNAVAILABLE"),
        clock=clock,
    )


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(2):
        breaker.failure()
        breaker.before()  # still closed
    breaker.success()  # a success resets the count
    for _ in range(2):
        breaker.failure()
    breaker.before()
    breaker.failure()
    assert breaker.state == "open" and breaker.opened == 1
    clock.now += 0.4
    with pytest.raises(Unavailable) as caught:
        breaker.before()
    assert caught.value.reason == "STORAGE_UNAVAILABLE"
    assert caught.value.retry_after_seconds == pytest.approx(0.6)


def test_breaker_lets_one_trial_through_then_closes_or_reopens() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.now += 1.0
    breaker.before()  # the trial
    assert breaker.state == "half_open"
    with pytest.raises(Unavailable):
        breaker.before()  # others still fail fast while the trial runs
    breaker.failure()  # the trial failed: open again, for a full period
    assert breaker.state == "open"
    with pytest.raises(Unavailable):
        breaker.before()
    clock.now += 1.0
    breaker.before()
    breaker.success()
    assert breaker.state == "closed"
    breaker.before()


def test_breaker_reset_closes_at_once() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    breaker.reset()  # the readiness probe reached the database
    breaker.before()
    assert breaker.state == "closed"


def test_durable_audit_wait_ends_before_the_callers_deadline(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/z.db")
    store.migrate()
    keys = CheckpointKeys(store.signing_keys, MasterKeyring.from_text(generate_keyring()))
    keys.load()
    log = AuditLog(store.audit, keys, durable_timeout=3.0)  # writer not started: nothing commits
    entry = AuditEntry("acme", "spiffe://x/svc/a", "", "secret.open", "t", "success", "OK")
    try:
        token = deadlines.enter(0.6)
        started = time.monotonic()
        try:
            with pytest.raises(Unavailable) as caught:
                log.append(entry)
        finally:
            deadlines.leave(token)
        elapsed = time.monotonic() - started
        assert caught.value.reason == "AUDIT_UNAVAILABLE"
        assert elapsed < 0.6, elapsed  # within the caller's deadline, not the 3 s timeout
        token = deadlines.enter(0.0)
        try:
            with pytest.raises(Unavailable):
                log.append(entry)  # no time left at all: refused without queueing
        finally:
            deadlines.leave(token)
    finally:
        log.stop(timeout=1)
        store.close()


def test_non_durable_records_do_not_wait_for_room_while_the_store_is_down(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/z.db")
    store.migrate()
    keys = CheckpointKeys(store.signing_keys, MasterKeyring.from_text(generate_keyring()))
    keys.load()
    log = AuditLog(store.audit, keys, queue_limit=2, enqueue_timeout=5.0)  # writer not started
    entry = AuditEntry("acme", "spiffe://x/svc/a", "", "authz.deny", "t", "denied", "NO")
    try:
        log.record(entry)
        log.record(entry)  # the queue is full now
        log._set_healthy(False)
        done = threading.Event()

        def record() -> None:
            log.record(entry)
            done.set()

        threading.Thread(target=record, daemon=True).start()
        assert done.wait(2.0), "a non-durable record waited for room while the store was down"
        assert log.dropped == 1
    finally:
        log.stop(timeout=1)
        store.close()
