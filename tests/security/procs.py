"""Real server processes and a throwaway PostgreSQL cluster, for the fault tests.

Servers run as ``python -m zumik_secrets.cli.main serve`` with ``ZUMIK_*`` settings; their stderr
goes to a file that is handed to the leak sweep when the process is done with. The PostgreSQL
cluster is private to the test (``initdb`` + ``pg_ctl`` on a free port in a temp dir, run as the
``postgres`` user when we are root): the machine's shared PostgreSQL is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import fix_leaks
from tests.fix_db import _find_pg_bin, _free_port
from tests.security.rpcs import REPO
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.tls import channel_credentials


class _ClaimMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, claim: str) -> None:
        self._claim = claim

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), ("zumik-claim", self._claim)])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class ServerProcess:
    """One `zumik-secrets serve` process; restartable on the same database and port."""

    def __init__(self, pki: DevPki, workdir: Path, database_url: str, **env: str) -> None:
        self.pki = pki
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.port = _free_port()
        self.target = f"127.0.0.1:{self.port}"
        keyring = workdir / "keyring.json"
        if not keyring.exists():
            from zumik_secrets.core.keyring import generate_keyring

            keyring.write_text(generate_keyring())
            keyring.chmod(0o600)
        fix_leaks.REGISTRY.add_keyring(keyring.read_text())
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
        self.env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO / "service"), str(REPO / "clients/python/src")]
                ),
                "GRPC_VERBOSITY": "ERROR",
                "ZUMIK_LISTEN": self.target,
                "ZUMIK_DATABASE_URL": database_url,
                "ZUMIK_TLS_CERT": str(pki.server.cert),
                "ZUMIK_TLS_KEY": str(pki.server.key),
                "ZUMIK_TLS_CLIENT_CA": str(pki.ca_cert),
                "ZUMIK_POLICY_FILE": str(dev_policy_path()),
                "ZUMIK_MASTER_KEYRING_FILE": str(keyring),
                "ZUMIK_PROCESSES": "1",  # one process: kill9() kills the server
                "ZUMIK_WORKERS": "8",
                **env,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._channels: list[grpc.Channel] = []

    def start(self, timeout: float = 40.0) -> None:
        """Start the process and wait until health says SERVING.

        Raises:
            AssertionError: it exited or did not become SERVING in time.
        """
        self.starts += 1
        log = (self.workdir / f"stderr-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zumik_secrets.cli.main", "serve"],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited {self.proc.returncode}: {self.stderr()[-2000:]}"
                )
            if self.health(timeout=1.0) == "SERVING":
                return
            time.sleep(0.1)
        raise AssertionError(f"server not SERVING after {timeout}s: {self.stderr()[-2000:]}")

    def health(self, timeout: float = 2.0) -> str:
        """SERVING, NOT_SERVING, or the failure code name."""
        stub = health_pb2_grpc.HealthStub(self.channel("console"))
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as err:
            return str(err.code().name)  # type: ignore[attr-defined]
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    def channel(self, role: str, claim: str | None = None) -> grpc.Channel:
        pair = self.pki.client(role)
        channel = grpc.secure_channel(
            self.target, channel_credentials(self.pki.ca_cert, pair.cert, pair.key)
        )
        self._channels.append(channel)
        channel = fix_leaks.capture(channel)
        if claim is not None:
            channel = grpc.intercept_channel(channel, _ClaimMetadata(claim))
        return channel

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (drain), SIGKILL if it lingers; close channels; hand stderr to the sweep."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        fix_leaks.add_haystack(f"stderr of server process in {self.workdir}", self.stderr())

    def stderr(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("stderr-*.log"))
        )


class PgCluster:
    """A private PostgreSQL cluster that a test may stop and start at will."""

    def __init__(self) -> None:
        initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("initdb/pg_ctl not found")
        self.pg_ctl = pg_ctl
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                raise RuntimeError("running as root without runuser")
            self.prefix = [runuser, "-u", "postgres", "--"]
        self.tmp = tempfile.mkdtemp(prefix="zumik-sec-pg-")
        if self.prefix:
            shutil.chown(self.tmp, user="postgres")
        self.data = os.path.join(self.tmp, "data")
        self.port = _free_port()
        self._run(
            [initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            timeout=120,
        )
        self.start()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str], timeout: float) -> None:
        subprocess.run([*self.prefix, *cmd], check=True, capture_output=True, timeout=timeout)

    def start(self) -> None:
        self._run(
            [
                self.pg_ctl,
                "-D",
                self.data,
                "-l",
                os.path.join(self.tmp, "log"),
                "-w",
                "-t",
                "30",
                "-o",
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.tmp} -F",
                "start",
            ],
            timeout=60,
        )

    def stop(self, mode: str = "fast") -> None:
        self._run([self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop"], timeout=60)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
