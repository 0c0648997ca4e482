"""The audit store and log on both backends: chaining, concurrency, group commit, checkpoints,
tamper detection (directly in the database), retention, and failing closed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.core import audit_chain as ac
from zumik_secrets.core.errors import Unavailable
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.ports import AuditFilter, Store


def entry(tenant: str | None = "acme", i: int = 0, **kw: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "tenant_id": tenant,
        "actor": "spiffe://zumik.local/svc/billing",
        "actor_subject": "",
        "action": "billing.invoice_paid",
        "target": f"invoices/{i}",
        "outcome": "success",
        "reason": "",
        "attributes": {"n": str(i)},
    }
    values.update(kw)
    return AuditEntry(**values)


KEYRING = MasterKeyring.from_text(generate_keyring())


def make_log(store: Store, **kw: Any) -> AuditLog:
    keys = CheckpointKeys(store.signing_keys, KEYRING)
    keys.load()
    options: dict[str, Any] = {"checkpoint_interval": 3600.0, "checkpoint_every": 10**9}
    options.update(kw)
    log = AuditLog(store.audit, keys, **options)
    log.start()
    return log


@pytest.fixture
def audit_log(store: Store) -> Iterator[AuditLog]:
    log = make_log(store)
    yield log
    log.stop()


class RawDb:
    """Direct SQL on the store's database, bypassing the service (to tamper)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith("postgres")

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.pg:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                cur = conn.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        conn = sqlite3.connect(self.url[len("sqlite:///") :], isolation_level=None)
        try:
            cur = conn.execute(sql, params)
            return cur.fetchall()
        finally:
            conn.close()


# -- chaining ---------------------------------------------------------------------------------


def test_append_chains_each_tenant_separately(store: Store) -> None:
    drafts = [
        ac.EventDraft(
            t, f"evt_{t}_{i}", datetime.now(UTC), "a", "", "x.y", "", "success", "", "", ()
        )
        for i in range(3)
        for t in ("acme", "-", "beta")
    ]
    stored = store.audit.append(drafts)
    assert [e.event_id for e in stored] == [d.event_id for d in drafts]
    for tenant in ("acme", "beta", "-"):
        mine = [e for e in stored if e.tenant == tenant]
        assert [e.sequence for e in mine] == [1, 2, 3]
        assert mine[0].prev_hash == ac.GENESIS_HASH
        assert store.audit.head(tenant) == (3, mine[-1].hash)
        assert store.audit.events(tenant, after_sequence=0, limit=10) == mine
    import dataclasses

    more = store.audit.append([dataclasses.replace(drafts[0], event_id="evt_more")])
    acme = [e for e in stored if e.tenant == "acme"]
    assert more[0].sequence == 4 and more[0].prev_hash == acme[-1].hash


def test_records_verify_and_query(audit_log: AuditLog) -> None:
    for i in range(30):
        audit_log.record(entry(i=i, outcome="failure" if i % 3 == 0 else "success"))
    audit_log.append(entry(i=99, action="billing.plan_changed"))
    assert audit_log.reader.verify("acme").ok
    failures, token = audit_log.reader.query("acme", AuditFilter(outcome="failure"), page_size=4)
    assert [e.sequence for e in failures] == [1, 4, 7, 10] and token
    rest, token2 = audit_log.reader.query("acme", AuditFilter(outcome="failure"), page_token=token)
    assert [e.sequence for e in rest] == [13, 16, 19, 22, 25, 28] and token2 == ""
    plan, _ = audit_log.reader.query("acme", AuditFilter(action="billing.plan_changed"))
    assert [e.target for e in plan] == ["invoices/99"]
    from zumik_secrets.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        audit_log.reader.query("acme", AuditFilter(outcome="success"), page_token=token)


