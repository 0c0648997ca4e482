"""TenantSettingsStore, SigningKeyStore and ChangeFeed conformance."""

from __future__ import annotations

import threading
import time

import pytest

from tests.storage.data import api_key, at, signing_key
from zumik_secrets.core import errors
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.records import TenantSettings


def test_tenant_settings_upsert_and_change(store):
    assert store.tenants.get("acme") is None
    before = store.changes.latest_seq()
    store.tenants.put(TenantSettings("acme", "default", at(1)))
    store.tenants.put(TenantSettings("acme", "rich", at(2)))
    assert store.tenants.get("acme") == TenantSettings("acme", "rich", at(2))
    assert store.tenants.get("other") is None
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("tenant_settings", "acme"),
        ("tenant_settings", "acme"),
    ]


def test_signing_keys_add_list_set_state(store):
    newer = signing_key(created=at(100))
    older = signing_key(created=at(0))
    audit = signing_key("audit", created=at(50))
    for k in (newer, older, audit):
        store.signing_keys.add(k)
    assert store.signing_keys.list("claims") == [older, newer]
    assert store.signing_keys.list("audit") == [audit]
    with pytest.raises(errors.AlreadyExists):
        store.signing_keys.add(signing_key(kid=older.kid))

    before = store.changes.latest_seq()
    retiring = store.signing_keys.set_state(older.kid, "retiring", at(500))
    assert retiring.state == "retiring"
    assert retiring.retire_after == at(500)
    assert store.signing_keys.list("claims")[0] == retiring
    retired = store.signing_keys.set_state(older.kid, "retired", None)
    assert retired.retire_after is None
    assert store.signing_keys.set_state("missing", "retired", None) is None
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("signing_key", older.kid)
    ] * 2
    assert "wrapped_private_key" not in repr(retired)


def test_signing_key_add_records_a_change(store):
    before = store.changes.latest_seq()
    rec = signing_key()
    store.signing_keys.add(rec)
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("signing_key", rec.kid)
    ]


def test_signing_key_add_first_only_while_no_key_is_active(store):
    first = signing_key()
    assert store.signing_keys.add_first(first) is True
    assert store.signing_keys.add_first(signing_key()) is False
    assert store.signing_keys.add_first(signing_key("audit")) is True  # per purpose
    assert store.signing_keys.list("claims") == [first]
    store.signing_keys.set_state(first.kid, "retiring", at(500))
    with pytest.raises(errors.AlreadyExists):
        store.signing_keys.add_first(signing_key(kid=first.kid))
    second = signing_key()
    assert store.signing_keys.add_first(second) is True
    assert {k.kid for k in store.signing_keys.list("claims")} == {first.kid, second.kid}


def test_signing_key_add_first_races_to_one_key(store, store_url):
    """Replicas starting together on an empty database store exactly one first key."""
    others = [open_store(store_url) for _ in range(3)]
    stores = [store, *others]
    barrier = threading.Barrier(len(stores))
    won: list[bool] = []
    try:
        for round_ in range(4):
            won.clear()
            purpose = ("claims", "audit")[round_ % 2]
            threads = [
                threading.Thread(
                    target=lambda s=s, p=purpose: (
                        barrier.wait(),
                        won.append(s.signing_keys.add_first(signing_key(p))),
                    )
                )
                for s in stores
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert sorted(won) == [False, False, False, True]
            active = [k for k in store.signing_keys.list(purpose) if k.state == "active"]
            assert len(active) == 1
            store.signing_keys.set_state(active[0].kid, "retired", None)
    finally:
        for s in others:
            s.close()


def test_change_feed_order_limit_and_empty(store):
    assert store.changes.latest_seq() == 0
    assert store.changes.since(0) == []
    keys = [store.api_keys.insert(api_key()) for _ in range(5)]
    for k in keys:
        store.api_keys.revoke("acme", "web", k.key_id, at(1))
    everything = store.changes.since(0)
    assert [c.entity_id for c in everything] == [k.key_id for k in keys]
    seqs = [c.seq for c in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert store.changes.latest_seq() == seqs[-1]
    assert store.changes.since(0, limit=2) == everything[:2]
    assert store.changes.since(seqs[2]) == everything[3:]
    assert all(c.at.utcoffset() is not None for c in everything)


def test_change_feed_reads_one_record_by_seq_and_the_latest(store):
    """``at`` and ``latest`` (the revocation feed's position tags) return the record
    ``since`` returns, and None for a seq never recorded or pruned."""
    assert store.changes.latest() is None and store.changes.at(1) is None
    for _ in range(3):
        store.api_keys.revoke("acme", "web", store.api_keys.insert(api_key()).key_id, at(1))
    everything = store.changes.since(0)
    assert [store.changes.at(c.seq) for c in everything] == everything
    assert store.changes.latest() == everything[-1]
    assert store.changes.at(everything[-1].seq + 1) is None
    assert store.changes.at(2**63 - 1) is None and store.changes.at(0) is None


def test_listen(store, store_url, backend):
    fired = threading.Event()
    listener = store.changes.listen(fired.set)
    if backend == "sqlite":
        assert listener is None  # callers poll latest_seq()
        return
    try:
        # A second store instance (another replica) makes the change.
        other = open_store(store_url)
        try:
            rec = other.api_keys.insert(api_key())
            t0 = time.monotonic()
            other.api_keys.revoke("acme", "web", rec.key_id, at(1))
            assert fired.wait(1.0), "LISTEN callback did not fire within 1 s of the revoke"
            elapsed = time.monotonic() - t0
            assert elapsed < 1.0
            assert store.changes.since(0)[-1].entity_id == rec.key_id
        finally:
            other.close()
    finally:
        listener.stop()
        listener.stop()  # idempotent
