"""Test PKI fixtures: the dev PKI, a rogue CA and an unlisted ("stranger") identity.

Loaded as a pytest plugin: ``tests/conftest.py`` must list ``"tests.fix_pki"`` in
``pytest_plugins``. All fixtures are session-scoped (key generation is cheap, but there is no reason
to repeat it) and write under pytest's temporary directory. Treat the files as read-only; a test
that rotates certificates copies the directory first (see ``pki_copy``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zumik_secrets.cli.dev_pki import (
    CertPair,
    DevPki,
    generate_dev_pki,
    issue_client_cert,
)

TRUST_DOMAIN = "zumik.local"
STRANGER_SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/svc/stranger"


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The dev PKI: CA, server and one client per default role, trust domain zumik.local."""
    return generate_dev_pki(tmp_path_factory.mktemp("pki") / "dev", trust_domain=TRUST_DOMAIN)


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A complete PKI from a *different* CA with the same trust domain and role names.

    ``rogue_pki.client("console")`` carries the valid-looking ``spiffe://zumik.local/svc/console``
    but does not chain to ``dev_pki.ca_cert``: the server must refuse it during the handshake.
    ``rogue_pki.server`` likewise lets a test check that clients refuse a server of another CA.
    """
    return generate_dev_pki(tmp_path_factory.mktemp("pki") / "rogue", trust_domain=TRUST_DOMAIN)


@pytest.fixture(scope="session")
def stranger_cert(dev_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    """A certificate from the real CA for ``spiffe://zumik.local/svc/stranger``, in no policy.

    It passes the TLS handshake; authorization must then refuse it (PERMISSION_DENIED).
    Written to its own directory so ``dev_pki.directory`` keeps exactly the default roles.
    """
    out = tmp_path_factory.mktemp("pki") / "stranger"
    return issue_client_cert(dev_pki.directory, "stranger", STRANGER_SPIFFE_ID, out_dir=out)


@pytest.fixture
def pki_copy(dev_pki: DevPki, tmp_path: Path) -> DevPki:
    """A private copy of the dev PKI for tests that modify files (certificate rotation)."""
    target = tmp_path / "pki"
    shutil.copytree(dev_pki.directory, target)
    return generate_dev_pki(target, trust_domain=dev_pki.trust_domain, roles=dev_pki.clients)