def test_concurrent_appenders_on_two_store_instances_stay_gapless(store_url: str) -> None:
    """Two stores on one database (two processes' worth of pools), eight threads each."""
    stores = [open_store(store_url), open_store(store_url)]
    for s in stores:
        s.migrate()
    logs = [make_log(s) for s in stores]
    per_thread = 60
    errors: list[BaseException] = []

    def work(log: AuditLog, n: int) -> None:
        try:
            for i in range(per_thread):
                log.record(entry(i=n * 1000 + i), durable=(i % 2 == 0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(log, n)) for n, log in enumerate(logs * 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.stop()
    assert not errors
    report = logs[0].reader.verify("acme")
    assert report.ok, report
    assert report.checked_count == report.head_sequence == len(threads) * per_thread
    for s in stores:
        s.close()


def test_group_commit_batches_durable_callers(audit_log: AuditLog) -> None:
    barrier = threading.Barrier(16)

    def work() -> None:
        barrier.wait()
        for i in range(25):
            audit_log.record(entry(i=i), durable=True)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert audit_log.reader.verify("acme").checked_count == 400
    assert audit_log.commits < 400  # several events per transaction


def test_non_durable_events_land_within_a_short_bound(store: Store, audit_log: AuditLog) -> None:
    started = time.monotonic()
    audit_log.record(entry(i=1))
    while store.audit.head("acme") is None:
        assert time.monotonic() - started < 0.5
        time.sleep(0.002)


def test_linger_gathers_non_durable_events_into_one_commit(store: Store) -> None:
    log = make_log(store, linger=1.5)
    try:
        commits = log.commits
        started = time.monotonic()
        for i in range(20):
            log.record(entry(i=i))
        time.sleep(0.1)
        assert store.audit.head("acme") is None  # still lingering: nothing committed yet
        while (store.audit.head("acme") or (0, b""))[0] < 20:
            assert time.monotonic() - started < 6.0
            time.sleep(0.01)
        assert log.commits - commits == 1
        assert log.reader.verify("acme").ok
    finally:
        log.stop()


def test_a_durable_event_ends_the_linger_at_once(store: Store) -> None:
    log = make_log(store, linger=5.0)
    try:
        log.record(entry(i=1))
        time.sleep(0.05)  # the writer is now lingering on the non-durable event
        started = time.monotonic()
        stored = log.append(entry(i=2))
        assert time.monotonic() - started < 2.0  # not the 5 s linger
        assert stored.sequence == 2  # the lingering event went first, in the same commit
        assert store.audit.head("acme") == (2, stored.hash)
    finally:
        log.stop()


def test_stop_writes_lingering_events(store: Store) -> None:
    log = make_log(store, linger=30.0)
    log.record(entry(i=1))
    log.record(entry(i=2))
    started = time.monotonic()
    log.stop()
    assert time.monotonic() - started < 5.0
    assert store.audit.head("acme") is not None
    assert store.audit.head("acme")[0] == 2  # type: ignore[index]


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoints_are_signed_idempotent_and_periodic(store: Store) -> None:
    log = make_log(store, checkpoint_interval=0.2)
    try:
        empty = log.checkpoints.create_checkpoint("acme")
        assert (empty.sequence, empty.head_hash) == (0, ac.GENESIS_HASH)
        for i in range(5):
            log.append(entry(i=i))
        first = log.checkpoints.create_checkpoint("acme")
        again = log.checkpoints.create_checkpoint("acme")
        assert first == again and first.sequence == 5
        keys = {k.kid: k.public_key for k in log.checkpoints.checkpoint_keys()}
        assert ac.checkpoint_valid(first, keys)
        log.append(entry(i=6))
        deadline = time.monotonic() + 5
        while not store.audit.checkpoints("acme", from_sequence=6):
            assert time.monotonic() < deadline, "no periodic checkpoint"
            time.sleep(0.05)
    finally:
        log.stop()


# -- tampering, directly in the database ---------------------------------------------------------


def _tamper(db: RawDb, kind: str) -> None:
    if kind == "edit":
        db.run(
            "UPDATE audit_events SET target = 'invoices/forged' WHERE tenant = 'acme' AND seq = ?",
            (7,),
        )
    elif kind == "edit_attributes":
        db.run("UPDATE audit_events SET attributes = '{}' WHERE tenant = 'acme' AND seq = ?", (8,))
    elif kind == "delete":
        db.run("DELETE FROM audit_events WHERE tenant = 'acme' AND seq = ?", (10,))
    elif kind == "swap":
        db.run("UPDATE audit_events SET seq = 1000005 WHERE tenant = 'acme' AND seq = ?", (5,))
        db.run("UPDATE audit_events SET seq = 5 WHERE tenant = 'acme' AND seq = ?", (6,))
        db.run("UPDATE audit_events SET seq = 6 WHERE tenant = 'acme' AND seq = ?", (1000005,))
    elif kind == "insert":
        db.run("UPDATE audit_events SET seq = seq + 1000 WHERE tenant = 'acme' AND seq >= 5")
        db.run("UPDATE audit_events SET seq = seq - 999 WHERE tenant = 'acme' AND seq >= 1000")
        db.run(
            "INSERT INTO audit_events (tenant, seq, event_id, time, actor, actor_subject, action,"
            " target, outcome, reason, trace_id, attributes, prev_hash, hash)"
            " SELECT tenant, 5, 'evt_inserted', time, actor, actor_subject, action, 'x', outcome,"
            " reason, trace_id, attributes, prev_hash, hash FROM audit_events"
            " WHERE tenant = 'acme' AND seq = ?",
            (4,),
        )
    elif kind == "truncate":
        db.run("DELETE FROM audit_events WHERE tenant = 'acme' AND seq > 12")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "first_bad", "failure"),
    [
        ("edit", 7, ac.ChainFailure.EDITED),
        ("edit_attributes", 8, ac.ChainFailure.EDITED),
        ("delete", 10, ac.ChainFailure.DELETED),
        ("swap", 5, ac.ChainFailure.REORDERED),
        ("insert", 5, ac.ChainFailure.INSERTED),
        ("truncate", 13, ac.ChainFailure.CHECKPOINT_MISMATCH),
    ],
)
def test_tampering_in_the_database_is_detected_and_located(
    store: Store, store_url: str, audit_log: AuditLog, kind: str, first_bad: int, failure: Any
) -> None:
    for i in range(15):
        audit_log.append(entry(i=i))
    audit_log.checkpoints.create_checkpoint("acme")  # at 15
    for i in range(15, 20):
        audit_log.append(entry(i=i))
    audit_log.record(entry("beta", 1), durable=True)  # another tenant's chain stays intact
    assert audit_log.reader.verify("acme").ok
    _tamper(RawDb(store_url), kind)
    report = audit_log.reader.verify("acme")
    assert (report.ok, report.first_bad_sequence, report.failure) == (False, first_bad, failure)
    offline = ac.verify_export(
        list(audit_log.reader.export("acme")),
        {k.kid: k.public_key for k in audit_log.checkpoints.checkpoint_keys()},
    )
    assert (offline.first_bad_sequence, offline.failure) == (first_bad, failure)
    assert audit_log.reader.verify("beta").ok


