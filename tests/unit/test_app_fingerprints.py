"""Fingerprint and handle use cases over real stores (both backends) and real wrapped data keys:
no collisions across tenants or namespaces, no input in the output, the batch path's cost
(no unwrap or database read per value), rotation with and without overlap, sweeps, and handle
collisions forced with a seeded random source."""

from __future__ import annotations

import base64
import hashlib
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.customer_keys import CustomerKeys
from zumik_secrets.app.data_keys import DataKeys
from zumik_secrets.app.fingerprints import Fingerprints, MatchResult, sweeper
from zumik_secrets.app.handles import Handles
from zumik_secrets.core import fingerprints as fp
from zumik_secrets.core.errors import InvalidArgument, NotFound, Unavailable
from zumik_secrets.core.handles import HANDLE_RE
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.core.names import HandleName, ProjectName, TenantName
from zumik_secrets.core.primitives import HmacSha256, hmac_sha256
from zumik_secrets.storage.records import ChangeRecord

A = ProjectName("tenant-a", "proj")
B = ProjectName("tenant-b", "proj")
ADMIN = Actor(identity="spiffe://zumik.local/svc/control-plane")
T0 = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


class Recorder:
    """An audit recorder keeping entries in memory."""

    def __init__(self) -> None:
        self.entries: list[tuple[AuditEntry, bool]] = []
        self.fail = False

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        if self.fail:
            raise Unavailable("down", reason="AUDIT_STORE_UNAVAILABLE")
        self.entries.append((entry, durable))

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Iterator[None]:
        if self.fail:  # the event cannot be written: the change does not happen
            raise Unavailable("down", reason="AUDIT_STORE_UNAVAILABLE")
        yield
        self.entries.extend((entry, True) for entry in entries)

    def actions(self, action: str) -> list[AuditEntry]:
        return [e for e, _ in self.entries if e.action == action]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class CountingStore:
    """Wraps a data-key store and counts reads, to prove the hot path does not touch it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


KEYRING = generate_keyring()


class Env:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.clock = Clock()
        self.audit = Recorder()
        keyring = MasterKeyring.from_text(KEYRING)
        self.dk_store = CountingStore(store.data_keys)
        customer = CustomerKeys(store.customer_keys, store.data_keys, keyring, self.audit)
        self.data_keys = DataKeys(self.dk_store, customer, clock=self.clock)
        self.fps = Fingerprints(
            self.data_keys, store.fingerprint_schedule, self.audit, clock=self.clock
        )

    def feed(self) -> None:
        """Deliver the change feed as the server's watcher would."""
        for change in self.store.changes.since(0):
            self.data_keys.on_change(change)


@pytest.fixture
def env(store: Any) -> Iterator[Env]:
    yield Env(store)


# -- formats and the batch path ----------------------------------------------------------------


def test_hmac_state_equals_one_shot_hmac_and_batch_equals_single() -> None:
    key = bytes(range(32))
    mac = HmacSha256(key, b"pre")
    assert mac.digest(b"fix") == hmac_sha256(key, b"prefix")
    assert mac.with_prefix(b"fi").digest(b"x") == hmac_sha256(key, b"prefix")
    assert "000102" not in repr(mac) and "key hidden" in repr(mac)
    f = fp.Fingerprinter(key, 7, "t", "p", "email")
    values = [b"", b"a", b"\x00" * 100, "ü".encode(), bytes(range(256))]
    assert f.fingerprint_all(values) == [f.fingerprint(v) for v in values]
    assert f.fingerprint_all([]) == []
    assert fp.Fingerprinter(HmacSha256(key), 7, "t", "p", "email").fingerprint(b"a") == (
        f.fingerprint(b"a")
    )


