"""Unit tests of the issue-15 mechanisms: per-peer caps, pools, breaker, single-flight locks,
per-tenant gate, denial folding, the deadline-bound HTTP call and the policy cache."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.deadlines import budget, reset_deadline, set_deadline
from zumik_secrets.app.denial_audit import BUDGET_REASON, DenialAudit
from zumik_secrets.app.openbao import OpenBaoTransit
from zumik_secrets.app.outbound_limits import (
    CircuitBreaker,
    CircuitOpen,
    KeyedLocks,
    TenantGate,
)
from zumik_secrets.core.errors import ResourceExhausted, Unavailable
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.limits import CountingExecutor, Limits, LimitSettings


class _Recorder:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        self.entries.append(entry)


def _deny(
    actor: str = "spiffe://x/svc/a", method: str = "pkg.S/M", reason: str = "R"
) -> AuditEntry:
    return AuditEntry(
        tenant_id=None,
        actor=actor,
        actor_subject="",
        action="authz.deny",
        target="t",
        outcome="denied",
        reason=reason,
        attributes={"method": method},
    )


# -- per-peer caps and pools ---------------------------------------------------------------------


def test_per_peer_cap_counts_only_slow_calls_and_releases() -> None:
    now = [0.0]
    limits = Limits(LimitSettings(workers=4, max_calls_per_peer=2), clock=lambda: now[0])
    with limits.call("a", None), limits.call("a", None):
        # Two fast calls running: a third is admitted (a busy healthy client is never refused).
        with limits.call("a", None):
            assert limits.calls_held("a") == 3
        now[0] = 0.6  # both have been running past SLOW_CALL_SECONDS: they hold workers
        with pytest.raises(ResourceExhausted) as info, limits.call("a", None):
            pass
        assert info.value.reason == "PEER_CALL_LIMIT"
        with limits.call("b", None):  # another peer is not affected
            assert limits.calls_held("b") == 1
    assert limits.calls_held("a") == 0
    with limits.call("a", None):  # the slots came back
        pass
    limits.shutdown()


def test_a_call_whose_deadline_passed_in_the_queue_is_refused() -> None:
    limits = Limits(LimitSettings())
    with pytest.raises(ResourceExhausted) as info, limits.call("a", 0.0):
        pass
    assert info.value.reason == "SERVER_OVERLOADED"
    assert limits.calls_held("a") == 0
    limits.shutdown()


def test_default_peer_cap_leaves_workers_for_others() -> None:
    assert LimitSettings(workers=16).calls_per_peer == 12
    assert LimitSettings(workers=1).calls_per_peer == 1


def test_stream_slots_are_idempotent_to_release() -> None:
    limits = Limits(LimitSettings(max_streams_per_peer=1))
    release = limits.stream("a")
    with pytest.raises(ResourceExhausted):
        limits.stream("a")
    release()
    release()  # grpc's termination callback and the iterator's end may both release
    assert limits.streams_held("a") == 0
    limits.stream("a")()
    limits.shutdown()


def test_counting_executor_counts_queued_and_running() -> None:
    pool = CountingExecutor(1)
    gate = threading.Event()
    futures = [pool.submit(gate.wait) for _ in range(3)]
    assert pool.unfinished == 3
    gate.set()
    for f in futures:
        f.result(timeout=5)
    deadline = time.monotonic() + 5
    while pool.unfinished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.unfinished == 0
    pool.shutdown()


def test_overloaded_past_workers_plus_queue() -> None:
    limits = Limits(LimitSettings(workers=1, max_queued_calls=1))
    gate = threading.Event()
    limits.unary_pool.submit(gate.wait)
    assert not limits.overloaded()
    limits.unary_pool.submit(gate.wait)
    assert limits.overloaded()
    gate.set()
    limits.unary_pool.shutdown()
    limits.shutdown()


# -- breaker, gate, single flight ----------------------------------------------------------------


def test_breaker_opens_fails_fast_then_probes_once() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, open_seconds=10, clock=lambda: now[0])
    breaker.before()
    breaker.failure()
    breaker.before()
    breaker.failure()
    with pytest.raises(CircuitOpen):
        breaker.before()
    now[0] = 11
    breaker.before()  # the probe
    with pytest.raises(CircuitOpen):
        breaker.before()  # only one probe at a time
    breaker.failure()  # the probe failed: open again
    with pytest.raises(CircuitOpen):
        breaker.before()
    now[0] = 22
    breaker.before()
    breaker.success()
    assert breaker.is_closed
    breaker.before()


def test_tenant_gate_caps_each_tenant_alone() -> None:
    gate = TenantGate(limit=1)
    with gate.enter("a"):
        with pytest.raises(ResourceExhausted) as info, gate.enter("a"):
            pass
        assert info.value.reason == "CUSTOMER_KEY_BUSY"
        with gate.enter("b"):
            pass
    assert gate.held("a") == 0


def test_keyed_locks_are_per_key_and_waiters_share_a_failure() -> None:
    locks = KeyedLocks()
    entered = threading.Event()
    release = threading.Event()
    outcome: list[str] = []

    def holder() -> None:
        try:
            with locks.hold("k1"):
                entered.set()
                release.wait(5)
                raise Unavailable("down", reason="CUSTOMER_KEY_UNREACHABLE")
        except Unavailable:
            outcome.append("holder failed")

    def waiter() -> None:
        try:
            with locks.hold("k1"):
                outcome.append("waiter ran")  # must not happen: it shares the failure
        except Unavailable as err:
            outcome.append(f"waiter got {err.reason}")

    t1 = threading.Thread(target=holder)
    t1.start()
    entered.wait(5)
    t2 = threading.Thread(target=waiter)
    t2.start()
    time.sleep(0.1)
    with locks.hold("k2"):  # another key is never blocked by k1
        pass
    release.set()
    t1.join(5)
    t2.join(5)
    assert sorted(outcome) == ["holder failed", "waiter got CUSTOMER_KEY_UNREACHABLE"]
    with locks.hold("k1"):  # a later call tries again itself
        pass
    assert len(locks) == 0


def test_keyed_lock_wait_is_bounded_by_the_callers_deadline() -> None:
    locks = KeyedLocks()
    entered = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with locks.hold("k"):
            entered.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    entered.wait(5)
    token = set_deadline(0.2)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info, locks.hold("k"):
            pass
        assert info.value.reason == "DATA_KEY_BUSY"
        assert time.monotonic() - started < 2
    finally:
        reset_deadline(token)
        release.set()
        t.join(5)


def test_budget_is_the_nearer_of_cap_and_deadline() -> None:
    assert budget(5.0) == 5.0
    token = set_deadline(1.0)
    try:
        assert 0.5 < budget(5.0) <= 1.0
        assert budget(0.1) == 0.1
    finally:
        reset_deadline(token)


# -- the key-server call has an overall deadline -------------------------------------------------


def test_a_dripping_server_cannot_stretch_a_call_past_its_deadline() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\n" * 50:
            if stop.is_set():
                break
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)  # each read returns well within any per-read timeout
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    transit = OpenBaoTransit(
        f"http://127.0.0.1:{listener.getsockname()[1]}",
        "transit",
        "k",
        "tok",
        timeout=0.8,
        allow_http=True,
    )
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        transit.wrap(b"k" * 32, b"ad")
    took = time.monotonic() - started
    stop.set()
    listener.close()
    assert info.value.reason == "CUSTOMER_KEY_UNREACHABLE"
    assert took < 3.0, took  # 0.8 s budget; the drip alone would take 85 s


# -- denial folding ------------------------------------------------------------------------------


def test_repeated_denials_fold_into_one_counted_event() -> None:
    inner = _Recorder()
    clock = [datetime(2026, 12, 1, tzinfo=UTC)]
    audit = DenialAudit(inner, interval=10, budget=100, clock=lambda: clock[0])
    for _ in range(50):
        audit.record(_deny())
        clock[0] += timedelta(milliseconds=10)
    assert len(inner.entries) == 1  # the first, at once
    audit.flush()
    assert len(inner.entries) == 2
    summary = inner.entries[1]
    assert summary.attributes["repeated"] == "49"
    assert summary.attributes["first_seen"] < summary.attributes["last_seen"]
    audit.flush()
    assert len(inner.entries) == 2  # nothing left to flush
    audit.record(_deny())  # a new interval records the first again at once
    assert len(inner.entries) == 3


def test_other_events_and_durable_ones_pass_through() -> None:
    inner = _Recorder()
    audit = DenialAudit(inner)
    allow = AuditEntry(None, "a", "", "authz.allow", "t", "success", "ALLOWED")
    for _ in range(3):
        audit.record(allow)
        audit.record(_deny(), durable=True)
    assert len(inner.entries) == 6


def test_the_per_identity_budget_folds_varied_denials_and_logs_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = _Recorder()
    audit = DenialAudit(inner, budget=5)
    for n in range(100):
        audit.record(_deny(method=f"pkg.S/M{n}"))
    audit.record(_deny(actor="spiffe://x/svc/other"))
    assert len(inner.entries) == 6  # 5 within the budget, and the other identity's
    with caplog.at_level("ERROR", logger="zumik.audit"):
        audit.flush()
    over = [e for e in inner.entries if e.reason == BUDGET_REASON]
    assert len(over) == 1 and over[0].attributes["repeated"] == "95"
    total = sum(int(e.attributes.get("repeated", "1")) for e in inner.entries)
    assert total == 101  # every denial accounted for
    assert any("budget exceeded" in r.getMessage() for r in caplog.records)
    assert audit.budget_exceeded_total == 1


# -- the policy cache ------------------------------------------------------------------------------


def test_the_policy_cache_holds_only_served_methods_of_named_identities() -> None:
    policy = Policy.from_mapping(
        {
            "trust_domain": "z.local",
            "identities": {"spiffe://z.local/svc/a": {"allow": ["pkg.S/*"]}},
        }
    )
    policy.limit_cache_to({"/pkg.S/M"})
    for n in range(1000):
        policy.decide("spiffe://z.local/svc/a", f"/pkg.S/X{n}")  # allowed by wildcard, unknown
        policy.decide(f"spiffe://z.local/svc/s{n}", "/pkg.S/M")  # unknown identities
    assert policy.cached_decisions == 0
    assert policy.decide("spiffe://z.local/svc/a", "/pkg.S/M").allowed
    assert policy.cached_decisions == 1
