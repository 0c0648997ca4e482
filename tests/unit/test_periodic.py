"""PeriodicJob: the one background-job class (start/stop/drain, failures logged, not fatal)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.core.errors import Unavailable

LOG = logging.getLogger("zumik.test.periodic")


def _until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_runs_every_interval_until_stopped_then_drains_once() -> None:
    runs: list[str] = []
    job = PeriodicJob(
        "t", 0.01, lambda: runs.append("run"), log=LOG, drain=lambda: runs.append("drain")
    )
    job.start()
    assert job.running
    _until(lambda: runs.count("run") >= 3)
    job.stop()
    assert not job.running and runs[-1] == "drain" and runs.count("drain") == 1
    after = len(runs)
    time.sleep(0.05)
    job.stop()  # idempotent: no second drain
    assert len(runs) == after


def test_first_run_waits_one_interval_unless_woken() -> None:
    ran = threading.Event()
    job = PeriodicJob("t", 60.0, ran.set, log=LOG)
    job.start()
    try:
        assert not ran.wait(0.05)
        job.wake()
        assert ran.wait(5)
    finally:
        job.stop()


def test_stop_is_prompt_with_a_long_interval() -> None:
    job = PeriodicJob("t", 3600.0, lambda: None, log=LOG)
    job.start()
    started = time.monotonic()
    job.stop()
    assert time.monotonic() - started < 1.0


def test_stop_without_start_does_not_drain() -> None:
    drained: list[int] = []
    PeriodicJob("t", 1.0, lambda: None, log=LOG, drain=lambda: drained.append(1)).stop()
    assert drained == []


def test_second_start_keeps_one_thread() -> None:
    job = PeriodicJob("twice", 3600.0, lambda: None, log=LOG)
    job.start()
    job.start()
    try:
        assert [t.name for t in threading.enumerate()].count("zumik-twice") == 1
    finally:
        job.stop()


def test_failures_are_logged_and_the_job_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def run() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Unavailable("down", reason="STORAGE_UNAVAILABLE")
        if len(calls) == 2:
            raise RuntimeError("bug")

    job = PeriodicJob("flaky sweep", 0.01, run, log=LOG, drain=lambda: 1 / 0)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        job.start()
        _until(lambda: len(calls) >= 3)
        job.stop()  # the drain's error is logged too, not raised
    messages = [r.getMessage() for r in caplog.records]
    assert "flaky sweep failed: STORAGE_UNAVAILABLE" in messages
    bugs = [r for r in caplog.records if r.getMessage() == "flaky sweep failed"]
    assert len(bugs) == 2 and all(r.exc_info for r in bugs)  # the run's bug and the drain's
    assert job.failures == 3


def test_run_once_reports_success() -> None:
    assert PeriodicJob("t", 1.0, lambda: None, log=LOG).run_once() is True
    assert PeriodicJob("t", 1.0, lambda: 1 / 0, log=LOG).run_once() is False