def test_batch_path_does_not_touch_storage_or_unwrap_per_value(env: Env) -> None:
    values = [f"user{i}@example.com".encode() for i in range(1000)]
    first = env.fps.fingerprint(A, "email", values)
    assert len(first.fingerprints) == 1000 and first.previous_fingerprints == []
    reads = env.dk_store.calls
    assert reads <= 3  # cold: primary lookup, create, re-read
    for _ in range(5):
        again = env.fps.fingerprint(A, "email", values)
        assert again.fingerprints == first.fingerprints
    assert env.dk_store.calls == reads  # warm: no storage access at all, per call or per value


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([], "FIELD_REQUIRED"),
        ([b"x"] * (fp.MAX_BATCH + 1), "BATCH_TOO_LARGE"),
        ([b"x", b"y" * (fp.MAX_VALUE_BYTES + 1)], "VALUE_TOO_LARGE"),
    ],
)
def test_batch_limits(env: Env, values: list[bytes], reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        env.fps.fingerprint(A, "email", values)
    assert caught.value.reason == reason
    assert "values" in caught.value.metadata["field"]


def test_largest_batch_and_value_are_accepted(env: Env) -> None:
    out = env.fps.fingerprint(A, "email", [b"v" * fp.MAX_VALUE_BYTES] * fp.MAX_BATCH)
    assert len(set(out.fingerprints)) == 1 and len(out.fingerprints) == fp.MAX_BATCH


# -- the property: no collisions, nothing of the input in the output ---------------------------


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    values=st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=20, unique=True),
    ns1=st.from_regex(fp.NAMESPACE_RE, fullmatch=True),
    ns2=st.from_regex(fp.NAMESPACE_RE, fullmatch=True),
)
def test_fingerprints_never_collide_across_tenants_or_namespaces(
    env: Env, values: list[bytes], ns1: str, ns2: str
) -> None:
    outputs: dict[str, tuple[str, str, bytes]] = {}
    namespaces = {ns1, ns2}
    for parent in (A, B):
        for ns in namespaces:
            for value, out in zip(
                values, env.fps.fingerprint(parent, ns, values).fingerprints, strict=True
            ):
                where = (parent.tenant, ns, value)
                assert outputs.setdefault(out, where) == where, "collision"
                assert out.startswith("fp1.1.")
                plain = [
                    hashlib.sha256(value).hexdigest(),
                    base64.urlsafe_b64encode(hashlib.sha256(value).digest()).decode().rstrip("="),
                    base64.b64encode(hashlib.sha256(value).digest()).decode().rstrip("="),
                ]
                assert not any(p in out for p in plain)
                if len(value) >= 4:
                    assert value.hex() not in out
                    text = value.decode("latin-1")
                    assert text not in out
                    assert base64.urlsafe_b64encode(value).decode().rstrip("=") not in out
    # The same value in the same tenant and namespace is stable.
    assert env.fps.fingerprint(A, ns1, values).fingerprints == [
        o for o, w in outputs.items() if w[0] == A.tenant and w[1] == ns1
    ]


# -- matching ----------------------------------------------------------------------------------


def test_match(env: Env) -> None:
    [mine] = env.fps.fingerprint(A, "email", [b"alice"]).fingerprints
    assert env.fps.match(A, "email", b"alice", mine) is MatchResult.MATCH
    assert env.fps.match(A, "email", b"alicE", mine) is MatchResult.NO_MATCH
    assert env.fps.match(A, "phone", b"alice", mine) is MatchResult.NO_MATCH
    # Another tenant's check of the same value and fingerprint: its own key, no match.
    assert env.fps.match(B, "email", b"alice", mine) is MatchResult.NO_MATCH
    # A version this project never had: NO_MATCH (documented choice).
    unknown = "fp1.99." + mine.split(".")[2]
    assert env.fps.match(A, "email", b"alice", unknown) is MatchResult.NO_MATCH
    for bad in ("", "fp1.1.abc", "fp2.1." + "A" * 43, "fp1.0." + "A" * 43, mine + "A"):
        with pytest.raises(InvalidArgument) as caught:
            env.fps.match(A, "email", b"alice", bad)
        assert caught.value.reason == "FINGERPRINT_MALFORMED"


# -- rotation ----------------------------------------------------------------------------------


def test_rotation_without_overlap_destroys_at_once(env: Env) -> None:
    [old] = env.fps.fingerprint(A, "email", [b"alice"]).fingerprints
    [other] = env.fps.fingerprint(B, "email", [b"alice"]).fingerprints
    result = env.fps.rotate(A, timedelta(0), ADMIN)
    assert (result.key_version, result.previous_key_version) == (2, 1)
    assert result.linkage_break_time == T0
    versions = {v.version: v for v in env.data_keys.versions(A.tenant, A.project, "fingerprint")}
    assert versions[1].state == "destroyed" and versions[1].wrapped_key is None
    assert versions[2].state == "primary"
    [new] = env.fps.fingerprint(A, "email", [b"alice"]).fingerprints
    assert new != old and new.startswith("fp1.2.")
    assert env.fps.match(A, "email", b"alice", old) is MatchResult.KEY_DESTROYED
    assert env.fps.match(A, "email", b"alice", new) is MatchResult.MATCH
    # Tenant B is untouched.
    assert env.fps.fingerprint(B, "email", [b"alice"]).fingerprints == [other]
    [broken] = env.audit.actions("fingerprint_key.linkage_broken")
    assert broken.tenant_id == A.tenant and broken.attributes["destroyed_version"] == "1"
    assert broken.actor == ADMIN.identity
    assert all(d for e, d in env.audit.entries if e.action.startswith("fingerprint_key."))
    assert env.store.fingerprint_schedule.pending(A.tenant, A.project) == []