def test_range_verification_and_resumed_export(audit_log: AuditLog) -> None:
    for i in range(40):
        audit_log.record(entry(i=i), durable=i == 39)
    report = audit_log.reader.verify("acme", 10, 20)
    assert report.ok and report.checked_count == 11
    keys = {k.kid: k.public_key for k in audit_log.checkpoints.checkpoint_keys()}
    # No checkpoint before 25: the export starts with a resume line no signature confirms, so
    # the offline verifier accepts it only when told to; it ends at a checkpoint signed now.
    lines = list(audit_log.reader.export("acme", 25))
    assert lines[0].startswith('{"type":"resume"')
    assert lines[-1].startswith('{"type":"checkpoint"') and '"seq":40' in lines[-1]
    assert ac.verify_export(lines, keys).failure is ac.ChainFailure.UNANCHORED
    assert ac.verify_export(lines, keys, allow_unanchored=True).ok
    assert len(ac.parse_export(lines).events) == 16
    # With a checkpoint at or before 24, the export starts there and verifies on its own.
    for i in range(40, 45):
        audit_log.record(entry(i=i), durable=i == 44)
    lines = list(audit_log.reader.export("acme", 42))
    assert lines[0].startswith('{"type":"checkpoint"') and '"seq":40' in lines[0]
    assert ac.verify_export(lines, keys).ok
    assert [e.sequence for e in ac.parse_export(lines).events] == [41, 42, 43, 44, 45]


