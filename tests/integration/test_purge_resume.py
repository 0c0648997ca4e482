"""A purge killed (SIGKILL) halfway completes when run again, to the same end state.

A real ``zumik-secrets serve`` process runs with the test hook ``ZUMIK_TEST_PURGE_PAUSE_AFTER``
(the purge sleeps after that phase commits); the test waits for the phase in the database,
kills the process with SIGKILL, checks that what is left can be read by nobody, restarts the
server without the hook, purges again and checks the end state of an uninterrupted purge. An
in-process server on the same database plays the other replica throughout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2

from tests import fix_leaks
from tests.fix_db import wait_until
from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from tests.integration import purge_support as ps
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.tls import channel_credentials

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `zumik-secrets serve` child process on the test's database and keyring."""

    def __init__(self, pki: DevPki, url: str, keyring: Path, log: Path, **extra: str) -> None:
        self.port = _free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
        env.update(
            PYTHONPATH=os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")]),
            GRPC_VERBOSITY="ERROR",
            ZUMIK_LISTEN=self.target,
            ZUMIK_DATABASE_URL=url,
            ZUMIK_TLS_CERT=str(pki.server.cert),
            ZUMIK_TLS_KEY=str(pki.server.key),
            ZUMIK_TLS_CLIENT_CA=str(pki.ca_cert),
            ZUMIK_POLICY_FILE=str(dev_policy_path()),
            ZUMIK_MASTER_KEYRING_FILE=str(keyring),
            ZUMIK_PROCESSES="1",  # one process: kill9() kills the server
            **extra,
        )
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zumik_secrets.cli.main", "serve"],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        creds = channel_credentials(pki.ca_cert, *_pair(pki))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            with grpc.secure_channel(self.target, creds) as ch:
                try:
                    status = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server process did not become SERVING: " + log.read_text())

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        fix_leaks.add_haystack_file(self.log)


def _pair(pki: DevPki) -> tuple[Path, Path]:
    pair = pki.client("control-plane")
    return pair.cert, pair.key


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


def _via(replica: RunningServer, target: str) -> RunningServer:
    """Stubs to ``target`` that mint claims with the shared claim key of ``replica``."""
    return RunningServer(replica.server, replica.runtime, replica.pki, target)


def _job_phase(url: str, target: str) -> str | None:
    rows = ps.query(url, "SELECT phase FROM purge_jobs WHERE target = %s", (target,))
    return str(rows[0][0]) if rows else None


@pytest.mark.parametrize("phase", ["shred", "delete"])
def test_killed_purge_resumes_to_the_same_end_state(
    phase: str,
    zumik_server_factory: ServerFactory,
    store_url: str,
    dev_pki: DevPki,
    tmp_path: Path,
    processes: list[ServerProcess],
) -> None:
    replica = zumik_server_factory(store_url)
    url = store_url
    keyring = tmp_path / "keyring.json"  # written by zumik_server_factory
    a = ps.populate(replica, ps.tenant_id("tenant-a"))
    b = ps.populate(replica, ps.tenant_id("tenant-b"))
    captured = ps.captured_secrets_of(url, a.tenant)
    name = next(iter(a.secrets))
    assert ps.open_secret(replica, name) == a.secrets[name]  # the data key is cached here

    doomed = ServerProcess(
        dev_pki, url, keyring, tmp_path / "doomed.log", ZUMIK_TEST_PURGE_PAUSE_AFTER=phase
    )
    processes.append(doomed)
    errors: list[grpc.RpcError] = []

    def purge() -> None:
        try:
            ps.purge_tenant(_via(replica, doomed.target), a.tenant, timeout=120)
        except grpc.RpcError as err:
            errors.append(err)

    caller = threading.Thread(target=purge, daemon=True)
    caller.start()
    target = f"tenants/{a.tenant}"
    wanted = {"shred": "shredded", "delete": "deleted"}[phase]
    assert wait_until(lambda: _job_phase(url, target) == wanted, timeout=30)
    doomed.kill9()
    caller.join(timeout=30)
    assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]

    # Halfway: nothing of A can be read by anyone, and no receipt claims a finished purge.
    assert ps.query(
        url,
        "SELECT count(*) FROM data_keys WHERE tenant_id = %s AND wrapped_key IS NOT NULL",
        (a.tenant,),
    ) == [(0,)]
    assert ps.query(url, "SELECT count(*) FROM purge_receipts") == [(0,)]
    if phase == "shred":
        # Keys destroyed, rows still there: the other replica refuses to open within the
        # change-feed bound (the tenant became a tombstone when the purge started, so its claims
        # are refused; a claim that raced it would meet the destroyed key).
        def refused() -> bool:
            try:
                ps.open_secret(replica, name)
            except grpc.RpcError as err:
                return error_info(err).reason in ("CLAIM_REVOKED", "DATA_KEY_DESTROYED")
            return False

        assert wait_until(refused, timeout=replica.runtime.watcher.poll_interval + 2)
        assert ps.query(url, "SELECT count(*) FROM api_keys WHERE tenant_id = %s", (a.tenant,)) == [
            (4,)
        ]
    else:
        assert ps.rows_containing(url, [a.tenant.encode()], ps.KEPT_TABLES) == []
        assert all(
            ps.verify_key(replica, raw) == common_pb2.VERIFY_RESULT_NOT_FOUND for raw in a.raw_keys
        )

    # Restart without the hook and purge again: it resumes the same job to the end.
    job_id = ps.query(url, "SELECT receipt_id FROM purge_jobs WHERE target = %s", (target,))[0][0]
    again = ServerProcess(dev_pki, url, keyring, tmp_path / "again.log")
    processes.append(again)
    receipt = ps.purge_tenant(_via(replica, again.target), a.tenant).receipt
    assert receipt.name == f"{target}/purgeReceipts/{job_id}"
    assert {c.kind: c.count for c in receipt.destroyed} == a.expected_counts()
    assert _job_phase(url, target) == "done"

    # The same end state as an uninterrupted purge.
    assert ps.rows_containing(url, [a.tenant.encode()], ps.KEPT_TABLES) == []
    every_value = [v for values in captured.values() for v in values]
    assert ps.rows_containing(url, every_value, frozenset()) == []
    events = (
        replica.stubs("auditor")
        .audit.QueryEvents(
            apb.QueryEventsRequest(parent=target, action="tenant.purged"), timeout=10
        )
        .events
    )
    assert [e.sequence for e in events] == [receipt.audit_sequence]
    for raw in a.raw_keys:
        assert ps.verify_key(replica, raw) == common_pb2.VERIFY_RESULT_NOT_FOUND
    for raw in b.raw_keys:
        assert ps.verify_key(replica, raw) == common_pb2.VERIFY_RESULT_VALID
    for secret, plaintext in b.secrets.items():
        assert ps.open_secret(replica, secret) == plaintext
