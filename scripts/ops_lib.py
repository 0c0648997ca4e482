"""Building blocks of the operations drills (scripts/restore_drill.py and the tests of the
upgrade, the runbooks and the README walkthrough): a throwaway PostgreSQL cluster with WAL
archiving, a `zumik-secrets serve` child process, and a client that talks to it as the dev-policy
identities over mTLS, the way the platform's services do (no in-process shortcuts: a claim comes
from VerifyApiKey).

Nothing here prints a secret: raw API keys and claims stay in memory.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import (
    audit_service_pb2_grpc,
    common_pb2,
    key_service_pb2_grpc,
    seal_service_pb2_grpc,
    tenant_service_pb2_grpc,
)
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import seal_service_pb2 as spb
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.tls import channel_credentials

REPO = Path(__file__).resolve().parents[1]
CLAIM_KEY = "zumik-claim"
_INITDB_ARGS = ("-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
_START = ("-w", "-t", "60", "start")
# Plain format, the WAL the backup needs streamed alongside, an immediate checkpoint.
_BASEBACKUP_ARGS = ("-X", "stream", "-c", "fast", "--no-sync")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(name: str) -> str:
    """A PostgreSQL program from PATH or /usr/lib/postgresql/*/bin.

    Raises:
        RuntimeError: It is not installed.
    """
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin")


def _as_postgres() -> list[str]:
    """initdb and the server refuse to run as root: run them as the postgres user then."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if not runuser:
        raise RuntimeError("running as root without runuser to start PostgreSQL as 'postgres'")
    return [runuser, "-u", "postgres", "--"]


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)


@dataclass
class PgCluster:
    """A private PostgreSQL cluster on 127.0.0.1 (trust auth, user postgres).

    ``archive`` set: WAL archiving on (``archive_command`` copies each finished segment there),
    which is what point-in-time recovery replays from.
    """

    data: Path
    port: int
    archive: Path | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data.parent / f"{self.data.name}.log"

    @classmethod
    def create(cls, root: Path, name: str, archive: Path | None) -> PgCluster:
        """initdb a new cluster under ``root/name`` and start it."""
        root.mkdir(parents=True, exist_ok=True)
        _chown_postgres(root)
        data = root / name
        subprocess.run(
            [
                *_as_postgres(),
                pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster = cls(data, free_port(), archive)
        settings = {"wal_level": "replica", "max_wal_senders": "4"}
        if archive is not None:
            archive.mkdir(parents=True, exist_ok=True)
            _chown_postgres(archive)
            settings |= {
                "archive_mode": "on",
                "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
            }
        cluster._configure(settings)
        cluster.start()
        return cluster

    @classmethod
    def restore(
        cls, base: Path, root: Path, name: str, archive: Path, target: dict[str, str]
    ) -> PgCluster:
        """Point-in-time recovery: copy the base backup, replay the archive up to ``target``
        (``recovery_target_time`` or ``recovery_target_lsn``), promote, and return the cluster.

        The restored cluster does not archive (it must never write into the original's archive;
        in production CloudNativePG restores into a new cluster with its own serverName).
        """
        data = root / name
        shutil.copytree(base, data, symlinks=True)
        _chown_postgres(data)
        os.chmod(data, 0o700)
        cluster = cls(data, free_port(), None)
        cluster._configure(
            {
                "archive_mode": "off",
                "restore_command": f"cp {archive}/%f %p",
                "recovery_target_action": "promote",
                **target,
            }
        )
        (data / "recovery.signal").touch()
        _chown_postgres(data)
        cluster.start()
        deadline = time.monotonic() + 60
        while cluster.query("SELECT pg_is_in_recovery()")[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"recovery did not finish: see {cluster.log}")
            time.sleep(0.2)
        return cluster

    def _configure(self, settings: dict[str, str]) -> None:
        lines = [f"{k} = '{v}'" for k, v in settings.items()]
        lines += [f"port = {self.port}", "listen_addresses = '127.0.0.1'"]
        lines += [f"unix_socket_directories = '{self.data.parent}'"]
        with (self.data / "postgresql.auto.conf").open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    def start(self) -> None:
        """pg_ctl start, waiting until it accepts connections."""
        if os.geteuid() == 0 and not self.log.exists():
            self.log.touch()
            shutil.chown(self.log, user="postgres")
        subprocess.run(
            [
                *_as_postgres(),
                pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (idempotent)."""
        subprocess.run(
            [*_as_postgres(), pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "stop"],
            check=False,
            capture_output=True,
            timeout=90,
        )

    def url(self, db: str = "postgres") -> str:
        """A libpq URL of database ``db``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def query(self, sql: str, db: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; the rows, if any."""
        with psycopg.connect(self.url(db), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql.encode())
            return list(cur.fetchall()) if cur.description else []

    def base_backup(self, dest: Path) -> None:
        """pg_basebackup (plain format, the WAL it needs streamed alongside, checkpoint fast)."""
        subprocess.run(
            [
                pg_bin("pg_basebackup"),
                "-d",
                self.url(),
                "-D",
                str(dest),
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )

    def archive_through(self, lsn: str, timeout: float = 60) -> str:
        """Switch WAL and wait until the segment holding ``lsn`` is archived; its name."""
        segment = str(self.query(f"SELECT pg_walfile_name('{lsn}')")[0][0])
        self.query("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while not (self.archive and (self.archive / segment).exists()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"WAL segment {segment} was not archived: see {self.log}")
            time.sleep(0.2)
        return segment


class ServerProcess:
    """`zumik-secrets serve` as a child process (the installed code, or ``python_path``'s)."""

    def __init__(
        self,
        pki: DevPki,
        database_url: str,
        keyring: Path,
        log: Path,
        *,
        python_path: list[Path] | None = None,
        listen: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.target = listen or f"127.0.0.1:{free_port()}"
        self.log = log
        self.pki = pki
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
        if python_path is not None:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in python_path)
        env.update(
            GRPC_VERBOSITY="ERROR",
            ZUMIK_LISTEN=self.target,
            ZUMIK_DATABASE_URL=database_url,
            ZUMIK_TLS_CERT=str(pki.server.cert),
            ZUMIK_TLS_KEY=str(pki.server.key),
            ZUMIK_TLS_CLIENT_CA=str(pki.ca_cert),
            ZUMIK_POLICY_FILE=str(dev_policy_path()),
            ZUMIK_MASTER_KEYRING_FILE=str(keyring),
            ZUMIK_PROCESSES="1",  # one process (older releases ignore the setting)
            ZUMIK_WORKERS="4",
        )
        env.update(extra_env or {})
        self._out = log.open("ab")
        # -P: with python_path, nothing from the current directory shadows the old release.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "zumik_secrets.cli.main", "serve"],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )

    def wait_serving(self, timeout: float = 60) -> None:
        """Block until health says SERVING.

        Raises:
            RuntimeError: The process exited or did not become SERVING in time.
        """
        pair = self.pki.client("control-plane")
        creds = channel_credentials(self.pki.ca_cert, pair.cert, pair.key)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: see {self.log}")
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
        raise RuntimeError(f"server did not become SERVING: see {self.log}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s (idempotent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


class _ClaimInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, claim: str) -> None:
        self._claim = claim

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), (CLAIM_KEY, self._claim)]
        return continuation(details._replace(metadata=metadata), request)


class Client:
    """The platform's services, as the dev-policy identities, against one server."""

    def __init__(self, pki: DevPki, target: str) -> None:
        self.pki = pki
        self.target = target
        self._channels: list[grpc.Channel] = []

    def channel(self, role: str, claim: str | None = None) -> grpc.Channel:
        """An mTLS channel as ``role`` (closed by :meth:`close`)."""
        pair = self.pki.client(role)
        creds = channel_credentials(self.pki.ca_cert, pair.cert, pair.key)
        ch = grpc.secure_channel(self.target, creds)
        self._channels.append(ch)
        return grpc.intercept_channel(ch, _ClaimInterceptor(claim)) if claim else ch

    def close(self) -> None:
        """Close every channel."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()

    def keys(self, role: str, claim: str | None = None) -> key_service_pb2_grpc.KeyServiceStub:
        """KeyService as ``role``."""
        return key_service_pb2_grpc.KeyServiceStub(self.channel(role, claim))

    def create_api_key(self, tenant: str, project: str, scopes: list[str]) -> tuple[str, str]:
        """The control plane creates a key; returns (name, raw key)."""
        resp = self.keys("control-plane").CreateApiKey(
            kpb.CreateApiKeyRequest(
                parent=f"tenants/{tenant}/projects/{project}", display_name="drill", scopes=scopes
            ),
            timeout=10,
        )
        return resp.api_key.name, resp.raw_key

    def verify(self, raw_key: str) -> tuple[str, str]:
        """The gateway verifies a key; returns (VERIFY_RESULT_* name, claim or "")."""
        resp = self.keys("gateway").VerifyApiKey(kpb.VerifyApiKeyRequest(key=raw_key), timeout=10)
        return common_pb2.VerifyResult.Name(resp.result), resp.claim

    def revoke(self, name: str) -> None:
        """The control plane revokes a key."""
        self.keys("control-plane").RevokeApiKey(kpb.RevokeApiKeyRequest(name=name), timeout=10)

    def seal(self, claim: str, tenant: str, project: str, plaintext: bytes) -> str:
        """The console seals with a claim; the secret's name."""
        stub = seal_service_pb2_grpc.SealServiceStub(self.channel("console", claim))
        resp = stub.Seal(
            spb.SealRequest(parent=f"tenants/{tenant}/projects/{project}", plaintext=plaintext),
            timeout=10,
        )
        return str(resp.secret.name)

    def open(self, claim: str, name: str) -> bytes | str:
        """The executor opens with a claim: the plaintext, or the status code's name."""
        stub = seal_service_pb2_grpc.SealServiceStub(self.channel("executor", claim))
        try:
            return bytes(stub.Open(spb.OpenRequest(name=name), timeout=10).plaintext)
        except grpc.RpcError as err:
            return str(err.code().name)

    def purge_tenant(self, tenant: str) -> dict[str, Any]:
        """The control plane purges a tenant; the response as protobuf JSON."""
        name = f"tenants/{tenant}"
        resp = tenant_service_pb2_grpc.TenantServiceStub(self.channel("control-plane")).PurgeTenant(
            tpb.PurgeTenantRequest(name=name, confirm=name), timeout=120
        )
        return dict(json_format.MessageToDict(resp))

    def get_receipt(self, name: str) -> dict[str, Any] | str:
        """GetPurgeReceipt as the control plane: protobuf JSON, or the status code's name."""
        stub = tenant_service_pb2_grpc.TenantServiceStub(self.channel("control-plane"))
        try:
            resp = stub.GetPurgeReceipt(tpb.GetPurgeReceiptRequest(name=name), timeout=10)
        except grpc.RpcError as err:
            return str(err.code().name)
        return dict(json_format.MessageToDict(resp))

    def verify_chain(self, tenant: str) -> apb.VerifyChainResponse:
        """The auditor verifies a tenant's audit chain."""
        stub = audit_service_pb2_grpc.AuditServiceStub(self.channel("auditor"))
        resp: apb.VerifyChainResponse = stub.VerifyChain(
            apb.VerifyChainRequest(parent=f"tenants/{tenant}"), timeout=60
        )
        return resp

    def create_checkpoint(self, tenant: str) -> None:
        """The auditor asks for a signed checkpoint over the tenant's head (published to the
        witness when the server has one)."""
        stub = audit_service_pb2_grpc.AuditServiceStub(self.channel("auditor"))
        stub.CreateCheckpoint(apb.CreateCheckpointRequest(parent=f"tenants/{tenant}"), timeout=30)

    def checkpoint_keys(self) -> dict[str, Any]:
        """ListCheckpointKeys as protobuf JSON (what `audit verify`/`purge verify-receipt` take)."""
        stub = audit_service_pb2_grpc.AuditServiceStub(self.channel("auditor"))
        resp = stub.ListCheckpointKeys(apb.ListCheckpointKeysRequest(), timeout=10)
        return dict(json_format.MessageToDict(resp))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `zumik-secrets ARGS` (this checkout's code) and return the finished process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "zumik_secrets.cli.main", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
