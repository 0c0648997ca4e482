"""Fixtures that run a real Zumik Secrets server over real mutual TLS on loopback.

``zumik_server`` runs in-process (fast; SQLite in tmp_path); ``zumik_server_factory`` builds one
with any database URL and extra settings. ``RunningServer.channel(role, claim=...)`` opens an
mTLS channel as one of the dev-policy identities, optionally forwarding a tenant claim.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from zumik.secrets.v1 import (
    audit_service_pb2_grpc,
    fingerprint_service_pb2_grpc,
    key_service_pb2_grpc,
    seal_service_pb2_grpc,
    tenant_service_pb2_grpc,
)

from tests import fix_leaks
from zumik_secrets.cli.dev_pki import CertPair, DevPki
from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.server.config import ServerConfig, dev_policy_path
from zumik_secrets.server.grpc_server import ZumikServer
from zumik_secrets.server.runtime import Runtime
from zumik_secrets.server.tls import channel_credentials

CLAIM_KEY = "zumik-claim"


class _ClaimInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    def __init__(self, claim: str) -> None:
        self._claim = claim

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), (CLAIM_KEY, self._claim)]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


@dataclass
class Stubs:
    """One stub per service over a channel."""

    keys: key_service_pb2_grpc.KeyServiceStub
    seal: seal_service_pb2_grpc.SealServiceStub
    fingerprints: fingerprint_service_pb2_grpc.FingerprintServiceStub
    audit: audit_service_pb2_grpc.AuditServiceStub
    tenants: tenant_service_pb2_grpc.TenantServiceStub


@dataclass
class RunningServer:
    """A started server and how to reach it."""

    server: ZumikServer
    runtime: Runtime
    pki: DevPki
    target: str
    _channels: list[grpc.Channel] = field(default_factory=list)

    def channel(
        self, role: str | CertPair = "console", *, claim: str | None = None
    ) -> grpc.Channel:
        """An mTLS channel as ``role`` (a dev-policy role or any CertPair), closed at teardown."""
        pair = self.pki.client(role) if isinstance(role, str) else role
        creds = channel_credentials(self.pki.ca_cert, pair.cert, pair.key)
        channel = grpc.secure_channel(self.target, creds)
        self._channels.append(channel)
        # Every request, response and error passes the leak sweep's capture (tests/fix_leaks.py).
        channel = fix_leaks.capture(channel)
        if claim is not None:
            channel = grpc.intercept_channel(channel, _ClaimInterceptor(claim))
        return channel

    def stubs(self, role: str | CertPair = "console", *, claim: str | None = None) -> Stubs:
        """Stubs of every service as ``role``."""
        ch = self.channel(role, claim=claim)
        return Stubs(
            keys=key_service_pb2_grpc.KeyServiceStub(ch),
            seal=seal_service_pb2_grpc.SealServiceStub(ch),
            fingerprints=fingerprint_service_pb2_grpc.FingerprintServiceStub(ch),
            audit=audit_service_pb2_grpc.AuditServiceStub(ch),
            tenants=tenant_service_pb2_grpc.TenantServiceStub(ch),
        )

    def mint_claim(
        self,
        tenant: str,
        project: str,
        scopes: tuple[str, ...],
        *,
        subject: str = "key_test",
        ttl: int = 300,
        credential_id: str = "ses_test",
    ) -> str:
        """A claim signed by the server's own claim key (for tests that need one directly);
        ``credential_id`` is the ``cid`` (revoking a credential of that id reaches it). The
        default names a session, whose claim mints credentials of any lifetime; a ``key_`` id
        the store does not hold bounds what the claim mints to the claim's own expiry."""
        token, _ = self.runtime.claim_keys.signer.mint(
            tenant, project, subject, scopes, int(time.time()), ttl, credential_id=credential_id
        )
        fix_leaks.REGISTRY.add(token, "claim minted by a test")
        return token

    metric_reader: InMemoryMetricReader | None = None

    def close(self) -> None:
        """Close channels, hand the server's metrics to the leak sweep, drain the server."""
        for ch in self._channels:
            ch.close()
        if self.metric_reader is not None:
            fix_leaks.record_metrics(self.metric_reader, f"metrics of server {self.target}")
        endpoint = self.runtime.metrics.endpoint
        if endpoint is not None:
            fix_leaks.add_haystack(
                f"scrape endpoint of server {self.target}", fix_leaks.scrape(endpoint.port)
            )
        self.server.drain(grace=1.0)


ServerFactory = Callable[..., RunningServer]


@pytest.fixture
def zumik_server_factory(dev_pki: DevPki, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start in-process servers: ``factory(database_url=None, **config_overrides)``."""
    started: list[RunningServer] = []
    keyring_file = tmp_path / "keyring.json"
    keyring_file.write_text(generate_keyring())
    fix_leaks.REGISTRY.add_keyring(keyring_file.read_text())

    def factory(database_url: str | None = None, **overrides: Any) -> RunningServer:
        env = {
            "ZUMIK_LISTEN": "127.0.0.1:0",
            "ZUMIK_DATABASE_URL": database_url or f"sqlite:///{tmp_path}/var/zumik.db",
            "ZUMIK_TLS_CERT": str(dev_pki.server.cert),
            "ZUMIK_TLS_KEY": str(dev_pki.server.key),
            "ZUMIK_TLS_CLIENT_CA": str(dev_pki.ca_cert),
            "ZUMIK_POLICY_FILE": str(dev_policy_path()),
            "ZUMIK_MASTER_KEYRING_FILE": str(keyring_file),
            "ZUMIK_WORKERS": "8",
            # Every test server exports metrics (a scrape endpoint on a free port and an
            # in-memory reader), so the leak sweep sees every label and exemplar it records.
            "ZUMIK_METRICS_LISTEN": "127.0.0.1:0",
        }
        env.update({k: str(v) for k, v in overrides.items()})
        config = ServerConfig.load(env)
        reader = InMemoryMetricReader()
        runtime = Runtime.open(config, metric_readers=[reader])
        server = ZumikServer(runtime)
        server.start()
        running = RunningServer(server, runtime, dev_pki, f"127.0.0.1:{server.port}")
        running.metric_reader = reader
        started.append(running)
        return running

    yield factory
    for running in started:
        running.close()


@pytest.fixture
def zumik_server(zumik_server_factory: ServerFactory) -> RunningServer:
    """A started server on SQLite with the dev policy."""
    return zumik_server_factory()


@pytest.fixture
def zumik_server_any_backend(zumik_server_factory: ServerFactory, store_url: str) -> RunningServer:
    """A started server, once per storage backend (parametrized by ``backend``)."""
    return zumik_server_factory(store_url)
