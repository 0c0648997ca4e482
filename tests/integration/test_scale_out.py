"""Scale-out proof: three server processes over one PostgreSQL database, as in the prod overlay.

Each replica is a real `zumik-secrets serve` process (its own caches, pools and change watcher)
on its own loopback port, all sharing one fresh database (they migrate it concurrently at start,
under the migration advisory lock), one master keyring and the dev PKI. Shown here:

- an API key created through one replica verifies through the others;
- a revocation through one replica takes effect on the others within REVOCATION_BOUND_S;
- audit events appended through all three form one gapless chain per tenant that verifies;
- a replica killed with SIGKILL mid-load loses no write it had acknowledged.

KeyService and AuditService may still be under construction: a part whose RPC answers
UNIMPLEMENTED is skipped with a reason (detected at run time), so it turns on by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zumik.secrets.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    common_pb2,
    key_service_pb2,
    key_service_pb2_grpc,
)

from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.tls import channel_credentials

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
REPLICAS = 3
# The bound KeyService states for revocation across processes (change feed: NOTIFY or a 250 ms
# poll, plus one feed read): under one second.
REVOCATION_BOUND_S = 1.0
START_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 10.0

T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """One server process."""

    index: int
    proc: subprocess.Popen[bytes]
    target: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    """Three replicas and mTLS channels to them, one per (replica, role)."""

    pki: DevPki
    replicas: list[Replica]
    _channels: dict[tuple[int, str], grpc.Channel] = field(default_factory=dict)

    def channel(self, index: int, role: str) -> grpc.Channel:
        key = (index, role)
        if key not in self._channels:
            pair = self.pki.client(role)
            creds = channel_credentials(self.pki.ca_cert, pair.cert, pair.key)
            self._channels[key] = grpc.secure_channel(self.replicas[index].target, creds)
        return self._channels[key]

    def keys(self, index: int, role: str) -> key_service_pb2_grpc.KeyServiceStub:
        return key_service_pb2_grpc.KeyServiceStub(self.channel(index, role))

    def audit(self, index: int, role: str) -> audit_service_pb2_grpc.AuditServiceStub:
        return audit_service_pb2_grpc.AuditServiceStub(self.channel(index, role))

    def health(self, index: int) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel(index, "auditor"))
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        for r in self.replicas:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in self.replicas:
            try:
                r.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")])
    env["GRPC_VERBOSITY"] = "ERROR"
    env.update(settings)
    return env


@pytest.fixture
def cluster(dev_pki: DevPki, fresh_pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Three `serve` processes over one fresh (unmigrated) PostgreSQL database."""
    keyring = tmp_path / "keyring.json"
    keyring.write_text(generate_keyring(), encoding="utf-8")
    keyring.chmod(0o600)
    replicas: list[Replica] = []
    for index in range(REPLICAS):
        port = _free_port()
        log = tmp_path / f"replica-{index}.log"
        env = _env(
            ZUMIK_LISTEN=f"127.0.0.1:{port}",
            ZUMIK_DATABASE_URL=fresh_pg_url,
            ZUMIK_TLS_CERT=str(dev_pki.server.cert),
            ZUMIK_TLS_KEY=str(dev_pki.server.key),
            ZUMIK_TLS_CLIENT_CA=str(dev_pki.ca_cert),
            ZUMIK_POLICY_FILE=str(dev_policy_path()),
            ZUMIK_MASTER_KEYRING_FILE=str(keyring),
            ZUMIK_PROCESSES="1",  # one process per replica: a SIGKILL takes it all
            ZUMIK_WORKERS="8",
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zumik_secrets.cli.main", "serve"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replicas.append(Replica(index, proc, f"127.0.0.1:{port}", log))
    running = Cluster(dev_pki, replicas)
    try:
        _wait_serving(running)
        yield running
    finally:
        running.close()


def _wait_serving(cluster: Cluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = set(range(REPLICAS))
    while pending and time.monotonic() < deadline:
        for index in sorted(pending):
            replica = cluster.replicas[index]
            if replica.proc.poll() is not None:
                pytest.fail(f"replica {index} exited:\n{replica.log_tail()}")
            try:
                if cluster.health(index) == health_pb2.HealthCheckResponse.SERVING:
                    pending.discard(index)
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    if pending:
        tails = "\n".join(cluster.replicas[i].log_tail() for i in pending)
        pytest.fail(f"replicas {sorted(pending)} not SERVING in {START_TIMEOUT_S}s:\n{tails}")


# ------------------------------------------------------------------------------ requests


def _create_key(
    cluster: Cluster, index: int, tenant: str, label: str
) -> key_service_pb2.CreateApiKeyResponse:
    # control-plane may manage keys for a tenant named in the request, without a claim.
    return cluster.keys(index, "control-plane").CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(
            parent=f"tenants/{tenant}/projects/web",
            display_name=label,
            scopes=["secrets.read"],
        ),
        timeout=RPC_TIMEOUT_S,
    )


def _verify(cluster: Cluster, index: int, raw_key: str) -> key_service_pb2.VerifyApiKeyResponse:
    return cluster.keys(index, "gateway").VerifyApiKey(
        key_service_pb2.VerifyApiKeyRequest(key=raw_key), timeout=RPC_TIMEOUT_S
    )


def _append(
    cluster: Cluster, index: int, tenant: str, n: int
) -> audit_service_pb2.AppendEventResponse:
    # billing appends billing events for any tenant without a claim (dev policy).
    return cluster.audit(index, "billing").AppendEvent(
        audit_service_pb2.AppendEventRequest(
            parent=f"tenants/{tenant}",
            action="billing.plan_changed",
            target=f"tenants/{tenant}",
            outcome=audit_service_pb2.AUDIT_OUTCOME_SUCCESS,
            reason="PLAN_CHANGED",
            attributes={"replica": str(index), "n": str(n)},
        ),
        timeout=RPC_TIMEOUT_S,
    )


def _verify_chain(
    cluster: Cluster, index: int, tenant: str
) -> audit_service_pb2.VerifyChainResponse:
    return cluster.audit(index, "auditor").VerifyChain(
        audit_service_pb2.VerifyChainRequest(parent=f"tenants/{tenant}"), timeout=RPC_TIMEOUT_S
    )


def _events(cluster: Cluster, index: int, tenant: str) -> dict[str, int]:
    """Every retained event of ``tenant``: event id -> sequence number."""
    stub = cluster.audit(index, "auditor")
    events: dict[str, int] = {}
    token = ""
    for _ in range(1000):
        page = stub.QueryEvents(
            audit_service_pb2.QueryEventsRequest(
                parent=f"tenants/{tenant}", page_size=1000, page_token=token
            ),
            timeout=RPC_TIMEOUT_S,
        )
        events.update((e.event_id, e.sequence) for e in page.events)
        token = page.next_page_token
        if not token:
            return events
    raise AssertionError("QueryEvents kept paging")


def _assert_one_gapless_chain(cluster: Cluster, index: int, tenant: str) -> dict[str, int]:
    """The tenant's chain as read through ``index``: sequences 1..n, no gap, verifies."""
    events = _events(cluster, index, tenant)
    sequences = sorted(events.values())
    # Besides the appended events the chain holds the service's own audit records (each call
    # made without a claim is audited), so only the chain as a whole is gapless.
    assert sequences == list(range(1, len(sequences) + 1)), f"gap or duplicate via {index}"
    verdict = _verify_chain(cluster, index, tenant)
    assert verdict.ok, (index, verdict)
    # The auditor's own calls are audited too: the head may have moved on since the query.
    assert verdict.head_sequence >= len(sequences)
    return events


# ------------------------------------------------------------------------------ tests


def test_replicas_migrate_one_database_together_and_serve(cluster: Cluster) -> None:
    # The fixture started all three on an empty database at once; each is SERVING only after
    # its migration step, which the advisory lock serialises.
    for index in range(REPLICAS):
        assert cluster.health(index) == health_pb2.HealthCheckResponse.SERVING


def test_key_created_through_one_replica_verifies_through_the_others(cluster: Cluster) -> None:
    created = _create_key(cluster, 0, "acme", "scale-out")
    for index in (1, 2):
        answer = _verify(cluster, index, created.raw_key)
        assert answer.result == common_pb2.VERIFY_RESULT_VALID, index
        assert answer.tenant == "acme"
        assert answer.api_key == created.api_key.name


def test_revocation_through_one_replica_reaches_the_others_within_the_bound(
    cluster: Cluster,
) -> None:
    created = _create_key(cluster, 0, "acme", "revoke")
    # Warm every replica's cache, so a stale cache entry is what the revocation must beat.
    for _ in range(3):
        for index in range(REPLICAS):
            answer = _verify(cluster, index, created.raw_key)
            assert answer.result == common_pb2.VERIFY_RESULT_VALID
    cluster.keys(0, "control-plane").RevokeApiKey(
        key_service_pb2.RevokeApiKeyRequest(name=created.api_key.name), timeout=RPC_TIMEOUT_S
    )
    revoked_at = time.monotonic()
    assert _verify(cluster, 0, created.raw_key).result == common_pb2.VERIFY_RESULT_REVOKED
    took: dict[int, float] = {}
    pending = {1, 2}
    while pending and time.monotonic() - revoked_at < REVOCATION_BOUND_S + 4:
        for index in sorted(pending):
            result = _verify(cluster, index, created.raw_key).result
            if result != common_pb2.VERIFY_RESULT_VALID:
                assert result == common_pb2.VERIFY_RESULT_REVOKED
                took[index] = time.monotonic() - revoked_at
                pending.discard(index)
        time.sleep(0.01)
    assert not pending, f"replicas {sorted(pending)} still accept the revoked key"
    assert max(took.values()) <= REVOCATION_BOUND_S, took


def test_audit_appends_from_every_replica_form_one_verifiable_chain(cluster: Cluster) -> None:
    tenant = "chain-co"
    _append(cluster, 0, tenant, 0)
    _verify_chain(cluster, 0, tenant)
    per_replica = 15
    sequences: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(index: int) -> None:
        try:
            for n in range(per_replica):
                event = _append(cluster, index, tenant, n + 1).event
                with lock:
                    sequences.append(event.sequence)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(REPLICAS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(sequences) == REPLICAS * per_replica
    assert len(set(sequences)) == len(sequences), "two appends got the same sequence number"
    for index in range(REPLICAS):
        events = _assert_one_gapless_chain(cluster, index, tenant)
        assert set(sequences) <= set(events.values())


@dataclass
class _Load:
    """Writes acknowledged by the replicas while one of them is killed."""

    acked: list[tuple[int, str, str]] = field(default_factory=list)
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def _run_load_and_kill(
    cluster: Cluster, write: Callable[[int, int], tuple[str, str]], victim: int = 1
) -> _Load:
    """Write through every replica from one thread each; SIGKILL ``victim`` mid-load."""
    load = _Load()

    def worker(index: int) -> None:
        for n in range(100_000):
            if load.stop.is_set():
                return
            try:
                first, second = write(index, n)
            except grpc.RpcError:
                with load.lock:
                    load.failures += 1
                if index == victim and cluster.replicas[victim].proc.poll() is not None:
                    return
                continue
            with load.lock:
                load.acked.append((index, first, second))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(REPLICAS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with load.lock:
            victim_acks = sum(1 for a in load.acked if a[0] == victim)
        if victim_acks >= 20:
            break
        time.sleep(0.01)
    cluster.replicas[victim].proc.send_signal(signal.SIGKILL)
    cluster.replicas[victim].proc.wait(timeout=10)
    time.sleep(1.0)  # the survivors keep writing
    load.stop.set()
    for t in threads:
        t.join(timeout=30)
    assert any(a[0] == victim for a in load.acked), "the victim acknowledged nothing before dying"
    assert any(a[0] != victim for a in load.acked)
    return load


def test_sigkill_mid_load_loses_no_acknowledged_audit_event(cluster: Cluster) -> None:
    tenant = "kill-audit"
    _append(cluster, 0, tenant, -1)
    _events(cluster, 0, tenant)

    def write(index: int, n: int) -> tuple[str, str]:
        event = _append(cluster, index, tenant, n).event
        return event.event_id, str(event.sequence)

    load = _run_load_and_kill(cluster, write)
    for survivor in (0, 2):
        stored = _assert_one_gapless_chain(cluster, survivor, tenant)
        lost = [a for a in load.acked if stored.get(a[1]) != int(a[2])]
        assert not lost, f"{len(lost)} acknowledged events missing via replica {survivor}"
    sequences = [int(a[2]) for a in load.acked]
    assert len(set(sequences)) == len(sequences), "two acknowledged events share a sequence"


def test_sigkill_mid_load_loses_no_acknowledged_api_key(cluster: Cluster) -> None:
    _create_key(cluster, 0, "kill-keys", "probe")

    def write(index: int, n: int) -> tuple[str, str]:
        created = _create_key(cluster, index, "kill-keys", f"load-{index}-{n}")
        return created.api_key.name, created.raw_key

    load = _run_load_and_kill(cluster, write)
    for survivor in (0, 2):
        for _, name, raw_key in load.acked:
            answer = _verify(cluster, survivor, raw_key)
            assert answer.result == common_pb2.VERIFY_RESULT_VALID, (survivor, name)
            assert answer.api_key == name
