"""Every acknowledged change keeps its audit event across kill -9 (issue 24).

Several server processes over one PostgreSQL database (one process on SQLite) take mixed
state-changing calls (create and revoke API keys, create sessions, update tenant settings, seal
and delete secrets) from several threads while processes are killed with SIGKILL and restarted,
round robin. Every call a server acknowledged is noted with the audit event it must have left
(tenant, action, target); afterwards, every one of them is found in its tenant's chain, and
every chain verifies. Before issue 24 the events of changes were group-committed after the
answer, so a process killed inside that window lost the events of changes it had acknowledged
(3 of 4,908 Seals in the reliability run); now they commit in the change's transaction.

``ZUMIK_AUDIT_KILLS`` sets how many kills (default 3 on PostgreSQL, 2 on SQLite).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
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

from tests.security.procs import ServerProcess, wait_for
from tests.security.report import count_cases
from tests.security.rpcs import by_name
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.core.keyring import generate_keyring

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

TENANT, PROJECT = "durable", "proj"
PARENT = f"tenants/{TENANT}/projects/{PROJECT}"
RICH = tenant_service_pb2.TELEMETRY_MODE_RICH


def _call(channel: grpc.Channel, name: str, request: Any, timeout: float = 10) -> Any:
    return by_name(name).call(channel, request, timeout=timeout)


@dataclass
class Ledger:
    """The audit events the acknowledged changes must have left: (tenant, action, target)."""

    expected: list[tuple[str, str, str]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, tenant: str, action: str, target: str) -> None:
        with self.lock:
            self.expected.append((tenant, action, target))

    def failed(self, label: str, err: grpc.RpcError) -> None:
        code = err.code()  # type: ignore[attr-defined]
        with self.lock:
            self.errors[code.name] = self.errors.get(code.name, 0) + 1
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                self.bad.append(f"{label}: {code.name} {err.details()}")  # type: ignore[attr-defined]


class Load:
    """Threads making changes through every process (their channels survive restarts)."""

    def __init__(self, servers: list[ServerProcess], claim: str, threads: int = 2) -> None:
        self.servers = servers
        self.claim = claim
        self.threads = threads
        self.ledger = Ledger()
        self.stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _op(self, label: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except grpc.RpcError as err:
            self.ledger.failed(label, err)
            time.sleep(0.01)  # a killed process refuses at once: do not spin

    def _worker(self, server: ServerProcess, n: int) -> None:
        control = server.channel("control-plane")
        console = server.channel("console", claim=self.claim)
        ledger = self.ledger
        i = 0
        while not self.stop.is_set():
            i += 1
            tag = f"{server.port}-{n}-{i}-{secrets.token_hex(2)}"

            def key_and_revoke() -> None:
                made = _call(
                    control,
                    "KeyService.CreateApiKey",
                    key_service_pb2.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]),
                )
                ledger.ack(TENANT, "api_key.create", made.api_key.name)
                _call(
                    control,
                    "KeyService.RevokeApiKey",
                    key_service_pb2.RevokeApiKeyRequest(name=made.api_key.name),
                )
                ledger.ack(TENANT, "api_key.revoke", made.api_key.name)

            def session(tag: str = tag) -> None:
                made = _call(
                    control,
                    "KeyService.CreateSession",
                    key_service_pb2.CreateSessionRequest(
                        parent=PARENT, user_subject=f"user-{tag}", scopes=["keys.read"]
                    ),
                )
                ledger.ack(TENANT, "session.create", made.session.name)

            def settings(tag: str = tag) -> None:
                tenant = f"d{tag}".lower()
                _call(
                    control,
                    "TenantService.UpdateTenantSettings",
                    tenant_service_pb2.UpdateTenantSettingsRequest(
                        name=f"tenants/{tenant}/settings",
                        settings=tenant_service_pb2.TenantSettings(telemetry_mode=RICH),
                        update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
                    ),
                )
                ledger.ack(tenant, "tenant.settings.update", f"tenants/{tenant}/settings")

            def seal_and_delete(i: int = i) -> None:
                made = _call(
                    console,
                    "SealService.Seal",
                    seal_service_pb2.SealRequest(parent=PARENT, plaintext=secrets.token_bytes(24)),
                )
                ledger.ack(TENANT, "secret.seal", made.secret.name)
                if i % 2:
                    _call(
                        console,
                        "SealService.DeleteSecret",
                        seal_service_pb2.DeleteSecretRequest(name=made.secret.name),
                    )
                    ledger.ack(TENANT, "secret.delete", made.secret.name)

            self._op("CreateApiKey/RevokeApiKey", key_and_revoke)
            self._op("CreateSession", session)
            self._op("UpdateTenantSettings", settings)
            self._op("Seal/DeleteSecret", seal_and_delete)

    def start(self) -> None:
        for server in self.servers:
            for n in range(self.threads):
                worker = threading.Thread(target=self._worker, args=(server, n), daemon=True)
                worker.start()
                self._workers.append(worker)

    def finish(self) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def acked(self) -> int:
        with self.ledger.lock:
            return len(self.ledger.expected)


def _claim(server: ServerProcess) -> str:
    made = _call(
        server.channel("control-plane"),
        "KeyService.CreateApiKey",
        key_service_pb2.CreateApiKeyRequest(
            parent=PARENT, scopes=["secrets.seal", "secrets.admin"]
        ),
    )
    verified = _call(
        server.channel("gateway"),
        "KeyService.VerifyApiKey",
        key_service_pb2.VerifyApiKeyRequest(key=made.raw_key),
    )
    claim: str = verified.claim
    assert claim
    return claim


def _chain(server: ServerProcess, tenant: str) -> set[tuple[str, str]]:
    """(action, target) of every event of ``tenant``, read as the auditor."""
    auditor = server.channel("auditor")
    found: set[tuple[str, str]] = set()
    token = ""
    while True:
        page = _call(
            auditor,
            "AuditService.QueryEvents",
            audit_service_pb2.QueryEventsRequest(
                parent=f"tenants/{tenant}", page_size=1000, page_token=token
            ),
            timeout=30,
        )
        found.update((e.action, e.target) for e in page.events)
        token = page.next_page_token
        if not token:
            return found


@pytest.mark.parametrize(
    ("backend", "processes"),
    [("sqlite", 1), pytest.param("postgresql", 3, marks=pytest.mark.postgres)],
)
def test_kill_9_keeps_the_audit_event_of_every_acknowledged_change(
    backend: str,
    processes: int,
    dev_pki: DevPki,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = f"sqlite:///{tmp_path}/var/zumik.db"
    if backend == "postgresql":
        url = str(request.getfixturevalue("fresh_pg_url"))
    kills = int(os.environ.get("ZUMIK_AUDIT_KILLS", "3" if processes > 1 else "2"))
    keyring = generate_keyring()
    servers = []
    for index in range(processes):
        workdir = tmp_path / f"srv{index}"
        workdir.mkdir()
        (workdir / "keyring.json").write_text(keyring)
        (workdir / "keyring.json").chmod(0o600)
        servers.append(ServerProcess(dev_pki, workdir, url))
    load: Load | None = None
    try:
        for server in servers:
            server.start()
        load = Load(servers, _claim(servers[0]))
        load.start()
        for k in range(kills):
            floor = load.acked() + 40
            assert wait_for(lambda f=floor: load.acked() >= f, timeout=30), "load stalled"
            victim = servers[k % processes]
            victim.kill9()  # mid-load: its last acknowledged changes are milliseconds old
            time.sleep(0.3)  # the others keep writing meanwhile
            victim.start()
        floor = load.acked() + 20
        assert wait_for(lambda: load.acked() >= floor, timeout=30), "load stalled after kills"
        load.finish()
        ledger = load.ledger
        tenants = sorted({t for t, _, _ in ledger.expected})
        chains = {t: _chain(servers[-1], t) for t in tenants}
        missing = [e for e in ledger.expected if (e[1], e[2]) not in chains[e[0]]]
        for tenant in (TENANT, tenants[0]):
            verdict = _call(
                servers[0].channel("auditor"),
                "AuditService.VerifyChain",
                audit_service_pb2.VerifyChainRequest(parent=f"tenants/{tenant}"),
                timeout=60,
            )
            assert verdict.ok, (tenant, verdict)
    finally:
        if load is not None:
            load.finish()
        for server in servers:
            server.stop()
    count_cases(request, "kill -9 of a process under change load", backend, kills)
    count_cases(
        request, "acknowledged changes whose audit event was found", backend, len(ledger.expected)
    )
    print(
        f"{backend}: {processes} processes, {kills} kills, {len(ledger.expected)} acknowledged"
        f" changes, errors by code {ledger.errors}, missing events {len(missing)}"
    )
    assert not ledger.bad, "\n".join(ledger.bad)
    assert len(ledger.expected) > 100
    assert not missing, f"{len(missing)} acknowledged changes without their event: {missing[:5]}"