# -- retention --------------------------------------------------------------------------------


def test_retention_sweep_keeps_a_signed_anchor(store: Store) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    log = make_log(store, clock=lambda: now[0], retention=timedelta(days=30))
    try:
        for day in range(60):
            now[0] = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=day)
            log.append(entry(i=day))
            log.append(entry("-", day, action="authz.deny", outcome="denied"))
        now[0] = datetime(2030, 3, 1, 12, tzinfo=UTC)  # day 59.5: keeps days >= 29.5
        result = log.sweep()
        assert result.pruned["acme"] == (30, 30)
        assert result.pruned["-"] == (30, 30)
        assert store.audit.first_sequence("acme") == 31
        report = log.reader.verify("acme")
        assert report.ok, report
        assert report.head_sequence == 61  # 60 events plus the audit.pruned record
        pruned, _ = log.reader.query("acme", AuditFilter(action="audit.pruned"))
        assert dict(pruned[0].attributes)["through_sequence"] == "30"
        keys = {k.kid: k.public_key for k in log.checkpoints.checkpoint_keys()}
        lines = list(log.reader.export("acme"))
        assert lines[0].startswith('{"type":"checkpoint"') and '"seq":30' in lines[0]
        assert ac.verify_export(lines, keys).ok
        assert log.sweep().pruned == {}  # nothing more is old enough
    finally:
        log.stop()


# -- failing closed ---------------------------------------------------------------------------


class FlakyAudit:
    """Delegates to a real audit store, or fails like a dead database while ``down``."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name in ("append", "probe_write", "add_checkpoint"):

            def guarded(*args: Any, **kwargs: Any) -> Any:
                if self.down:
                    time.sleep(0.05)
                    raise Unavailable("down", reason="STORAGE_UNAVAILABLE")
                return attr(*args, **kwargs)

            return guarded
        return attr


def test_durable_record_fails_closed_and_recovers(store: Store) -> None:
    keys = CheckpointKeys(store.signing_keys, KEYRING)
    keys.load()
    flaky = FlakyAudit(store.audit)
    log = AuditLog(flaky, keys, durable_timeout=1.0, checkpoint_interval=3600)  # type: ignore[arg-type]
    log.start()
    try:
        log.append(entry(i=0))
        flaky.down = True
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            log.record(entry(i=1), durable=True)
        assert info.value.reason == "AUDIT_UNAVAILABLE"
        assert time.monotonic() - started < 1.5
        assert not log.healthy
        for i in range(2, 12):
            log.record(entry(i=i))  # kept and retried, not dropped
        flaky.down = False
        deadline = time.monotonic() + 5
        while not (log.healthy and (store.audit.head("acme") or (0,))[0] == 11):
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.02)
        assert log.dropped == 0
        assert [e.target for e in store.audit.events("acme", after_sequence=1, limit=20)] == [
            f"invoices/{i}" for i in range(2, 12)
        ]
        assert log.reader.verify("acme").ok
    finally:
        log.stop()


def test_health_recovers_by_probe_without_traffic(store: Store) -> None:
    keys = CheckpointKeys(store.signing_keys, KEYRING)
    keys.load()
    flaky = FlakyAudit(store.audit)
    log = AuditLog(flaky, keys, durable_timeout=0.5, checkpoint_interval=3600)  # type: ignore[arg-type]
    log.start()
    try:
        flaky.down = True
        with pytest.raises(Unavailable):
            log.append(entry())
        assert not log.healthy
        flaky.down = False
        deadline = time.monotonic() + 3
        while not log.healthy:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        log.stop()


def test_closed_store_fails_durable_record_within_its_deadline(store_url: str) -> None:
    s = open_store(store_url)
    s.migrate()
    log = make_log(s, durable_timeout=2.0)
    s.close()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        log.record(entry(), durable=True)
    assert time.monotonic() - started < 2.5
    log.record(entry())  # a non-durable record never raises
    log.stop(timeout=1.0)


def test_probe_write_leaves_nothing(store: Store) -> None:
    store.audit.probe_write()
    assert store.audit.head("~probe") is None
    assert store.audit.events("~probe", after_sequence=0, limit=5) == []


def test_any_refused_audit_write_is_unavailable_on_postgresql(
    store: Store, store_url: str, backend: str
) -> None:
    """PostgreSQL audit writes fail closed: an error the kernel does not map (here a trigger's
    exception) is Unavailable too, never a driver error. SQLite maps its errors in the write
    transaction itself (a refused row stays its sqlite3 error, as before issue 17)."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's fail-closed mapping")
    raw = RawDb(store_url)
    raw.run(
        "CREATE FUNCTION zumik_test_refuse() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
    )
    try:
        raw.run(
            "CREATE TRIGGER zumik_test_refuse BEFORE INSERT ON audit_events"
            " FOR EACH ROW EXECUTE FUNCTION zumik_test_refuse()"
        )
        draft = ac.EventDraft(
            "acme", "ev-1", datetime.now(UTC), "a", "", "x.y", "t", "success", "", "", ()
        )
        with pytest.raises(Unavailable):
            store.audit.append([draft])
        with pytest.raises(Unavailable):
            store.audit.probe_write()
        assert store.audit.head("acme") is None
    finally:
        raw.run("DROP FUNCTION zumik_test_refuse() CASCADE")


