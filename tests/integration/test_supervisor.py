"""`serve --processes N`: real worker processes on one SO_REUSEPORT port, real mTLS.

Both workers answer; a worker killed with SIGKILL is restarted and the service keeps answering;
SIGTERM drains (an in-flight call completes, new connections are refused, exit 0); a port that
is already taken fails start-up loudly; SQLite defaults to one process. The supervisor's
health-only listener answers for the whole set.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from zumik_secrets.cli.dev_pki import CertPair, DevPki, issue_client_cert
from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.grpc_server import BENCH_EMPTY_METHOD
from zumik_secrets.server.supervisor import RestartPolicy, resolve_processes
from zumik_secrets.server.tls import channel_credentials

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CALLER = "spiffe://zumik.local/svc/supervisor-test"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def caller(dev_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    """A client identity the test policy lets call the empty RPC."""
    out = tmp_path_factory.mktemp("pki") / "supervisor-test"
    return issue_client_cert(dev_pki.directory, "supervisor-test", CALLER, out_dir=out)


@dataclass
class Supervised:
    """A running ``zumik-secrets serve`` and what a test needs to talk to it."""

    proc: subprocess.Popen[bytes]
    target: str
    health_target: str
    log: Path
    pki: DevPki
    caller: CertPair

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (supervisor and workers share the stream)."""
        out = []
        for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    continue  # a line still being written
        return out

    def supervisor_lines(self, msg: str) -> list[dict[str, Any]]:
        return [x for x in self.lines() if x["logger"] == "zumik.supervisor" and x["msg"] == msg]

    def channel(self) -> grpc.Channel:
        """A new mTLS connection (port sharing balances connections, not calls)."""
        creds = channel_credentials(self.pki.ca_cert, self.caller.cert, self.caller.key)
        # A fresh subchannel each time: no sharing of connections between these channels.
        return grpc.secure_channel(
            self.target, creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )

    def empty(self, channel: grpc.Channel, delay_ms: int = 0, timeout: float = 10) -> None:
        call = channel.unary_unary(BENCH_EMPTY_METHOD)
        call(delay_ms.to_bytes(2, "big") if delay_ms else b"", timeout=timeout)

    def health(self, service: str = "") -> int:
        """The supervisor's health-only listener's answer (plaintext, as the kubelet asks)."""
        with grpc.insecure_channel(self.health_target) as ch:  # transport-check: allow health probe
            answer = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        return int(answer.status)

    def pids_answering(self) -> set[int]:
        """Worker pids that logged a call of the empty RPC."""
        return {
            int(x["pid"])
            for x in self.lines()
            if x["logger"] == "zumik.access" and "Empty" in str(x.get("method", ""))
        }

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        pytest.fail(f"{what} not seen in {timeout} s; log tail:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _spawn(
    tmp_path: Path, pki: DevPki, caller: CertPair, database_url: str, *args: str, **env: str
) -> Supervised:
    keyring = tmp_path / "keyring.json"
    if not keyring.exists():
        keyring.write_text(generate_keyring())
        keyring.chmod(0o600)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        dev_policy_path().read_text()
        + f'\n[identities."{CALLER}"]\ndescription = "supervisor tests"\n'
        + f'allow = ["{BENCH_EMPTY_METHOD.lstrip("/")}"]\n'
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    full_env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")]),
        GRPC_VERBOSITY="ERROR",
        ZUMIK_LISTEN=f"127.0.0.1:{_free_port()}",
        ZUMIK_HEALTH_LISTEN=f"127.0.0.1:{_free_port()}",
        ZUMIK_DATABASE_URL=database_url,
        ZUMIK_TLS_CERT=str(pki.server.cert),
        ZUMIK_TLS_KEY=str(pki.server.key),
        ZUMIK_TLS_CLIENT_CA=str(pki.ca_cert),
        ZUMIK_POLICY_FILE=str(policy),
        ZUMIK_MASTER_KEYRING_FILE=str(keyring),
        ZUMIK_BENCH_EMPTY_RPC="1",
        ZUMIK_DRAIN_SECONDS="8",
    )
    full_env.update(env)
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zumik_secrets.cli.main", "serve", *args],
            env=full_env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Supervised(
        proc, full_env["ZUMIK_LISTEN"], full_env["ZUMIK_HEALTH_LISTEN"], log, pki, caller
    )


