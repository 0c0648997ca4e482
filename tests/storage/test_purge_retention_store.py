"""Purge jobs and receipts, and the per-tenant retention deletes, on both backends."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.storage.data import T0, api_key, at, handle, session
from zumik_secrets.core.errors import AlreadyExists, FailedPrecondition
from zumik_secrets.storage.aggregates import fence
from zumik_secrets.storage.records import (
    CustomerKeyRecord,
    DataKeyRecord,
    HandleRecord,
    PurgeJob,
    PurgeReceiptRecord,
    SealedSecretRecord,
    TenantSettings,
)


def _data_key(tenant: str, project: str, purpose: str = "seal") -> DataKeyRecord:
    return DataKeyRecord(
        tenant, project, purpose, 1, "primary", secrets.token_bytes(60), "keyring", T0, None
    )


def _secret(tenant: str, project: str) -> SealedSecretRecord:
    return SealedSecretRecord(
        secret_id=handle("sec"),
        tenant_id=tenant,
        project_id=project,
        display_name="s",
        metadata={},
        version=1,
        data_key_version=1,
        size_bytes=3,
        ciphertext=secrets.token_bytes(40),
        created_at=T0,
        updated_at=T0,
    )


def _fill(store, tenant: str) -> None:  # type: ignore[no-untyped-def]
    for project in ("p1", "p2"):
        store.api_keys.insert(api_key(tenant, project))
        store.sessions.insert(session(tenant, project))
        store.sealed_secrets.insert(_secret(tenant, project))
        store.data_keys.insert_first(_data_key(tenant, project))
        store.data_keys.insert_first(_data_key(tenant, project, "fingerprint"))
    store.data_keys.rotate(tenant, "p1", "seal", lambda v: (secrets.token_bytes(60), "keyring"), T0)
    store.handles.insert(HandleRecord(tenant, handle("usr"), "usr", "users/1", T0))
    store.tenants.put(TenantSettings(tenant, "default", T0, audit_retention=timedelta(days=9)))


def _job(tenant: str, project: str | None = None) -> PurgeJob:
    return PurgeJob(
        receipt_id=handle("rcp"),
        tenant_id=tenant,
        project_id=project,
        phase="started",
        destroyed={},
        shredded=(),
        audit_retention=timedelta(days=9),
        started_at=T0,
        updated_at=T0,
    )


def _receipt(job: PurgeJob) -> PurgeReceiptRecord:
    return PurgeReceiptRecord(
        job.tenant_id, job.receipt_id, job.target, b'{"x":1}', "kid", b"s" * 64, 7, at(10)
    )


def test_tenant_purge_phases_are_atomic_idempotent_and_scoped(store) -> None:  # type: ignore[no-untyped-def]
    _fill(store, "acme")
    _fill(store, "other")
    job = store.purges.create_job(_job("acme"))
    with pytest.raises(AlreadyExists):
        store.purges.create_job(_job("acme"))  # one unfinished purge per target
    assert store.purges.open_job("tenants/acme") == job
    seq = store.changes.latest_seq()

    shredded = store.purges.shred(job.receipt_id, at(1))
    assert shredded.phase == "shredded"
    assert [(k.project_id, k.purpose, k.version, k.was) for k in shredded.shredded] == [
        ("p1", "fingerprint", 1, "primary"),
        ("p1", "seal", 1, "enabled"),
        ("p1", "seal", 2, "primary"),
        ("p2", "fingerprint", 1, "primary"),
        ("p2", "seal", 1, "primary"),
    ]
    assert store.data_keys.list_tenant("acme") == []  # no version keeps its key material
    assert store.data_keys.get("acme", "p1", "seal", 2).wrapped_key is None
    assert store.api_keys.list("acme", "p1", page_size=10, after_seq=0, include_revoked=True)
    kinds = {(r.kind, r.entity_id) for r in store.changes.since(seq)}
    assert ("data_key", "acme/p1/seal") in kinds and ("data_key", "acme/p2/fingerprint") in kinds
    assert store.purges.shred(job.receipt_id, at(2)) == shredded  # a phase never runs twice

    deleted = store.purges.delete_rows(job.receipt_id, at(3))
    assert deleted.phase == "deleted"
    assert deleted.destroyed == {
        "api_keys": 2,
        "sessions": 2,
        "secrets": 2,
        "handles": 1,
        "tenant_settings": 1,
        "customer_keys": 0,
    }
    assert not store.purges.scope_has_data("acme", None)
    assert store.tenants.get("acme") is None
    assert store.data_keys.get("acme", "p1", "seal", 1) is None
    kinds = {r.kind for r in store.changes.since(seq)}
    assert {"api_key", "session", "tenant_settings"} <= kinds
    assert store.purges.delete_rows(job.receipt_id, at(4)) == deleted
    store.purges.scrub()

    done = store.purges.finish(job.receipt_id, _receipt(job), at(5))
    assert done.phase == "done" and store.purges.open_job("tenants/acme") is None
    assert store.purges.get_receipt("acme", job.receipt_id) == _receipt(job)
    assert store.purges.latest_receipt("tenants/acme") == _receipt(job)
    assert store.purges.get_job(job.receipt_id) == done
    store.purges.create_job(_job("acme"))  # a finished purge does not block a new one

    # The other tenant is untouched.
    assert store.purges.scope_has_data("other", None)
    assert store.data_keys.get("other", "p1", "seal", 2).wrapped_key is not None
    assert len(store.data_keys.list_tenant("other")) == 5
    assert store.tenants.get("other").audit_retention == timedelta(days=9)


def test_project_purge_keeps_the_other_projects(store) -> None:  # type: ignore[no-untyped-def]
    _fill(store, "acme")
    job = store.purges.create_job(_job("acme", "p1"))
    assert job.target == "tenants/acme/projects/p1"
    store.purges.shred(job.receipt_id, at(1))
    deleted = store.purges.delete_rows(job.receipt_id, at(2))
    assert deleted.destroyed["handles"] == 0 and deleted.destroyed["tenant_settings"] == 0
    assert not store.purges.scope_has_data("acme", "p1")
    assert store.purges.scope_has_data("acme", "p2")
    assert store.data_keys.get("acme", "p2", "seal", 1).wrapped_key is not None
    assert store.tenants.get("acme") is not None


def test_no_data_key_is_created_in_a_purged_scope(store) -> None:  # type: ignore[no-untyped-def]
    _fill(store, "acme")
    job = store.purges.create_job(_job("acme", "p2"))
    store.purges.shred(job.receipt_id, at(1))
    # A first use racing the purge (a late call on another replica) creates nothing, from the
    # moment the job exists until forever: the scope is a tombstone.
    for tenant, project in (("acme", "p2"),):
        with pytest.raises(FailedPrecondition) as refused:
            store.data_keys.insert_first(replace(_data_key(tenant, project, "seal"), version=1))
        assert refused.value.reason == "SCOPE_PURGED"
    store.purges.delete_rows(job.receipt_id, at(2))
    assert store.data_keys.get("acme", "p2", "seal", 1) is None
    store.data_keys.insert_first(replace(_data_key("acme", "p3", "seal"), version=1))  # others
    store.purges.create_job(_job("gone"))
    with pytest.raises(FailedPrecondition):
        store.data_keys.insert_first(replace(_data_key("gone", "any", "seal"), version=1))
    assert ("gone", None) in {(t, p) for t, p, _ in store.purges.tombstones()}
    assert ("acme", "p2") in {(t, p) for t, p, _ in store.purges.tombstones()}
    assert [c.kind for c in store.changes.since(0)].count("purge") == 2


def test_retention_settings_round_trip(store) -> None:  # type: ignore[no-untyped-def]
    settings = TenantSettings(
        "acme",
        "rich",
        T0,
        audit_retention=timedelta(days=30),
        revoked_key_retention=timedelta(0),
        session_absolute_lifetime=timedelta(minutes=5),
    )
    store.tenants.put(settings)
    assert store.tenants.get("acme") == settings
    store.tenants.put(replace(settings, audit_retention=None, revoked_key_retention=None))
    assert store.tenants.get("acme").revoked_key_retention is None


def test_dead_keys_follow_each_tenants_retention(store) -> None:  # type: ignore[no-untyped-def]
    store.tenants.put(TenantSettings("strict", "default", T0, revoked_key_retention=timedelta(0)))
    strict = store.api_keys.insert(api_key("strict"))
    lax = store.api_keys.insert(api_key("lax"))
    expired = store.api_keys.insert(api_key("lax", expire=at(5)))
    alive = store.api_keys.insert(api_key("lax"))
    store.api_keys.revoke("strict", "web", strict.key_id, at(10))
    store.api_keys.revoke("lax", "web", lax.key_id, at(10))
    # At 11 s: strict (retention 0) goes; lax keeps its keys for the default day.
    assert store.api_keys.delete_dead_keys(at(11), timedelta(days=1)) == 1
    assert store.api_keys.get_by_id(strict.key_id) is None
    assert (
        store.api_keys.delete_dead_keys(
            at(11) + timedelta(days=1), timedelta(days=1), tenant_id="strict"
        )
        == 0
    )
    assert store.api_keys.delete_dead_keys(at(11) + timedelta(days=1), timedelta(days=1)) == 2
    assert store.api_keys.get_by_id(expired.key_id) is None
    assert store.api_keys.get_by_id(alive.key_id) is not None


def test_session_sweep_per_tenant_and_change_feed_prune(store) -> None:  # type: ignore[no-untyped-def]
    one = store.sessions.insert(session("one", absolute=at(5)))
    two = store.sessions.insert(session("two", absolute=at(5)))
    assert store.sessions.delete_expired(at(6), tenant_id="one") == 1
    assert store.sessions.get("one", "web", one.session_id) is None
    assert store.sessions.get("two", "web", two.session_id) is not None
    store.api_keys.revoke("x", "web", "key_none", at(1))
    rec = store.api_keys.insert(api_key("x"))
    store.api_keys.revoke("x", "web", rec.key_id, at(1))
    assert store.changes.since(0)
    assert store.changes.prune_before(datetime(2000, 1, 1, tzinfo=UTC)) == 0  # recorded now
    assert store.changes.prune_before(at(10**10)) >= 1
    assert store.changes.since(0) == []


# ------------------------------------------------------------------ the purge fence (creates)


def _creates(store, tenant: str, project: str) -> dict[str, Callable[[], object]]:  # type: ignore[no-untyped-def]
    """Every create inside (tenant, project), and the tenant-level ones."""
    rotate = store.data_keys.rotate
    return {
        "api_key": lambda: store.api_keys.insert(api_key(tenant, project)),
        "session": lambda: store.sessions.insert(session(tenant, project)),
        "secret": lambda: store.sealed_secrets.insert(_secret(tenant, project)),
        "data_key": lambda: store.data_keys.insert_first(_data_key(tenant, project, "fingerprint")),
        "data_key_version": lambda: rotate(
            tenant, project, "seal", lambda v: (secrets.token_bytes(60), "keyring"), T0
        ),
        "fingerprint_schedule": lambda: store.fingerprint_schedule.schedule(
            tenant, project, [1], at(60)
        ),
        "handle": lambda: store.handles.insert(
            HandleRecord(tenant, handle("usr"), "usr", "users/1", T0, project)
        ),
    }


def _tenant_creates(store, tenant: str) -> dict[str, Callable[[], object]]:  # type: ignore[no-untyped-def]
    return {
        "tenant_handle": lambda: store.handles.insert(
            HandleRecord(tenant, handle("usr"), "usr", "users/1", T0)
        ),
        "tenant_settings": lambda: store.tenants.put(TenantSettings(tenant, "rich", T0)),
        "customer_key": lambda: store.customer_keys.put(
            CustomerKeyRecord(tenant, "https://bao:8200", "transit", "k", b"w" * 40, "", T0), []
        ),
    }


def _refused(create: Callable[[], object]) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        create()
    assert refused.value.reason == "SCOPE_PURGED"


def test_nothing_is_created_in_a_purged_project(store) -> None:  # type: ignore[no-untyped-def]
    _fill(store, "acme")
    job = store.purges.create_job(_job("acme", "p1"))
    # From the moment the job exists (before any phase ran), every create in p1 is refused...
    for create in _creates(store, "acme", "p1").values():
        _refused(create)
    store.purges.shred(job.receipt_id, at(1))
    deleted = store.purges.delete_rows(job.receipt_id, at(2))
    for create in _creates(store, "acme", "p1").values():
        _refused(create)
    assert not store.purges.scope_has_data("acme", "p1")
    assert (deleted.destroyed["api_keys"], deleted.destroyed["secrets"]) == (1, 1)
    # ... while the tenant's other projects and the tenant itself keep working.
    for create in _creates(store, "acme", "p2").values():
        create()
    for create in _creates(store, "acme", "p3").values():
        create()
    for create in _tenant_creates(store, "acme").values():
        create()


def test_nothing_is_created_in_a_purged_tenant(store) -> None:  # type: ignore[no-untyped-def]
    _fill(store, "acme")
    _fill(store, "other")
    job = store.purges.create_job(_job("acme"))
    creates = {
        **_creates(store, "acme", "p1"),
        **_creates(store, "acme", "never-used"),  # a tenant purge covers every project
        **_tenant_creates(store, "acme"),
    }
    for create in creates.values():
        _refused(create)
    store.purges.shred(job.receipt_id, at(1))
    store.purges.delete_rows(job.receipt_id, at(2))
    store.purges.finish(job.receipt_id, _receipt(job), at(3))
    for create in creates.values():
        _refused(create)  # forever, the job done or not
    assert not store.purges.scope_has_data("acme", None)
    for create in (
        *_creates(store, "other", "p1").values(),
        *_tenant_creates(store, "other").values(),
    ):
        create()


def test_creates_racing_a_purge_are_deleted_and_counted_or_refused(store) -> None:  # type: ignore[no-untyped-def]
    """Threads create keys, sessions and secrets in a project while another purges it: every
    create that succeeded is deleted and counted by delete_rows, every later one is refused."""
    made: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    started = threading.Barrier(7)
    deleted: list[dict[str, int]] = []
    kinds = ("api_keys", "sessions", "secrets")

    def create(kind: str, project: str):  # type: ignore[no-untyped-def]
        if kind == "api_keys":
            return store.api_keys.insert(api_key("acme", project))
        if kind == "sessions":
            return store.sessions.insert(session("acme", project))
        return store.sealed_secrets.insert(_secret("acme", project))

    def creator(i: int) -> None:
        kind = kinds[i % 3]
        started.wait()
        while not stop.is_set():
            try:
                create(kind, "race")
            except FailedPrecondition as err:
                assert err.reason == "SCOPE_PURGED"
                with lock:
                    refused[kind] += 1
                return
            with lock:
                made[kind] += 1
            create(kind, "calm")  # the tenant's other project is not fenced

    def purger() -> None:
        started.wait()
        time.sleep(0.15)
        job = store.purges.create_job(_job("acme", "race"))
        store.purges.shred(job.receipt_id, at(1))
        deleted.append(store.purges.delete_rows(job.receipt_id, at(2)).destroyed)

    threads = [threading.Thread(target=creator, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=purger))
    for t in threads:
        t.start()
    threads[-1].join(60)
    time.sleep(0.2)  # creators still running keep trying (each must meet the fence)
    stop.set()
    for t in threads:
        t.join(60)

    assert sum(refused.values()) == 6, "every creator met the fence"
    assert all(made[k] > 0 for k in kinds)
    counts = deleted[0]
    assert {k: counts[k] for k in kinds} == {k: made[k] for k in kinds}
    assert not store.purges.scope_has_data("acme", "race")
    listed = store.api_keys.list("acme", "calm", page_size=1000, after_seq=0, include_revoked=True)
    assert len(listed) == made["api_keys"]


def test_a_purge_waits_for_a_create_in_flight(store) -> None:  # type: ignore[no-untyped-def]
    """A create that passed the fence before the purge began commits before the job does (so
    delete_rows deletes and counts it); on PostgreSQL the fence's lock makes it wait."""
    db = store._db  # the kernel: hold one create's transaction open across the purge's start
    in_flight, release = threading.Event(), threading.Event()
    rec = api_key("acme", "p1")
    phases: list[str] = []

    def slow_create() -> None:
        with db.transaction() as conn:
            fence.check(db, conn, "acme", "p1")
            conn.execute(
                "INSERT INTO api_keys (key_id, tenant_id, project_id, display_name, env,"
                " masked_prefix, salt, secret_hash, scopes, state, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'active', %s)",
                (
                    rec.key_id,
                    "acme",
                    "p1",
                    "slow",
                    "live",
                    "zk_live_x",
                    rec.salt,
                    rec.secret_hash,
                    db.dialect.texts_in(rec.scopes),
                    db.dialect.time_in(T0),
                ),
            )
            in_flight.set()
            release.wait(10)

    def purge() -> None:
        job = store.purges.create_job(_job("acme", "p1"))
        phases.append("created")
        store.purges.shred(job.receipt_id, at(1))
        phases.append(str(store.purges.delete_rows(job.receipt_id, at(2)).destroyed["api_keys"]))

    creator = threading.Thread(target=slow_create)
    creator.start()
    assert in_flight.wait(10)
    purger = threading.Thread(target=purge)
    purger.start()
    time.sleep(0.5)
    assert phases == []  # the job waits for the create in flight
    release.set()
    creator.join(10)
    purger.join(30)
    assert phases == ["created", "1"]
    assert store.api_keys.get_by_id(rec.key_id) is None