def test_first_rotation_of_a_fresh_project(env: Env) -> None:
    result = env.fps.rotate(A, timedelta(0), ADMIN)
    assert (result.key_version, result.previous_key_version) == (1, 0)
    assert env.audit.actions("fingerprint_key.linkage_broken") == []


def test_rotation_with_overlap_then_lazy_destruction(env: Env) -> None:
    [old] = env.fps.fingerprint(A, "email", [b"alice"]).fingerprints
    result = env.fps.rotate(A, timedelta(seconds=30), ADMIN)
    assert result.linkage_break_time == T0 + timedelta(seconds=30)
    during = env.fps.fingerprint(A, "email", [b"alice", b"bob"])
    assert during.key_version == 2
    assert during.previous_fingerprints[0] == old
    assert during.fingerprints[0].startswith("fp1.2.") and during.fingerprints[0] != old
    assert env.fps.match(A, "email", b"alice", old) is MatchResult.MATCH
    assert env.audit.actions("fingerprint_key.linkage_broken") == []
    # The window ends: the next call on this project sweeps it (no periodic sweep needed).
    env.clock.now = T0 + timedelta(seconds=30)
    after = env.fps.fingerprint(A, "email", [b"alice"])
    assert after.previous_fingerprints == [] and after.fingerprints == during.fingerprints[:1]
    assert env.fps.match(A, "email", b"alice", old) is MatchResult.KEY_DESTROYED
    [broken] = env.audit.actions("fingerprint_key.linkage_broken")
    assert broken.attributes["scheduled_time"] == (T0 + timedelta(seconds=30)).isoformat()
    assert broken.actor == "zumik-secrets"
    versions = {
        v.version: v.state for v in env.data_keys.versions(A.tenant, A.project, "fingerprint")
    }
    assert versions == {1: "destroyed", 2: "primary"}


def test_match_says_destroyed_as_soon_as_the_window_ends(env: Env) -> None:
    [old] = env.fps.fingerprint(A, "email", [b"alice"]).fingerprints
    env.fps.rotate(A, timedelta(seconds=10), ADMIN)
    env.fps.fingerprint(A, "email", [b"x"])  # state cached with its deadline
    env.clock.now = T0 + timedelta(seconds=10)
    env.audit.fail = True  # the sweep cannot complete: the answer must still be KEY_DESTROYED
    assert env.fps.match(A, "email", b"alice", old) is MatchResult.KEY_DESTROYED
    env.audit.fail = False
    env.clock.now = T0 + timedelta(minutes=5)  # the lease has lapsed
    assert env.fps.sweep() == 1
    assert len(env.audit.actions("fingerprint_key.linkage_broken")) == 1
    assert env.fps.sweep() == 0


def test_periodic_sweep_across_projects(env: Env) -> None:
    for parent in (A, B):
        env.fps.fingerprint(parent, "email", [b"v"])
        env.fps.rotate(parent, timedelta(seconds=5), ADMIN)
    assert env.fps.sweep() == 0
    env.clock.now = T0 + timedelta(seconds=6)
    assert env.fps.sweep() == 2
    assert {e.tenant_id for e in env.audit.actions("fingerprint_key.linkage_broken")} == {
        A.tenant,
        B.tenant,
    }
    job = sweeper(env.fps, interval=0.05)
    job.start()
    job.stop()
    job.stop()


def test_second_rotation_during_a_window_keeps_one_previous(env: Env) -> None:
    [v1] = env.fps.fingerprint(A, "email", [b"a"]).fingerprints
    env.fps.rotate(A, timedelta(seconds=60), ADMIN)
    [v2] = env.fps.fingerprint(A, "email", [b"a"]).fingerprints
    env.clock.now = T0 + timedelta(seconds=1)
    env.fps.rotate(A, timedelta(seconds=600), ADMIN)  # v1 keeps its earlier time
    out = env.fps.fingerprint(A, "email", [b"a"])
    assert out.key_version == 3 and out.previous_fingerprints == [v2]
    assert env.fps.match(A, "email", b"a", v1) is MatchResult.MATCH
    env.clock.now = T0 + timedelta(seconds=61)
    assert env.fps.match(A, "email", b"a", v1) is MatchResult.KEY_DESTROYED
    assert env.fps.match(A, "email", b"a", v2) is MatchResult.MATCH
    # An immediate rotation now destroys every older version at once.
    env.fps.rotate(A, timedelta(0), ADMIN)
    assert env.fps.match(A, "email", b"a", v2) is MatchResult.KEY_DESTROYED
    states = {
        v.version: v.state for v in env.data_keys.versions(A.tenant, A.project, "fingerprint")
    }
    assert states == {1: "destroyed", 2: "destroyed", 3: "destroyed", 4: "primary"}


