"""Conformance of the fingerprint-schedule and handle stores (migration 0004) on both backends."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from zumik_secrets.core.errors import AlreadyExists
from zumik_secrets.core.handles import new_handle
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.records import HandleRecord

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_schedule_keeps_the_earliest_time_and_records_a_change(store) -> None:
    sched = store.fingerprint_schedule
    before = store.changes.latest_seq()
    sched.schedule("acme", "web", [1, 2], T0 + timedelta(hours=1))
    sched.schedule("acme", "web", [2, 3], T0 + timedelta(hours=2))  # 2 keeps its earlier time
    sched.schedule("acme", "web", [1], T0)  # an earlier time wins
    rows = sched.pending("acme", "web")
    assert [(r.version, r.destroy_at) for r in rows] == [
        (1, T0),
        (2, T0 + timedelta(hours=1)),
        (3, T0 + timedelta(hours=2)),
    ]
    assert sched.pending("acme", "other") == [] and sched.pending("other", "web") == []
    changes = store.changes.since(before)
    assert [(c.kind, c.entity_id) for c in changes] == [("data_key", "acme/web/fingerprint")] * 3


def test_claim_due_leases_rows_once_until_the_lease_lapses(store) -> None:
    sched = store.fingerprint_schedule
    sched.schedule("acme", "web", [1], T0)
    sched.schedule("acme", "api", [4], T0 + timedelta(seconds=5))
    sched.schedule("beta", "web", [2], T0 + timedelta(hours=1))
    lease = T0 + timedelta(minutes=1)
    assert sched.claim_due(T0 - timedelta(seconds=1), lease) == []
    due = sched.claim_due(T0 + timedelta(seconds=10), lease)
    assert [(r.tenant_id, r.project_id, r.version) for r in due] == [
        ("acme", "web", 1),
        ("acme", "api", 4),
    ]
    # Leased: another sweeper gets nothing until the lease lapses.
    assert sched.claim_due(T0 + timedelta(seconds=20), lease) == []
    again = sched.claim_due(lease, lease + timedelta(minutes=1), tenant_id="acme", project_id="api")
    assert [(r.project_id, r.version) for r in again] == [("api", 4)]
    sched.done("acme", "web", 1)
    sched.done("acme", "api", 4)
    assert sched.pending("acme", "web") == []
    late = sched.claim_due(T0 + timedelta(days=1), T0 + timedelta(days=2), limit=10)
    assert [(r.tenant_id, r.version) for r in late] == [("beta", 2)]


def test_concurrent_sweepers_never_claim_the_same_row(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    try:
        stores[0].migrate()
        for v in range(1, 41):
            stores[0].fingerprint_schedule.schedule("acme", f"p{v % 5}", [v], T0)
        claimed: list[tuple[str, int]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(4)

        def sweep(s) -> None:
            barrier.wait()
            while rows := s.fingerprint_schedule.claim_due(T0, T0 + timedelta(minutes=1), limit=3):
                with lock:
                    claimed.extend((r.project_id, r.version) for r in rows)

        threads = [threading.Thread(target=sweep, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(v for _, v in claimed) == list(range(1, 41))
    finally:
        for s in stores:
            s.close()


def _handle(tenant: str = "acme", handle: str | None = None) -> HandleRecord:
    return HandleRecord(tenant, handle or new_handle("user"), "user", "users/42 ü", T0)


def test_handles_are_unique_per_tenant(store) -> None:
    rec = store.handles.insert(_handle())
    assert store.handles.get("acme", rec.handle) == rec
    assert store.handles.get("other", rec.handle) is None
    assert store.handles.get("acme", new_handle("user")) is None
    with pytest.raises(AlreadyExists):
        store.handles.insert(_handle(handle=rec.handle))
    # Another tenant may hold the same string: uniqueness is per tenant.
    store.handles.insert(_handle("other", rec.handle))
    assert store.handles.get("other", rec.handle).tenant_id == "other"  # type: ignore[union-attr]
