"""The fail-closed rule of app/audit.py: ``record`` and ``audited_change``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry, audited_change, event, record
from zumik_secrets.core.errors import NotFound, Unavailable

ENTRY = event(Actor("spiffe://zumik.local/svc/console", "key_1", "ab" * 16), "acme", "x.y", "t")
ERRORS = [Unavailable("down", reason="AUDIT_STORE_UNAVAILABLE"), RuntimeError("bug")]


class Recorder:
    def __init__(self, error: Exception | None = None, *, fail_exit: bool = False) -> None:
        self.error = error
        self.fail_exit = fail_exit
        self.stored: list[tuple[AuditEntry, bool]] = []

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        if self.error is not None:
            raise self.error
        self.stored.append((entry, durable))

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Iterator[None]:
        if self.error is not None and not self.fail_exit:
            raise self.error
        yield
        if self.error is not None:
            raise self.error
        self.stored.extend((e, True) for e in entries)


def test_event_copies_the_actor() -> None:
    assert ENTRY.actor_subject == "key_1" and ENTRY.trace_id == "ab" * 16
    assert (ENTRY.outcome, ENTRY.reason, dict(ENTRY.attributes)) == ("success", "OK", {})


@pytest.mark.parametrize("error", ERRORS)
def test_durable_failure_is_audit_unavailable(error: Exception) -> None:
    with pytest.raises(Unavailable) as info:
        record(Recorder(error), ENTRY, durable=True)
    assert info.value.reason == "AUDIT_UNAVAILABLE"


@pytest.mark.parametrize("error", ERRORS)
def test_lost_non_durable_event_is_reported_not_raised(error: Exception) -> None:
    assert record(Recorder(error), ENTRY, durable=False) is False


def test_taken_events_say_so() -> None:
    recorder = Recorder()
    assert record(recorder, ENTRY, durable=True) is True
    assert recorder.stored == [(ENTRY, True)]


@pytest.mark.parametrize("fail_exit", [False, True])
@pytest.mark.parametrize("error", ERRORS)
def test_change_whose_events_fail_is_audit_unavailable(error: Exception, fail_exit: bool) -> None:
    ran = []
    with (
        pytest.raises(Unavailable) as info,
        audited_change(Recorder(error, fail_exit=fail_exit), ENTRY),
    ):
        ran.append(True)
    assert info.value.reason == "AUDIT_UNAVAILABLE"
    assert ran == ([True] if fail_exit else [])


def test_the_blocks_own_error_passes_through() -> None:
    recorder = Recorder()
    with pytest.raises(NotFound), audited_change(recorder, ENTRY):
        raise NotFound("no such thing", reason="NOT_FOUND")
    assert recorder.stored == []


def test_a_change_is_recorded() -> None:
    recorder = Recorder()
    with audited_change(recorder, ENTRY):
        pass
    assert recorder.stored == [(ENTRY, True)]