def _healthy(sup: Supervised) -> bool:
    if sup.proc.poll() is not None:
        pytest.fail(f"serve exited ({sup.proc.returncode}):\n{sup.tail()}")
    try:
        return sup.health() == SERVING
    except grpc.RpcError:
        return False


@pytest.fixture
def two_workers(
    fresh_pg_url: str, dev_pki: DevPki, caller: CertPair, tmp_path: Path
) -> Iterator[Supervised]:
    """A supervisor over two workers on a new PostgreSQL database."""
    sup = _spawn(tmp_path, dev_pki, caller, fresh_pg_url, "--processes", "2")
    try:
        sup.wait_for("health SERVING", lambda: _healthy(sup), timeout=60)
        yield sup
    finally:
        sup.stop()


def _spread_calls(sup: Supervised, until: Callable[[], bool], channels: int = 40) -> None:
    """Call the empty RPC over new connections until ``until()`` holds."""
    for _ in range(channels):
        with sup.channel() as ch:
            sup.empty(ch)
        if until():
            return


@pytest.mark.postgres
def test_two_workers_both_answer_and_migrate_once(two_workers: Supervised) -> None:
    sup = two_workers
    started = {int(x["pid"]) for x in sup.supervisor_lines("worker started")}
    assert len(started) == 2
    # Each connection lands on one worker; enough of them reach both (the log line is written
    # by a background thread, so give it a moment).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sup.pids_answering() != started:
        _spread_calls(sup, lambda: sup.pids_answering() == started)
        time.sleep(0.2)
    assert sup.pids_answering() == started, sup.tail()
    # The supervisor applied the migrations; the workers did not run them again.
    assert len(sup.supervisor_lines("migrations applied")) == 1
    assert not [x for x in sup.lines() if x["msg"] == "migrations applied" and "worker" in x]
    assert sup.health("zumik.liveness") == SERVING


