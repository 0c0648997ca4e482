"""Break-glass grant store conformance (SQLite and PostgreSQL): state only moves forward, one
approver wins, the requester or their certificate can never approve, expiry is computed by the
store from the stored duration (no caller can extend it)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from zumik_secrets.core.errors import AlreadyExists
from zumik_secrets.storage.records import GrantRecord

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _grant(gid: str = "bg_" + "A" * 22, tenant: str = "acme") -> GrantRecord:
    return GrantRecord(
        grant_id=gid,
        tenant_id=tenant,
        permission_set="read-secret-metadata",
        requester="spiffe://zumik.local/operator/alice",
        requester_cert="aa" * 32,
        reason="INC-1 customer cannot open",
        ticket="INC-1",
        duration=timedelta(minutes=30),
        state="pending",
        requested_at=T0,
    )


def test_create_get_round_trip(store):
    g = _grant()
    store.grants.create(g)
    got = store.grants.get(g.grant_id)
    assert got == g
    assert store.grants.get("bg_" + "B" * 22) is None


def test_duplicate_id_refused(store):
    store.grants.create(_grant())
    with pytest.raises(AlreadyExists):
        store.grants.create(_grant())


def test_approve_sets_expiry_from_stored_duration(store):
    g = _grant()
    store.grants.create(g)
    at = T0 + timedelta(minutes=1)
    assert store.grants.approve(g.grant_id, "spiffe://zumik.local/operator/bob", "bb" * 32, at)
    got = store.grants.get(g.grant_id)
    assert got is not None
    assert got.state == "active"
    assert got.approver == "spiffe://zumik.local/operator/bob"
    assert got.approved_at == at
    assert got.expires_at == at + timedelta(minutes=30)
    # Approving again (a second approver, or the same one) changes nothing: no extension.
    later = at + timedelta(minutes=20)
    assert not store.grants.approve(
        g.grant_id, "spiffe://zumik.local/operator/carol", "cc" * 32, later
    )
    assert store.grants.get(g.grant_id).expires_at == at + timedelta(minutes=30)


def test_requester_or_their_certificate_cannot_approve(store):
    g = _grant()
    store.grants.create(g)
    at = T0 + timedelta(minutes=1)
    assert not store.grants.approve(g.grant_id, g.requester, "bb" * 32, at)
    assert not store.grants.approve(g.grant_id, "spiffe://zumik.local/operator/x", "aa" * 32, at)
    assert store.grants.get(g.grant_id).state == "pending"


def test_revoke_is_final(store):
    g = _grant()
    store.grants.create(g)
    at = T0 + timedelta(minutes=1)
    assert store.grants.revoke(g.grant_id, "spiffe://zumik.local/operator/bob", at)
    assert not store.grants.revoke(g.grant_id, "spiffe://zumik.local/operator/bob", at)
    assert not store.grants.approve(g.grant_id, "spiffe://zumik.local/operator/bob", "bb" * 32, at)
    got = store.grants.get(g.grant_id)
    assert got.state == "revoked" and got.revoked_at == at and got.approved_at is None


def test_concurrent_approvals_one_wins(store):
    g = _grant()
    store.grants.create(g)
    results: list[bool] = []

    def approve(n: int) -> None:
        results.append(
            store.grants.approve(
                g.grant_id, f"spiffe://zumik.local/operator/op{n}", f"{n:02d}" * 32, T0
            )
        )

    threads = [threading.Thread(target=approve, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]


def test_list_is_per_tenant_newest_first(store):
    store.grants.create(_grant("bg_" + "A" * 22))
    later = _grant("bg_" + "C" * 22)
    store.grants.create(replace(later, requested_at=T0 + timedelta(seconds=5)))
    store.grants.create(_grant("bg_" + "D" * 22, tenant="other"))
    ids = [g.grant_id for g in store.grants.list("acme", 10)]
    assert ids == ["bg_" + "C" * 22, "bg_" + "A" * 22]
    assert [g.grant_id for g in store.grants.list("acme", 1)] == ["bg_" + "C" * 22]