# -- pins (issue 16) ----------------------------------------------------------------------------


def test_a_head_read_before_this_process_wrote_more_is_no_rewrite(
    store: Store, audit_log: AuditLog
) -> None:
    """The checkpointer reads a head, the writer commits more (moving the pin past it): that
    race must not be reported as a rewrite."""
    for i in range(5):
        audit_log.append(entry(i=i))
    first_three = store.audit.event("acme", 3)
    assert first_three is not None
    assert audit_log.checkpoints.pin_conflict("acme", 3, first_three.hash) is None
    cp = audit_log.checkpoints.sign_head("acme", 3, first_three.hash)
    assert (cp.sequence, audit_log.checkpoints.rewrites_detected) == (3, 0)


def test_a_relinked_rewrite_under_the_pin_is_signed_as_written(
    store: Store, store_url: str
) -> None:
    log = make_log(store)
    try:
        written = [log.append(entry(i=i)) for i in range(6)]
        events = store.audit.events("acme", after_sequence=0, limit=100)
        drafts = [
            ac.EventDraft(
                e.tenant,
                e.event_id,
                e.time,
                e.actor,
                e.actor_subject,
                e.action,
                "moved" if e.sequence == 2 else e.target,
                e.outcome,
                e.reason,
                e.trace_id,
                e.attributes,
            )
            for e in events[1:]
        ]
        forged = ac.extend_chain(1, events[0].hash, drafts)
        raw = RawDb(store_url)
        for ev in forged:
            raw.run(
                "UPDATE audit_events SET target = ?, prev_hash = ?, hash = ? "
                "WHERE tenant = ? AND seq = ?",
                (ev.target, ev.prev_hash, ev.hash, "acme", ev.sequence),
            )
        raw.run("UPDATE audit_heads SET hash = ? WHERE tenant = ?", (forged[-1].hash, "acme"))
        assert log.reader.verify("acme").ok  # self-consistent, no checkpoint yet
        cp = log.checkpoints.create_checkpoint("acme")
        assert (cp.sequence, cp.head_hash) == (6, written[-1].hash)  # the truth, not the head
        assert log.checkpoints.rewrites_detected == 1
        report = log.reader.verify("acme")
        assert not report.ok and report.failure is ac.ChainFailure.CHECKPOINT_MISMATCH
    finally:
        log.stop()
