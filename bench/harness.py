"""The bench environment: a temp dir with a dev PKI, keyring and policy; server processes.

The server is started the way an operator starts it (``python -m zumik_secrets.cli.main serve``,
configured by ``ZUMIK_*`` variables), over mTLS, with the opt-in empty RPC turned on. Its log goes
to a file in the temp dir that the harness truncates between runs (the access log is on, as in
production, and would otherwise grow by megabytes per second).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.loadgen import Tls
from zumik_secrets.cli.dev_pki import (
    DEFAULT_TRUST_DOMAIN,
    CertPair,
    DevPki,
    generate_dev_pki,
    issue_client_cert,
    spiffe_id_for,
)
from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.server.config import dev_policy_path

REPO = Path(__file__).resolve().parent.parent
BENCH_ROLE = "bench"
EMPTY_METHOD = "/zumik.bench.v1.BenchService/Empty"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_BENCH_POLICY = f"""

[identities."{spiffe_id_for(DEFAULT_TRUST_DOMAIN, BENCH_ROLE)}"]
description = "Benchmark harness (bench/): the empty RPC, set-up calls and the measured methods."
allow = [
  "zumik.bench.v1.BenchService/Empty",
  "zumik.secrets.v1.KeyService/*",
  "zumik.secrets.v1.SealService/*",
  "zumik.secrets.v1.FingerprintService/*",
  "zumik.secrets.v1.AuditService/*",
  "zumik.secrets.v1.TenantService/*",
]
# Set-up acts like the control plane (no claim); Audit Append like the billing service.
without_claim = [
  "zumik.secrets.v1.KeyService/*",
  "zumik.secrets.v1.TenantService/*",
  "zumik.secrets.v1.AuditService/AppendEvent",
]
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class BenchEnv:
    """Files every server and client of one bench invocation share."""

    root: Path
    pki: DevPki
    bench: CertPair
    keyring_file: Path
    policy_file: Path

    @classmethod
    def create(cls, keep: bool = False) -> BenchEnv:
        """Make the temp dir, the dev PKI (plus a ``bench`` client), keyring and policy."""
        root = Path(tempfile.mkdtemp(prefix="zumik-bench-"))
        pki = generate_dev_pki(root / "pki")
        bench = issue_client_cert(
            root / "pki", BENCH_ROLE, spiffe_id_for(DEFAULT_TRUST_DOMAIN, BENCH_ROLE)
        )
        keyring_file = root / "keyring.json"
        fd = os.open(keyring_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(generate_keyring())
        policy_file = root / "policy.toml"
        policy_file.write_text(dev_policy_path().read_text() + _BENCH_POLICY)
        return cls(root, pki, bench, keyring_file, policy_file)

    def tls(self, role: CertPair | None = None) -> Tls:
        """Client mTLS material as PEM bytes (default: the bench identity)."""
        pair = role or self.bench
        return Tls(self.pki.ca_cert.read_bytes(), pair.cert.read_bytes(), pair.key.read_bytes())

    def channel(self, target: str) -> grpc.Channel:
        """A sync mTLS channel as the bench identity (for set-up calls)."""
        t = self.tls()
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(t.ca, t.key, t.cert))

    def cleanup(self) -> None:
        """Remove the temp dir."""
        shutil.rmtree(self.root, ignore_errors=True)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of a process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pg_available() -> bool:
    """Whether the PostgreSQL of this machine answers."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def scratch_db_name(name: str) -> str:
    """The database behind scratch name ``name`` for this process.

    The process id is part of it: two bench runs on one shared machine (each engineer's) would
    otherwise drop each other's database in the middle of a run.
    """
    return f"{name}_{os.getpid()}"


def create_scratch_db(name: str) -> str:
    """(Re)create scratch database ``name`` of this process on the local PostgreSQL; its URL."""
    import psycopg

    real = scratch_db_name(name)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{real}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{real}"')
    return f"postgresql://postgres@127.0.0.1:5432/{real}"


def drop_scratch_db(name: str) -> None:
    """Drop scratch database ``name`` of this process (ignoring failures)."""
    real = scratch_db_name(name)
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{real}" WITH (FORCE)')
    except Exception as exc:  # noqa: BLE001 - best effort at exit
        print(f"could not drop scratch database {real}: {exc}", file=sys.stderr)


@dataclass
class ServerGroup:
    """One or more server processes sharing a port.

    Attributes:
        argv: Command of each process (``{port}`` is substituted).
        env: Extra environment.
    """

    env: BenchEnv
    database_url: str
    processes: int = 1
    argv: list[str] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_file: Path | None = None

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        """Server process ids."""
        return [p.pid for p in self.procs]

    def server_env(self) -> dict[str, str]:
        """The environment the server processes get."""
        e = self.env
        env = dict(os.environ)
        env.update(
            {
                "ZUMIK_LISTEN": self.target,
                "ZUMIK_DATABASE_URL": self.database_url,
                "ZUMIK_TLS_CERT": str(e.pki.server.cert),
                "ZUMIK_TLS_KEY": str(e.pki.server.key),
                "ZUMIK_TLS_CLIENT_CA": str(e.pki.ca_cert),
                "ZUMIK_POLICY_FILE": str(e.policy_file),
                "ZUMIK_MASTER_KEYRING_FILE": str(e.keyring_file),
                "ZUMIK_BENCH_EMPTY_RPC": "1",
                # Each process the harness starts is one server process (the bench starts and
                # measures N itself, `--reuse-port`); `serve` would otherwise supervise one
                # worker per core on PostgreSQL and the measured pid would be the supervisor.
                "ZUMIK_PROCESSES": "1",
                "GRPC_VERBOSITY": "ERROR",
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO / "service"), str(REPO / "clients/python/src"), str(REPO)]
                ),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start the processes and wait until each answers health SERVING.

        Raises:
            RuntimeError: a process exited or did not become healthy in time (with its log).
        """
        self.port = self.port or free_port()
        self.log_file = self.env.root / f"server-{self.port}.log"
        env = self.server_env()
        base = self.argv or [sys.executable, "-m", "zumik_secrets.cli.main", "serve"]
        if self.processes > 1 and self.argv is None:
            base = [*base, "--reuse-port"]
        for _ in range(self.processes):
            log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child
            argv = [a.replace("{port}", str(self.port)) for a in base]
            self.procs.append(
                subprocess.Popen(
                    argv, env=env, stdout=log, stderr=log, cwd=self.env.root, start_new_session=True
                )
            )
            log.close()
            # Let the first process bind before the next: two fresh binders can race on the
            # migrations of a new database.
            self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.env.channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                for p in self.procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"server exited ({p.returncode}):\n{self.log_tail()}")
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if (
                        resp.status == health_pb2.HealthCheckResponse.SERVING
                        and self._serving_lines() >= len(self.procs)
                    ):
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not healthy in {timeout}s:\n{self.log_tail()}")
                time.sleep(0.1)

    def _serving_lines(self) -> int:
        # With port sharing a health answer may come from a sibling: count the start-up lines.
        if self.log_file is None:
            return len(self.procs)
        return self.log_file.read_bytes().count(b'"msg": "serving"')

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the shared server log."""
        if self.log_file is None or not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def reset_log(self) -> int:
        """Count ERROR lines in the log so far, then truncate it (the children append)."""
        if self.log_file is None or not self.log_file.exists():
            return 0
        errors = 0
        with open(self.log_file, "rb") as fh:
            for line in fh:
                if b'"level": "ERROR"' in line:
                    errors += 1
        os.truncate(self.log_file, 0)
        return errors

    def cpu_seconds(self) -> float:
        """Summed CPU seconds of the server processes."""
        return sum(proc_cpu_seconds(pid) for pid in self.pids)

    def rss_bytes(self) -> int:
        """Summed RSS of the server processes."""
        return sum(proc_rss_bytes(pid) for pid in self.pids)

    def stop(self) -> None:
        """SIGTERM every process (drain), then SIGKILL stragglers."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
