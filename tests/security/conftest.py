"""Fixtures and reporting of the hardening suite (attack matrix, fuzzing, faults)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fix_leaks
from tests.fix_server import RunningServer
from zumik_secrets.cli.dev_pki import DevPki, issue_client_cert
from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.config import ServerConfig, dev_policy_path
from zumik_secrets.server.grpc_server import ZumikServer
from zumik_secrets.server.runtime import Runtime


def dev_policy() -> Policy:
    """The packaged development policy, as the server parses it."""
    return Policy.from_mapping(tomllib.loads(dev_policy_path().read_text(encoding="utf-8")))


def role_of(identity: str) -> str:
    """`spiffe://zumik.local/svc/console` -> `console`."""
    return identity.rsplit("/", 1)[-1]


def start_server(pki: DevPki, directory: Path, **overrides: Any) -> RunningServer:
    """An in-process server on SQLite under ``directory`` (closed by the caller)."""
    directory.mkdir(parents=True, exist_ok=True)
    keyring_file = directory / "keyring.json"
    if not keyring_file.exists():
        keyring_file.write_text(generate_keyring())
    fix_leaks.REGISTRY.add_keyring(keyring_file.read_text())
    env = {
        "ZUMIK_LISTEN": "127.0.0.1:0",
        "ZUMIK_DATABASE_URL": f"sqlite:///{directory}/zumik.db",
        "ZUMIK_TLS_CERT": str(pki.server.cert),
        "ZUMIK_TLS_KEY": str(pki.server.key),
        "ZUMIK_TLS_CLIENT_CA": str(pki.ca_cert),
        "ZUMIK_POLICY_FILE": str(dev_policy_path()),
        "ZUMIK_MASTER_KEYRING_FILE": str(keyring_file),
        "ZUMIK_WORKERS": "8",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    runtime = Runtime.open(ServerConfig.load(env))
    try:
        server = ZumikServer(runtime)
    except BaseException:
        runtime.close()
        raise
    server.start()
    return RunningServer(server, runtime, pki, f"127.0.0.1:{server.port}")


@pytest.fixture(scope="session")
def policy_pki(dev_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The dev PKI plus a certificate for every identity the dev policy names."""
    missing = [
        identity for identity in dev_policy().identities if role_of(identity) not in dev_pki.clients
    ]
    if not missing:
        return dev_pki
    out = tmp_path_factory.mktemp("policy-pki")
    clients = dict(dev_pki.clients)
    for identity in missing:
        clients[role_of(identity)] = issue_client_cert(
            dev_pki.directory, role_of(identity), identity, out_dir=out
        )
    return DevPki(
        dev_pki.directory,
        dev_pki.trust_domain,
        dev_pki.ca_cert,
        dev_pki.ca_key,
        dev_pki.server,
        clients,
    )


@pytest.fixture(scope="module")
def module_server(
    policy_pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server for a whole test module (the matrix and fuzz modules make many calls)."""
    running = start_server(policy_pki, tmp_path_factory.mktemp("security-server"))
    try:
        yield running
    finally:
        running.close()