@pytest.mark.postgres
def test_killed_worker_is_restarted_and_the_service_keeps_answering(
    two_workers: Supervised,
) -> None:
    sup = two_workers
    victim = int(sup.supervisor_lines("worker started")[1]["pid"])
    os.kill(victim, signal.SIGKILL)
    sup.wait_for("the exit", lambda: bool(sup.supervisor_lines("worker exited")))
    # The one health answer says a worker is missing (its successor needs more than the
    # half-second backoff plus a start-up to serve).
    assert sup.health() == NOT_SERVING
    assert sup.health("zumik.liveness") == SERVING
    # While the worker is down the port still answers (the other worker holds it).
    for _ in range(5):
        with sup.channel() as ch:
            sup.empty(ch)
    sup.wait_for("the restart", lambda: bool(sup.supervisor_lines("worker restarted")))
    exited = sup.supervisor_lines("worker exited")[0]
    assert exited["pid"] == victim
    assert exited["signal"] == "SIGKILL"
    assert exited["restart_in_s"] == RestartPolicy().first_backoff
    restarted = sup.supervisor_lines("worker restarted")[0]
    assert restarted["worker"] == 1 and restarted["pid"] != victim
    sup.wait_for("health SERVING again", lambda: _healthy(sup))
    assert sup.supervisor_lines("not all workers serving")
    new_pid = int(restarted["pid"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and new_pid not in sup.pids_answering():
        _spread_calls(sup, lambda: new_pid in sup.pids_answering())
        time.sleep(0.2)
    assert new_pid in sup.pids_answering(), sup.tail()


@pytest.mark.postgres
def test_sigterm_drains_in_flight_calls_and_exits_zero(two_workers: Supervised) -> None:
    sup = two_workers
    results: list[BaseException | None] = []
    # Hold one call in flight on each worker's side of the port (several connections, so
    # both workers have one whatever the kernel's spreading).
    channels = [sup.channel() for _ in range(6)]

    def slow_call(ch: grpc.Channel) -> None:
        try:
            sup.empty(ch, delay_ms=2500, timeout=15)
            results.append(None)
        except grpc.RpcError as exc:
            results.append(exc)

    threads = [threading.Thread(target=slow_call, args=(ch,)) for ch in channels]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the calls have reached the workers
    sup.proc.send_signal(signal.SIGTERM)
    sup.wait_for("drain", lambda: bool(sup.supervisor_lines("draining")), timeout=5)
    # Draining: the one health answer says so, and new connections are refused.
    sup.wait_for("NOT_SERVING", lambda: sup.health() == NOT_SERVING, timeout=5)
    time.sleep(0.3)
    with sup.channel() as ch, pytest.raises(grpc.RpcError) as refused:
        sup.empty(ch, timeout=3)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    for t in threads:
        t.join(timeout=20)
    assert results == [None] * len(channels), results
    assert sup.proc.wait(timeout=30) == 0, sup.tail()
    for ch in channels:
        ch.close()
    exits = sup.supervisor_lines("worker exited")
    assert sorted(x["worker"] for x in exits) == [0, 1]
    assert all(x["exit_code"] == 0 for x in exits)
    assert sup.supervisor_lines("supervisor stopped")


# A stale server that set SO_REUSEPORT itself is the case grpcio's default would join silently.
@pytest.mark.parametrize("stale_shares", [False, True], ids=["plain", "so_reuseport"])
def test_port_already_taken_fails_loudly(
    dev_pki: DevPki, caller: CertPair, tmp_path: Path, stale_shares: bool
) -> None:
    with socket.socket() as stale:
        if stale_shares:
            stale.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stale.bind(("127.0.0.1", 0))
        stale.listen(1)
        port = stale.getsockname()[1]
        sup = _spawn(
            tmp_path,
            dev_pki,
            caller,
            f"sqlite:///{tmp_path / 'zumik.db'}",
            "--processes",
            "2",
            ZUMIK_LISTEN=f"127.0.0.1:{port}",
        )
        try:
            code = sup.proc.wait(timeout=30)
        finally:
            sup.stop()  # a supervisor that did start must not outlive the test
    assert code != 0
    text = sup.log.read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in text
    assert "stale" in text
    assert "worker started" not in text


def test_sqlite_defaults_to_one_process(dev_pki: DevPki, caller: CertPair, tmp_path: Path) -> None:
    sup = _spawn(tmp_path, dev_pki, caller, f"sqlite:///{tmp_path / 'zumik.db'}")
    try:
        sup.wait_for("health SERVING", lambda: _healthy(sup), timeout=60)
        # The log is written by a background thread: the line may follow the health answer.
        sup.wait_for("the serving line", lambda: any(x["msg"] == "serving" for x in sup.lines()))
        lines = sup.lines()
        assert not [x for x in lines if x["logger"] == "zumik.supervisor"]
        serving = [x for x in lines if x["msg"] == "serving"]
        assert len(serving) == 1 and "worker" not in serving[0]
    finally:
        sup.stop()


def test_default_process_count(tmp_path: Path) -> None:
    from zumik_secrets.server.config import ServerConfig
    from zumik_secrets.server.supervisor import usable_cpus

    base = {"ZUMIK_DEV": "1", "ZUMIK_MASTER_KEYRING": generate_keyring()}
    sqlite = ServerConfig.load({**base, "ZUMIK_DATABASE_URL": "sqlite:///x.db"})
    pg = ServerConfig.load({**base, "ZUMIK_DATABASE_URL": "postgresql://u@h/db"})
    assert resolve_processes(sqlite) == 1
    assert resolve_processes(pg) == usable_cpus() >= 1
    assert usable_cpus() <= len(os.sched_getaffinity(0))
    assert resolve_processes(pg, 3) == 3
    explicit = ServerConfig.load({**base, "ZUMIK_PROCESSES": "4"})
    assert resolve_processes(explicit) == 4
    with pytest.raises(ValueError, match="ZUMIK_METRICS_LISTEN"):
        resolve_processes(ServerConfig.load({**base, "ZUMIK_METRICS_LISTEN": "127.0.0.1:9464"}), 2)
