"""Faults: kill -9 under load, PostgreSQL going away and coming back, a full SQLite disk.

* kill -9 a server *process* during mixed writes (API keys, sessions, tenant settings, sealed
  secrets, audit events: whatever is implemented; UNIMPLEMENTED parts are detected at run time,
  skipped and listed in the terminal summary), on SQLite and PostgreSQL, restart it on the same
  database, and check that every acknowledged write is there and every audit chain verifies;
* stop a throwaway PostgreSQL cluster under load: calls fail fast with UNAVAILABLE (well inside
  their deadline), health turns NOT_SERVING, and after the cluster starts again the same process
  serves writes without a restart;
* fill the disk under a SQLite database (a small tmpfs, root only): writes fail cleanly with
  UNAVAILABLE or RESOURCE_EXHAUSTED, never INTERNAL; after space is freed the file passes
  ``PRAGMA integrity_check`` and writes succeed again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from zumik.secrets.v1 import (
    audit_service_pb2,
    key_service_pb2,
    seal_service_pb2,
    tenant_service_pb2,
)

from tests import fix_leaks
from tests.security.conftest import start_server
from tests.security.procs import PgCluster, ServerProcess, wait_for
from tests.security.report import count_cases
from tests.security.rpcs import by_name
from zumik_secrets.cli.dev_pki import DevPki

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

TENANT, PROJECT = "load", "proj"
LOAD_SCOPES = ["secrets.seal", "secrets.open", "secrets.read", "keys.read"]
RICH = tenant_service_pb2.TELEMETRY_MODE_RICH
OK_DOWN_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _call(target: Any, name: str, request: Any, timeout: float = 10) -> Any:
    return by_name(name).call(target, request, timeout=timeout)


@dataclass
class Acked:
    """Writes the server acknowledged, to look for after the crash."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # (name, raw key)
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (name, token)
    settings: list[str] = field(default_factory=list)  # tenant set to RICH
    secrets: list[tuple[str, bytes]] = field(default_factory=list)  # (name, plaintext)
    events: list[int] = field(default_factory=list)  # sequence numbers
    unsupported: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def total(self) -> int:
        return sum(map(len, (self.keys, self.sessions, self.settings, self.secrets, self.events)))


