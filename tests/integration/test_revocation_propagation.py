"""Revocation reaches every server within the stated bound (watcher poll 250 ms + one read).

Two real ``zumik-secrets serve`` processes over one PostgreSQL (LISTEN/NOTIFY), and two
in-process servers over each backend (SQLite relies on the cheap ``latest_seq`` poll).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zumik.secrets.v1 import common_pb2, key_service_pb2, key_service_pb2_grpc

from tests.fix_server import RunningServer, ServerFactory
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.tls import channel_credentials

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BOUND_SECONDS = 1.5
PARENT = "tenants/tenant-a/projects/proj"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stub(pki: DevPki, target: str, role: str) -> tuple[grpc.Channel, Any]:
    pair = pki.client(role)
    channel = grpc.secure_channel(target, channel_credentials(pki.ca_cert, pair.cert, pair.key))
    return channel, key_service_pb2_grpc.KeyServiceStub(channel)


def _time_until_revoked(verify: Any, raw: str, revoke: Any) -> float:
    assert verify(raw).result == common_pb2.VERIFY_RESULT_VALID  # warm the cache
    assert verify(raw).result == common_pb2.VERIFY_RESULT_VALID
    started = time.monotonic()
    revoke()
    while time.monotonic() - started < 5:
        if verify(raw).result == common_pb2.VERIFY_RESULT_REVOKED:
            return time.monotonic() - started
        time.sleep(0.01)
    pytest.fail("revocation did not propagate within 5 s")


@pytest.fixture
def two_processes(fresh_pg_url: str, dev_pki: DevPki, tmp_path: Path) -> Iterator[list[str]]:
    keyring = tmp_path / "keyring.json"
    keyring.write_text(generate_keyring())
    procs: list[subprocess.Popen[bytes]] = []
    targets: list[str] = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")])
    base["GRPC_VERBOSITY"] = "ERROR"
    try:
        for _ in range(2):
            port = _free_port()
            env = dict(
                base,
                ZUMIK_LISTEN=f"127.0.0.1:{port}",
                ZUMIK_DATABASE_URL=fresh_pg_url,
                ZUMIK_TLS_CERT=str(dev_pki.server.cert),
                ZUMIK_TLS_KEY=str(dev_pki.server.key),
                ZUMIK_TLS_CLIENT_CA=str(dev_pki.ca_cert),
                ZUMIK_POLICY_FILE=str(dev_policy_path()),
                ZUMIK_MASTER_KEYRING_FILE=str(keyring),
                ZUMIK_PROCESSES="1",  # one process each: the test kills and compares them
                ZUMIK_LOG_LEVEL="WARNING",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "zumik_secrets.cli.main", "serve"],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
            targets.append(f"127.0.0.1:{port}")
        for proc, target in zip(procs, targets, strict=True):
            _wait_serving(proc, dev_pki, target)
        yield targets
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_serving(proc: subprocess.Popen[bytes], pki: DevPki, target: str) -> None:
    pair = pki.client("gateway")
    deadline = time.monotonic() + 30
    with grpc.secure_channel(target, channel_credentials(pki.ca_cert, pair.cert, pair.key)) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"server exited: {err[-2000:]}")
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    pytest.fail(f"{target} did not become SERVING")


@pytest.mark.postgres
@pytest.mark.slow
def test_revocation_reaches_a_second_process_within_the_bound(
    two_processes: list[str], dev_pki: DevPki
) -> None:
    target_a, target_b = two_processes
    ch_a, control_a = _stub(dev_pki, target_a, "control-plane")
    ch_b, gateway_b = _stub(dev_pki, target_b, "gateway")
    try:
        delays = []
        for _ in range(3):
            created = control_a.CreateApiKey(
                key_service_pb2.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]),
                timeout=5,
            )

            def verify(raw: str) -> Any:
                return gateway_b.VerifyApiKey(
                    key_service_pb2.VerifyApiKeyRequest(key=raw), timeout=5
                )

            def revoke(name: str = created.api_key.name) -> None:
                control_a.RevokeApiKey(key_service_pb2.RevokeApiKeyRequest(name=name), timeout=5)

            delays.append(_time_until_revoked(verify, created.raw_key, revoke))
        print(f"\nrevocation delay across processes (s): {[round(d, 3) for d in delays]}")
        assert max(delays) < BOUND_SECONDS
    finally:
        ch_a.close()
        ch_b.close()


def test_revocation_and_rotation_reach_a_second_server_on_each_backend(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    first: RunningServer = zumik_server_factory(store_url)
    second: RunningServer = zumik_server_factory(store_url)
    control = first.stubs("control-plane").keys
    gateway = second.stubs("gateway").keys

    def verify(raw: str) -> Any:
        return gateway.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key=raw), timeout=5)

    created = control.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]), timeout=5
    )
    delay = _time_until_revoked(
        verify,
        created.raw_key,
        lambda: control.RevokeApiKey(
            key_service_pb2.RevokeApiKeyRequest(name=created.api_key.name), timeout=5
        ),
    )
    print(
        f"\nrevocation delay between in-process servers on {store_url.split(':')[0]}: {delay:.3f}s"
    )
    assert delay < BOUND_SECONDS

    session = control.CreateSession(
        key_service_pb2.CreateSessionRequest(parent=PARENT, user_subject="u", scopes=["a"])
    )
    ok = gateway.VerifySession(key_service_pb2.VerifySessionRequest(token=session.token))
    assert ok.result == common_pb2.VERIFY_RESULT_VALID
    control.RevokeSession(key_service_pb2.RevokeSessionRequest(name=session.session.name))
    started = time.monotonic()
    while time.monotonic() - started < 5:
        answer = gateway.VerifySession(key_service_pb2.VerifySessionRequest(token=session.token))
        if answer.result == common_pb2.VERIFY_RESULT_REVOKED:
            break
        time.sleep(0.01)
    assert time.monotonic() - started < BOUND_SECONDS
