"""The audit outbox on both backends (issue 24): a change's audit event commits in the change's
transaction, or neither does; the writer chains each outbox event exactly once, however many
processes drain; a store that cannot write the event refuses the change (fail closed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.storage.data import api_key
from tests.storage.test_audit import RawDb, entry, make_log
from tests.storage.test_sealing_store import dk, secret
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.core import audit_chain as ac
from zumik_secrets.core.errors import AlreadyExists, NotFound, Unavailable
from zumik_secrets.storage import outbox
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.ports import AuditFilter, Store


def draft(i: int, tenant: str = "acme", action: str = "api_key.create") -> ac.EventDraft:
    return ac.EventDraft(
        tenant,
        f"evt_outbox_{i}_{tenant}",
        datetime.now(UTC),
        "spiffe://zumik.local/svc/control-plane",
        "",
        action,
        f"tenants/{tenant}/projects/web/apiKeys/{i}",
        "success",
        "OK",
        "",
        (("n", str(i)),),
    )


def chained(store: Store, tenant: str = "acme") -> list[ac.ChainEvent]:
    return store.audit.events(tenant, after_sequence=0, limit=10_000)


@pytest.fixture
def stopped_log(store: Store) -> Iterator[AuditLog]:
    """An audit log whose writer does not run (the outbox stays as the changes leave it)."""
    log = make_log(store)
    log.stop()
    yield log


def test_staged_event_commits_with_the_change_and_is_chained_once(store: Store) -> None:
    with outbox.staged([draft(1)]) as holder:
        rec = store.api_keys.insert(api_key())
    assert holder.taken
    assert store.audit.outbox_size() == 1
    assert chained(store) == []  # in the outbox, not yet in the chain
    moved = store.audit.drain_outbox(100)
    assert [e.event_id for e in moved] == ["evt_outbox_1_acme"]
    assert store.audit.outbox_size() == 0
    assert [e.event_id for e in chained(store)] == ["evt_outbox_1_acme"]
    assert store.audit.drain_outbox(100) == []  # nothing is chained twice
    assert store.api_keys.get("acme", "web", rec.key_id) == rec


def test_a_failed_change_leaves_no_event(store: Store) -> None:
    rec = store.api_keys.insert(api_key())
    with pytest.raises(AlreadyExists), outbox.staged([draft(2)]):
        store.api_keys.insert(rec)  # same id: the insert fails, its transaction rolls back
    assert store.audit.outbox_size() == 0


@pytest.mark.parametrize("tenant", ["acme", "other"])
def test_a_call_that_changes_nothing_writes_no_event(store: Store, tenant: str) -> None:
    rec = store.api_keys.insert(api_key())
    # A missing key, and another tenant's key: no row changed, no event (and no trace of it).
    with outbox.staged([draft(3)]) as holder:
        assert store.api_keys.revoke(tenant, "web", "key_missing", datetime.now(UTC)) is None
        assert store.api_keys.revoke("other", "web", rec.key_id, datetime.now(UTC)) is None
    assert not holder.taken
    assert store.audit.outbox_size() == 0
    assert store.api_keys.get("acme", "web", rec.key_id) == rec


def test_every_kind_of_change_carries_its_event(store: Store) -> None:
    """One staged block per store write the services wrap (keys, sessions, secrets, data keys,
    settings, handles): each commits exactly its event."""
    from dataclasses import replace

    from tests.storage.data import session
    from zumik_secrets.storage.records import HandleRecord, TenantSettings

    now = datetime.now(UTC)
    key = api_key()
    sess = session()
    sec = secret()
    calls: list[tuple[str, Any]] = [
        ("api_key.create", lambda: store.api_keys.insert(key)),
        ("api_key.revoke", lambda: store.api_keys.revoke("acme", "web", key.key_id, now)),
        ("session.create", lambda: store.sessions.insert(sess)),
        ("session.revoke", lambda: store.sessions.revoke("acme", "web", sess.session_id, now)),
        ("data_key.create", lambda: store.data_keys.insert_first(dk())),
        ("secret.seal", lambda: store.sealed_secrets.insert(sec)),
        (
            "secret.update",
            lambda: store.sealed_secrets.replace_ciphertext(
                store.sealed_secrets.get("acme", "web", sec.secret_id),  # type: ignore[arg-type]
                version=2,
                data_key_version=1,
                size_bytes=3,
                ciphertext=b"\x00" * 40,
                at=now,
            ),
        ),
        ("secret.delete", lambda: store.sealed_secrets.delete("acme", "web", sec.secret_id)),
        (
            "data_key.rotate",
            lambda: store.data_keys.rotate(
                "acme", "web", "seal", lambda v: (b"w" * 60, "keyring"), now
            ),
        ),
        ("data_key.destroy", lambda: store.data_keys.destroy("acme", "web", "seal", 1, now)),
        (
            "tenant.settings.update",
            lambda: store.tenants.put(TenantSettings("acme", "rich", now)),
        ),
        (
            "handle.mint",
            lambda: store.handles.insert(HandleRecord("acme", "hdl_" + "a" * 22, "hdl", "x", now)),
        ),
    ]
    for i, (action, call) in enumerate(calls):
        with outbox.staged([replace(draft(100 + i), action=action)]) as holder:
            call()
        assert holder.taken, action
    moved = store.audit.drain_outbox(1000)
    assert [e.action for e in moved] == [action for action, _ in calls]


def test_concurrent_seal_inserts_carry_each_callers_event(store: Store) -> None:
    """Concurrent Seal inserts (SQLite combines them into shared transactions); every committed row
    has its event, a failing insert has none."""
    store.data_keys.insert_first(dk())
    dup = store.sealed_secrets.insert(secret())
    barrier = threading.Barrier(18)
    results: dict[int, str] = {}

    def seal(i: int) -> None:
        rec = dup if i == 0 else secret()
        barrier.wait()
        with outbox.staged([draft(200 + i)]) as holder:
            try:
                store.sealed_secrets.insert(rec)
            except AlreadyExists:
                results[i] = "failed"
                return
        results[i] = "taken" if holder.taken else "lost"

    threads = [threading.Thread(target=seal, args=(i,)) for i in range(17)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    assert results[0] == "failed"
    assert sorted(v for k, v in results.items() if k) == ["taken"] * 16
    moved = store.audit.drain_outbox(1000)
    assert sorted(e.event_id for e in moved) == sorted(
        f"evt_outbox_{200 + i}_acme" for i in range(1, 17)
    )


def test_annotate_sets_a_value_known_only_inside_the_transaction(store: Store) -> None:
    store.data_keys.insert_first(dk())

    def wrapped(version: int) -> tuple[bytes, str]:
        outbox.annotate("version", str(version))
        return b"w" * 60, "keyring"

    with outbox.staged([draft(300, action="data_key.rotate")]):
        rec = store.data_keys.rotate("acme", "web", "seal", wrapped, datetime.now(UTC))
    [event] = store.audit.drain_outbox(10)
    assert dict(event.attributes)["version"] == str(rec.version) == "2"


def test_two_processes_draining_chain_each_event_exactly_once(store_url: str) -> None:
    stores = [open_store(store_url), open_store(store_url)]
    stores[0].migrate()
    try:
        for i in range(300):
            with outbox.staged([draft(i, tenant=("acme", "beta")[i % 2])]):
                stores[0].api_keys.insert(api_key(tenant=("acme", "beta")[i % 2]))
        moved: list[list[ac.ChainEvent]] = [[], []]

        def drain(k: int) -> None:
            while True:
                got = stores[k].audit.drain_outbox(7)
                if not got:
                    return
                moved[k].extend(got)

        threads = [threading.Thread(target=drain, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [e.event_id for part in moved for e in part]
        assert len(ids) == len(set(ids)) == 300
        for tenant in ("acme", "beta"):
            events = chained(stores[0], tenant)
            assert [e.sequence for e in events] == list(range(1, 151))
            report = ac.verify_chain(
                iter(events),
                tenant=tenant,
                checkpoints=[],
                keys={},
                anchor=None,
                first_sequence=1,
                head_sequence=150,
                to_head=True,
            )
            assert report.ok
    finally:
        for s in stores:
            s.close()


def test_audit_log_change_is_read_back_at_once_and_verifies(store: Store) -> None:
    log = make_log(store, outbox_poll=3600.0)
    try:
        rec = api_key()
        with log.change(entry(action="api_key.create", target="k1")):
            store.api_keys.insert(rec)
        # The read barrier chains the outbox before a query, export or verification.
        events, _ = log.reader.query("acme", AuditFilter(action="api_key.create"))
        assert [e.target for e in events] == ["k1"]
        assert log.reader.verify("acme").ok
    finally:
        log.stop()


def test_audit_log_change_without_a_change_records_durably_or_not_at_all(store: Store) -> None:
    log = make_log(store)
    try:
        with log.change(entry(action="api_key.revoke", target="idempotent")):
            store.api_keys.revoke("acme", "web", "key_missing", datetime.now(UTC))
        with log.change(entry(action="secret.update", target="lost-race"), record_unchanged=False):
            store.api_keys.revoke("acme", "web", "key_missing", datetime.now(UTC))
        with pytest.raises(NotFound), log.change(entry(action="api_key.revoke", target="nf")):
            raise NotFound("no such key")
        targets = [e.target for e in log.reader.query("acme", AuditFilter())[0]]
        assert targets == ["idempotent"]
    finally:
        log.stop()


def test_leftovers_of_a_dead_process_are_chained_at_start(
    store: Store, stopped_log: AuditLog
) -> None:
    """Events committed with their changes by a process whose writer never ran (killed) are
    chained by the next process at its start, without any new traffic."""
    for i in range(5):
        with stopped_log.change(entry(action="api_key.create", target=f"k{i}")):
            store.api_keys.insert(api_key())
    assert store.audit.outbox_size() == 5
    log = make_log(store)
    try:
        deadline = 50
        while store.audit.outbox_size() and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        assert store.audit.outbox_size() == 0
        assert [e.target for e in chained(store)] == [f"k{i}" for i in range(5)]
    finally:
        log.stop()


def test_a_change_whose_event_cannot_be_written_does_not_happen(
    store: Store, store_url: str
) -> None:
    """Fail closed: with the outbox unwritable, the change is refused and leaves nothing."""
    log = make_log(store)
    try:
        RawDb(store_url).run("ALTER TABLE audit_outbox RENAME TO audit_outbox_gone")
        rec = api_key()
        with pytest.raises(Exception) as caught, log.change(entry(action="api_key.create")):
            store.api_keys.insert(rec)
        assert not isinstance(caught.value, AssertionError)
        assert store.api_keys.get("acme", "web", rec.key_id) is None
    finally:
        RawDb(store_url).run("ALTER TABLE audit_outbox_gone RENAME TO audit_outbox")
        log.stop()


def test_closed_store_refuses_the_change_and_the_drain(store_url: str) -> None:
    s = open_store(store_url)
    s.migrate()
    s.close()
    with pytest.raises(Unavailable), outbox.staged([draft(400)]):
        s.api_keys.insert(api_key())
    with pytest.raises(Unavailable):
        s.audit.drain_outbox(10)
