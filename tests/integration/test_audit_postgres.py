"""AuditService on PostgreSQL: two server processes appending to one tenant leave one gapless
chain; an audit store that refuses writes makes AppendEvent UNAVAILABLE quickly and health
NOT_SERVING, and both recover without a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import audit_service_pb2_grpc as agrpc

from tests.fix_db import truncate_tables
from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.tls import channel_credentials
from zumik_secrets.storage.factory import open_store

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(tenant: str, n: int) -> apb.AppendEventRequest:
    return apb.AppendEventRequest(
        parent=f"tenants/{tenant}",
        action="billing.invoice_paid",
        target=f"invoices/{n}",
        outcome=apb.AUDIT_OUTCOME_SUCCESS,
        attributes={"n": str(n)},
    )


def _channel(pki: DevPki, target: str, role: str) -> grpc.Channel:
    pair = pki.client(role)
    return grpc.secure_channel(target, channel_credentials(pki.ca_cert, pair.cert, pair.key))


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)


# -- two processes, one tenant ------------------------------------------------------------------


@pytest.fixture
def two_servers(dev_pki: DevPki, pg_url: str, tmp_path: Path) -> Iterator[list[str]]:
    """Two `zumik-secrets serve` processes over one PostgreSQL database and keyring."""
    # Every table, not only the audit ones: signing keys left by an earlier test in this shared
    # database are wrapped under that test's keyring, and the new servers could not start.
    truncate_tables(pg_url)
    keyring = tmp_path / "keyring.json"
    keyring.write_text(generate_keyring(), encoding="utf-8")
    keyring.chmod(0o600)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    targets: list[str] = []
    for index in range(2):
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
        env.update(
            PYTHONPATH=os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")]),
            GRPC_VERBOSITY="ERROR",
            ZUMIK_LISTEN=f"127.0.0.1:{port}",
            ZUMIK_DATABASE_URL=pg_url,
            ZUMIK_TLS_CERT=str(dev_pki.server.cert),
            ZUMIK_TLS_KEY=str(dev_pki.server.key),
            ZUMIK_TLS_CLIENT_CA=str(dev_pki.ca_cert),
            ZUMIK_POLICY_FILE=str(dev_policy_path()),
            ZUMIK_MASTER_KEYRING_FILE=str(keyring),
            ZUMIK_PROCESSES="1",  # one process per replica: what this test is about
            ZUMIK_WORKERS="8",
            ZUMIK_AUDIT_CHECKPOINT_SECONDS="0.5",  # checkpoints race the appends, on purpose
        )
        log = tmp_path / f"server-{index}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zumik_secrets.cli.main", "serve"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append((proc, log))
        targets.append(f"127.0.0.1:{port}")
    try:
        for (proc, log), target in zip(procs, targets, strict=True):
            channel = _channel(dev_pki, target, "auditor")
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"server exited:\n{log.read_text(errors='replace')[-3000:]}")
                try:
                    if _health(channel) == SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.1)
            channel.close()
        yield targets
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_two_processes_appending_to_one_tenant_leave_a_gapless_chain(
    two_servers: list[str], dev_pki: DevPki
) -> None:
    threads_per_server, per_thread = 4, 300
    errors: list[BaseException] = []
    acked: list[int] = []
    lock = threading.Lock()

    def work(target: str, worker: int) -> None:
        channel = _channel(dev_pki, target, "billing")
        stub = agrpc.AuditServiceStub(channel)
        try:
            for i in range(per_thread):
                answer = stub.AppendEvent(_request("acme", worker * 10_000 + i), timeout=15)
                with lock:
                    acked.append(answer.event.sequence)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            channel.close()

    started = time.monotonic()
    threads = [
        threading.Thread(target=work, args=(target, n * threads_per_server + t))
        for n, target in enumerate(two_servers)
        for t in range(threads_per_server)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    total = len(two_servers) * threads_per_server * per_thread
    assert len(acked) == total and len(set(acked)) == total  # every ack names its own place
    channel = _channel(dev_pki, two_servers[0], "auditor")
    report = agrpc.AuditServiceStub(channel).VerifyChain(
        apb.VerifyChainRequest(parent="tenants/acme"), timeout=60
    )
    channel.close()
    assert report.ok, report
    # Each append also records its authorization (billing acts without a claim): 2 per call.
    assert report.checked_count == report.head_sequence >= 2 * total
    print(f"\n{total} durable appends through 2 processes in {elapsed:.1f}s")


# -- a store that refuses audit writes ---------------------------------------------------------


@pytest.fixture
def restricted_url(fresh_pg_url: str) -> Iterator[tuple[str, str]]:
    """A migrated database and a login role the server uses, whose grants the test changes."""
    store = open_store(fresh_pg_url)
    store.migrate()
    store.close()
    role = f"zumik_audit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    parts = urlsplit(fresh_pg_url)
    host = parts.netloc.rpartition("@")[2]
    url = urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, ""))
    try:
        yield url, role
    finally:
        with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _wait_health(server: RunningServer, want: int, timeout: float = 8.0) -> float:
    channel = server.channel("auditor")
    started = time.monotonic()
    while _health(channel) != want:
        assert time.monotonic() - started < timeout, f"health never became {want}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_refused_audit_writes_fail_closed_quickly_and_recover(
    zumik_server_factory: ServerFactory, restricted_url: tuple[str, str]
) -> None:
    url, role = restricted_url
    admin = urlunsplit(
        (
            urlsplit(url).scheme,
            "postgres@" + urlsplit(url).netloc.rpartition("@")[2],
            urlsplit(url).path,
            "",
            "",
        )
    )
    server = zumik_server_factory(url, ZUMIK_AUDIT_DURABLE_TIMEOUT="5")
    billing = server.stubs("billing").audit
    billing.AppendEvent(_request("acme", 0), timeout=10)

    # 1. Writes refused outright (privilege revoked): UNAVAILABLE at once, health follows.
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"REVOKE INSERT ON audit_events FROM {role}")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        billing.AppendEvent(_request("acme", 1), timeout=10)
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(info.value).reason == "AUDIT_UNAVAILABLE"
    assert elapsed < 2.0, elapsed
    _wait_health(server, NOT_SERVING)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"GRANT INSERT ON audit_events TO {role}")
    _wait_health(server, SERVING)  # recovered by the writer's probe, no restart
    billing.AppendEvent(_request("acme", 2), timeout=10)

    # 2. The table locked by someone else: the audit write gives up after its lock timeout.
    with psycopg.connect(admin) as locker:
        locker.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            billing.AppendEvent(_request("acme", 3), timeout=10)
        elapsed = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(info.value).reason == "AUDIT_UNAVAILABLE"
        assert elapsed <= 5.5, elapsed  # within the durable deadline, not hanging
        _wait_health(server, NOT_SERVING)
        locker.rollback()
    _wait_health(server, SERVING)
    billing.AppendEvent(_request("acme", 4), timeout=10)
    auditor = server.stubs("auditor").audit
    report = auditor.VerifyChain(apb.VerifyChainRequest(parent="tenants/acme"), timeout=10)
    assert report.ok, report
    targets = [
        e.target
        for e in auditor.QueryEvents(
            apb.QueryEventsRequest(parent="tenants/acme", action="billing.invoice_paid"),
            timeout=10,
        ).events
    ]
    assert targets == ["invoices/0", "invoices/2", "invoices/4"]  # refused ones never stored