class Workload:
    """Mixed writes against a server process from several threads."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.acked = Acked()
        self.stop = threading.Event()
        self.claim: str | None = None

    def prepare(self) -> None:
        """Get a claim through the real flow (CreateApiKey, then VerifyApiKey)."""
        try:
            made = _call(
                self.server.channel("control-plane"),
                "KeyService.CreateApiKey",
                key_service_pb2.CreateApiKeyRequest(
                    parent=f"tenants/{TENANT}/projects/{PROJECT}", scopes=LOAD_SCOPES
                ),
            )
            verified = _call(
                self.server.channel("gateway"),
                "KeyService.VerifyApiKey",
                key_service_pb2.VerifyApiKeyRequest(key=made.raw_key),
            )
            self.claim = verified.claim or None
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                raise
        if self.claim is None:
            self.acked.unsupported.add("claims via VerifyApiKey (Seal/Open skipped)")

    def _op(self, label: str, fn: Callable[[], None]) -> None:
        if label in self.acked.unsupported:
            return
        try:
            fn()
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNIMPLEMENTED:
                with self.acked.lock:
                    self.acked.unsupported.add(label)
            elif (
                code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
                and not self.stop.is_set()
            ):
                with self.acked.lock:
                    self.acked.failures.append(f"{label}: {code} {err.details()}")  # type: ignore[attr-defined]

    def _worker(self, n: int) -> None:
        control = self.server.channel("control-plane")
        console = self.server.channel("console", claim=self.claim) if self.claim else None
        billing = self.server.channel("billing")
        i = 0
        while not self.stop.is_set():
            i += 1
            tag = f"{n}-{i}-{secrets.token_hex(3)}"

            def key(tag: str = tag) -> None:
                made = _call(
                    control,
                    "KeyService.CreateApiKey",
                    key_service_pb2.CreateApiKeyRequest(
                        parent=f"tenants/{TENANT}/projects/{PROJECT}", scopes=["keys.read"]
                    ),
                )
                with self.acked.lock:
                    self.acked.keys.append((made.api_key.name, made.raw_key))

            def session(tag: str = tag) -> None:
                made = _call(
                    control,
                    "KeyService.CreateSession",
                    key_service_pb2.CreateSessionRequest(
                        parent=f"tenants/{TENANT}/projects/{PROJECT}",
                        user_subject=f"user-{tag}",
                        scopes=["keys.read"],
                    ),
                )
                with self.acked.lock:
                    self.acked.sessions.append((made.session.name, made.token))

            def settings(tag: str = tag) -> None:
                tenant = f"k{tag}".lower()
                _call(
                    control,
                    "TenantService.UpdateTenantSettings",
                    tenant_service_pb2.UpdateTenantSettingsRequest(
                        name=f"tenants/{tenant}/settings",
                        settings=tenant_service_pb2.TenantSettings(telemetry_mode=RICH),
                        update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
                    ),
                )
                with self.acked.lock:
                    self.acked.settings.append(tenant)

            def seal(tag: str = tag) -> None:
                assert console is not None
                plaintext = f"kill-test plaintext {tag} {secrets.token_hex(8)}".encode()
                made = _call(
                    console,
                    "SealService.Seal",
                    seal_service_pb2.SealRequest(
                        parent=f"tenants/{TENANT}/projects/{PROJECT}", plaintext=plaintext
                    ),
                )
                with self.acked.lock:
                    self.acked.secrets.append((made.secret.name, plaintext))

            def event(tag: str = tag) -> None:
                made = _call(
                    billing,
                    "AuditService.AppendEvent",
                    audit_service_pb2.AppendEventRequest(
                        parent=f"tenants/{TENANT}",
                        action="billing.plan_changed",
                        target=f"plan-{tag}",
                        outcome=audit_service_pb2.AUDIT_OUTCOME_SUCCESS,
                    ),
                )
                with self.acked.lock:
                    self.acked.events.append(made.event.sequence)

            self._op("CreateApiKey", key)
            self._op("CreateSession", session)
            self._op("UpdateTenantSettings", settings)
            if console is not None:
                self._op("Seal", seal)
            self._op("AppendEvent", event)

    @contextlib.contextmanager
    def running(self, threads: int = 4) -> Iterator[None]:
        workers = [
            threading.Thread(target=self._worker, args=(n,), daemon=True) for n in range(threads)
        ]
        for w in workers:
            w.start()
        try:
            yield
        finally:
            self.stop.set()
            for w in workers:
                w.join(timeout=30)
            self.stop.clear()


def check_acknowledged(server: ServerProcess, work: Workload) -> list[str]:
    """Every acknowledged write must be readable after the restart."""
    acked, problems = work.acked, []
    control, gateway = server.channel("control-plane"), server.channel("gateway")
    for name, raw in acked.keys:
        got = _call(control, "KeyService.GetApiKey", key_service_pb2.GetApiKeyRequest(name=name))
        if got.api_key.name != name:
            problems.append(f"api key {name} lost")
        verified = _call(
            gateway, "KeyService.VerifyApiKey", key_service_pb2.VerifyApiKeyRequest(key=raw)
        )
        if verified.result != 1:  # VERIFY_RESULT_VALID
            problems.append(f"api key {name} no longer verifies ({verified.result})")
    for name, token in acked.sessions:
        got = _call(
            gateway, "KeyService.VerifySession", key_service_pb2.VerifySessionRequest(token=token)
        )
        if got.result != 1:
            problems.append(f"session {name} no longer verifies ({got.result})")
    for tenant in acked.settings:
        got = _call(
            control,
            "TenantService.GetTenantSettings",
            tenant_service_pb2.GetTenantSettingsRequest(name=f"tenants/{tenant}/settings"),
        )
        if got.settings.telemetry_mode != RICH:
            problems.append(f"settings of {tenant} lost")
    if acked.secrets:
        work.prepare()  # a fresh claim (the old one is still valid, but keys may have rotated)
        executor_claim = None
        made = _call(
            control,
            "KeyService.CreateApiKey",
            key_service_pb2.CreateApiKeyRequest(
                parent=f"tenants/{TENANT}/projects/{PROJECT}", scopes=["secrets.open"]
            ),
        )
        executor_claim = _call(
            gateway,
            "KeyService.VerifyApiKey",
            key_service_pb2.VerifyApiKeyRequest(key=made.raw_key),
        ).claim
        executor = server.channel("executor", claim=executor_claim)
        for name, plaintext in acked.secrets:
            opened = _call(executor, "SealService.Open", seal_service_pb2.OpenRequest(name=name))
            if opened.plaintext != plaintext:
                problems.append(f"secret {name} does not open to what was sealed")
    problems.extend(verify_chains(server))
    return problems


def verify_chains(server: ServerProcess) -> list[str]:
    """Every audit chain verifies (skipped while AuditService is not implemented)."""
    auditor = server.channel("auditor")
    problems = []
    for parent in (f"tenants/{TENANT}", "tenants/-"):
        try:
            got = _call(
                auditor,
                "AuditService.VerifyChain",
                audit_service_pb2.VerifyChainRequest(parent=parent),
                timeout=30,
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                return []
            problems.append(f"VerifyChain {parent}: {err.code()} {err.details()}")  # type: ignore[attr-defined]
            continue
        if not got.ok:
            problems.append(
                f"audit chain {parent} broken at {got.first_bad_sequence}: {got.failure}"
            )
    return problems


CYCLES = int(os.environ.get("ZUMIK_KILL_CYCLES", "2"))


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_kill_9_under_load_loses_no_acknowledged_write(
    backend: str,
    dev_pki: DevPki,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = f"sqlite:///{tmp_path}/var/zumik.db"
    if backend == "postgresql":
        url = str(request.getfixturevalue("fresh_pg_url"))
    server = ServerProcess(dev_pki, tmp_path / "srv", url)
    work = Workload(server)
    try:
        server.start()
        work.prepare()
        for cycle in range(CYCLES):
            with work.running():
                wait_for(lambda c=cycle: work.acked.total() >= 40 * (c + 1), timeout=8)
                server.kill9()
            server.start()
        problems = check_acknowledged(server, work) + work.acked.failures
    finally:
        server.stop()
    count_cases(request, "kill -9 cycles", backend, CYCLES)
    count_cases(request, "acknowledged writes checked after kill -9", backend, work.acked.total())
    for label in sorted(work.acked.unsupported):
        count_cases(request, f"kill -9 load skipped (UNIMPLEMENTED): {label}", backend, 1)
    assert work.acked.total() > 0, "no write was acknowledged before the kill"
    assert not problems, "\n".join(problems)


def test_postgres_outage_fails_fast_and_recovers_without_restart(
    dev_pki: DevPki, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    try:
        cluster = PgCluster()
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"no throwaway PostgreSQL cluster: {exc}")
    server = ServerProcess(dev_pki, tmp_path / "srv", cluster.url)
    control: grpc.Channel | None = None
    try:
        server.start()
        control = server.channel("control-plane")
        pid = server.proc.pid if server.proc else 0

        def write(i: str, timeout: float = 10) -> None:
            _call(
                control,
                "TenantService.UpdateTenantSettings",
                tenant_service_pb2.UpdateTenantSettingsRequest(
                    name=f"tenants/pg{i}/settings",
                    settings=tenant_service_pb2.TenantSettings(telemetry_mode=RICH),
                    update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
                ),
                timeout=timeout,
            )

        t0 = time.monotonic()
        phases: dict[str, float] = {}
        for i in range(20):
            write(f"before{i}")
        cluster.stop("fast")
        phases["stop"] = time.monotonic() - t0
        deadline = 10.0
        slowest, codes = 0.0, []
        lock = threading.Lock()

        def failing(i: int) -> None:
            nonlocal slowest
            started = time.monotonic()
            try:
                write(f"down{i}", timeout=deadline)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
            with lock:
                slowest = max(slowest, time.monotonic() - started)
                codes.append(code)

        callers = [threading.Thread(target=failing, args=(i,)) for i in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert set(codes) <= OK_DOWN_CODES, codes
        assert slowest < deadline * 0.8, f"a call took {slowest:.1f}s of its {deadline}s deadline"
        phases["failing calls"] = time.monotonic() - t0
        assert wait_for(lambda: server.health() == "NOT_SERVING", timeout=15), server.health()
        phases["NOT_SERVING"] = time.monotonic() - t0
        cluster.start()
        phases["restarted"] = time.monotonic() - t0
        assert wait_for(lambda: server.health() == "SERVING", timeout=30), server.health()
        phases["SERVING"] = time.monotonic() - t0

        def writes_again() -> bool:
            try:
                write("after")
            except grpc.RpcError:
                return False
            return True

        assert wait_for(writes_again, timeout=20)
        phases["writes again"] = time.monotonic() - t0
        print("outage timeline (s):", {k: round(v, 2) for k, v in phases.items()})
        assert server.proc is not None and server.proc.poll() is None and server.proc.pid == pid
        count_cases(request, "postgresql outages survived", "postgresql", 1)
        print(f"slowest call while PostgreSQL was down: {slowest:.2f}s (deadline {deadline}s)")
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            cluster.start()
            fix_leaks.scan_postgres(cluster.url, "throwaway PostgreSQL of the outage test")
        cluster.destroy()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def test_full_disk_gives_clean_errors_and_no_corruption(
    small_disk: Path, policy_pki: DevPki, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db_dir = small_disk / "var"
    server = start_server(
        policy_pki, tmp_path / "srv", ZUMIK_DATABASE_URL=f"sqlite:///{db_dir}/zumik.db"
    )
    db = db_dir / "zumik.db"
    filler = small_disk / "filler"
    codes: dict[str, int] = {}
    try:
        control = server.channel("control-plane")

        def write(i: int) -> None:
            _call(
                control,
                "TenantService.UpdateTenantSettings",
                tenant_service_pb2.UpdateTenantSettingsRequest(
                    name=f"tenants/disk{i}/settings",
                    settings=tenant_service_pb2.TenantSettings(telemetry_mode=RICH),
                    update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
                ),
            )
            with contextlib.suppress(grpc.RpcError):
                _call(
                    control,
                    "KeyService.CreateApiKey",
                    key_service_pb2.CreateApiKeyRequest(
                        parent=f"tenants/disk{i}/projects/p",
                        scopes=["keys.read"],
                        display_name="x" * 120,
                    ),
                )

        for i in range(5):
            write(i)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # take every free byte
            for chunk in (65536, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        refused = 0
        for i in range(5, 400):
            try:
                write(i)
            except grpc.RpcError as err:
                name = err.code().name  # type: ignore[attr-defined]
                codes[name] = codes.get(name, 0) + 1
                refused += 1
                assert err.code() in OK_DOWN_CODES, f"{err.code()} {err.details()}"  # type: ignore[attr-defined]
                if refused >= 20:
                    break
        assert refused, "the disk never filled up"
        filler.unlink()
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

        def writes_again() -> bool:
            try:
                write(10_000)
            except grpc.RpcError:
                return False
            return True

        assert wait_for(writes_again, timeout=15)
    finally:
        server.close()
        for path in (db, db.with_name("zumik.db-wal")):
            if path.exists():
                fix_leaks.add_haystack(f"{path} (tmpfs)", path.read_bytes())
    for name, n in codes.items():
        count_cases(request, "full-disk refusals by code", name, n)