def test_rotation_fails_closed_when_audit_is_down(env: Env) -> None:
    env.fps.fingerprint(A, "email", [b"a"])
    env.audit.fail = True
    with pytest.raises(Unavailable):
        env.fps.rotate(A, timedelta(0), ADMIN)
    # The event is written with the change or the change does not happen (issue 24): no new
    # version, nothing scheduled, nothing destroyed.
    states = {
        v.version: v.state for v in env.data_keys.versions(A.tenant, A.project, "fingerprint")
    }
    assert states == {1: "primary"}
    assert env.store.fingerprint_schedule.pending(A.tenant, A.project) == []
    env.audit.fail = False
    env.fps.rotate(A, timedelta(0), ADMIN)
    assert len(env.audit.actions("fingerprint_key.rotate")) == 1
    assert len(env.audit.actions("fingerprint_key.linkage_broken")) == 1


def test_overlap_bounds(env: Env) -> None:
    for bad in (timedelta(seconds=-1), timedelta(days=91)):
        with pytest.raises(InvalidArgument):
            env.fps.rotate(A, bad, ADMIN)


def test_other_replica_sees_rotation_through_the_change_feed(store: Any) -> None:
    one, two = Env(store), Env(store)
    [old] = two.fps.fingerprint(A, "email", [b"a"]).fingerprints
    one.fps.rotate(A, timedelta(seconds=30), ADMIN)
    assert two.fps.fingerprint(A, "email", [b"a"]).fingerprints == [old]  # cached, no feed yet
    two.feed()
    out = two.fps.fingerprint(A, "email", [b"a"])
    assert out.key_version == 2 and out.previous_fingerprints == [old]
    two.data_keys.on_change(ChangeRecord(seq=1, kind="data_key", entity_id="x/y/seal", at=T0))


# -- handles -----------------------------------------------------------------------------------


def test_mint_and_resolve(store: Any) -> None:
    audit = Recorder()
    handles = Handles(store.handles, audit)
    rec = handles.mint(TenantName("tenant-a"), "user", "users/42", ADMIN)
    assert HANDLE_RE.fullmatch(rec.handle) and rec.handle.startswith("user_")
    again = handles.mint(TenantName("tenant-a"), "user", "users/42", ADMIN)
    assert again.handle != rec.handle  # never derived from the reference
    assert handles.resolve(HandleName("tenant-a", rec.handle)).reference == "users/42"
    with pytest.raises(NotFound):
        handles.resolve(HandleName("tenant-b", rec.handle))
    [event, _] = audit.actions("handle.mint")
    assert "users/42" not in repr(event)
    for kind, reference in (("U", "r"), ("x", "r"), ("toolongkind", "r"), ("ab", ""), ("ab", "\n")):
        with pytest.raises(InvalidArgument):
            handles.mint(TenantName("tenant-a"), kind, reference, ADMIN)
    with pytest.raises(InvalidArgument):
        handles.mint(TenantName("tenant-a"), "ab", "r" * 257, ADMIN)
    handles.mint(TenantName("tenant-a"), "ab", "r" * 256, ADMIN)


def test_collision_is_retried_with_a_fresh_handle(store: Any) -> None:
    first = Handles(store.handles, Recorder(), rand=random.Random(7).randbytes)
    taken = first.mint(TenantName("tenant-a"), "user", "one", ADMIN)
    # Same seed: the first candidate collides with `taken`, the retry draws the next one.
    rng = random.Random(7)
    draws: list[bytes] = []

    def rand(n: int) -> bytes:
        draws.append(rng.randbytes(n))
        return draws[-1]

    second = Handles(store.handles, Recorder(), rand=rand)
    rec = second.mint(TenantName("tenant-a"), "user", "two", ADMIN)
    assert len(draws) == 2 and rec.handle != taken.handle
    assert second.resolve(HandleName("tenant-a", taken.handle)).reference == "one"
    # Every draw collides: a few attempts, then UNAVAILABLE.
    stuck = Handles(store.handles, Recorder(), rand=lambda n: random.Random(7).randbytes(n))
    with pytest.raises(Unavailable) as caught:
        stuck.mint(TenantName("tenant-a"), "user", "three", ADMIN)
    assert caught.value.reason == "HANDLE_COLLISION"
    # Another tenant may get the same random draw: handles are unique per tenant.
    same = Handles(store.handles, Recorder(), rand=random.Random(7).randbytes)
    assert same.mint(TenantName("tenant-b"), "user", "x", ADMIN).handle == taken.handle


def test_concurrent_first_use_creates_one_key(store: Any) -> None:
    env = Env(store)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        results.extend(env.fps.fingerprint(A, "email", [b"same"]).fingerprints)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(results)) == 1 and len(results) == 8
