"""A rolling upgrade on PostgreSQL: the previous release and this one serve side by side.

The previous release's server is this repository at ``PREVIOUS_RELEASE`` (``git archive`` of
``service/`` and ``clients/python/src``; override with ``ZUMIK_PREVIOUS_RELEASE=<commit>``). The
test does what a rolling update does (docs/operations/upgrade.md):

1. the old release creates and serves the database (its own migrations);
2. while the old server is under load, this release runs ``migrate --status``, ``--dry-run``
   and ``migrate`` (every migration newer than the old release's: the expand step);
3. this release's server starts on the same database next to the old one;
4. both keep serving: keys, secrets and revocations made on either work on the other, and each
   verifies the shared audit chains; no call of the load failed during the migration;
5. rollback: this release's server stops, the old one keeps serving on the newest schema.

It stays generic: it asserts nothing about which migrations are new, only that the old release
works on the newest schema, which is the expand/contract rule every migration must keep. So that
the migration step is never empty, "this release" is this checkout plus one synthetic expand
migration (``PROBE_MIGRATION``: a new table and a new nullable column on the hottest tables, as
a feature would add them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from tests import fix_leaks
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.core.keyring import generate_keyring

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from ops_lib import Client, ServerProcess, cli  # noqa: E402

# Generous: several server and PostgreSQL processes on a shared 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

# The last release: main at the start of the day-two-operations round.
PREVIOUS_RELEASE = os.environ.get("ZUMIK_PREVIOUS_RELEASE", "eb4c308")
SOURCES = ("service", "clients/python/src")
PROBE_VERSION = 9000
PROBE_MIGRATION = """-- An expand migration as a new feature would write it (test_upgrade_mixed.py).
CREATE TABLE upgrade_probe (id BIGINT PRIMARY KEY, note TEXT);
ALTER TABLE api_keys ADD COLUMN upgrade_probe TEXT;
ALTER TABLE audit_events ADD COLUMN upgrade_probe TEXT;
"""
SCOPES = ["secrets.seal", "secrets.open", "secrets.read", "keys.read"]


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's sources, extracted from git."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the previous release comes from git history")
    out = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS_RELEASE, *SOURCES],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if archive.returncode != 0:
        message = f"git archive {PREVIOUS_RELEASE} failed: {archive.stderr.decode()[:300]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(out, filter="data")
    return out


@pytest.fixture(scope="module")
def this_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's sources plus the synthetic expand migration, in both adapters."""
    out = tmp_path_factory.mktemp("this-release")
    for src in SOURCES:
        shutil.copytree(
            REPO / src, out / src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    for backend in ("postgres", "sqlite"):
        migrations = out / "service/zumik_secrets/storage" / backend / "migrations"
        (migrations / f"{PROBE_VERSION}_upgrade_probe.sql").write_text(PROBE_MIGRATION)
    return out


def _old_policy(tree: Path) -> Path:
    """The previous release's own development policy."""
    return tree / "service" / "zumik_secrets" / "server" / "dev_policy.toml"


def _path(tree: Path) -> list[Path]:
    return [tree / "service", tree / "clients/python/src"]


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()
        fix_leaks.add_haystack_file(server.log)


def _code_used(tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in _path(tree))}
    probe = subprocess.run(
        [sys.executable, "-P", "-c", "import zumik_secrets; print(zumik_secrets.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return probe.stdout.strip()


def _load(client: Client, raw_key: str, secret: str, stop: threading.Event) -> list[str]:
    """Verify a key and open a secret in a loop until ``stop``; the failures seen."""
    failures: list[str] = []
    while not stop.is_set():
        result, claim = client.verify(raw_key)
        if result != "VERIFY_RESULT_VALID":
            failures.append(f"verify: {result}")
            continue
        opened = client.open(claim, secret)
        if not isinstance(opened, bytes):
            failures.append(f"open: {opened}")
        time.sleep(0.02)
    return failures


def test_previous_release_and_this_one_serve_one_postgresql_side_by_side(
    previous_release: Path,
    this_release: Path,
    fresh_pg_url: str,
    dev_pki: DevPki,
    tmp_path: Path,
    servers: list[ServerProcess],
) -> None:
    old_path, new_path = _path(previous_release), _path(this_release)
    assert _code_used(previous_release).startswith(str(previous_release))
    assert _code_used(this_release).startswith(str(this_release))
    keyring = tmp_path / "keyring.json"
    keyring.write_text(generate_keyring(), encoding="utf-8")
    fix_leaks.REGISTRY.add_keyring(keyring.read_text())

    # 1. The previous release owns the database.
    # Each release reads its own policy file: the previous release refuses policy sections it
    # does not know (this release's `[break_glass]`), so an upgrade adds them to the shared
    # policy only once every replica runs this release (docs/operations/upgrade.md).
    old_env = {"ZUMIK_POLICY_FILE": str(_old_policy(previous_release))}
    old = ServerProcess(
        dev_pki,
        fresh_pg_url,
        keyring,
        tmp_path / "old.log",
        python_path=old_path,
        extra_env=old_env,
    )
    servers.append(old)
    old.wait_serving()
    via_old = Client(dev_pki, old.target)
    key_old_name, key_old = via_old.create_api_key("acme", "web", SCOPES)
    fix_leaks.REGISTRY.add(key_old, "API key made on the previous release")
    _, claim_old = via_old.verify(key_old)
    fix_leaks.REGISTRY.add(claim_old, "claim of the previous release")
    secret_old = via_old.seal(claim_old, "acme", "web", b"sealed-by-the-previous-release")

    # 2. Migrate to this release's schema while the old server is under load.
    env = {
        "ZUMIK_DATABASE_URL": fresh_pg_url,
        "PYTHONPATH": os.pathsep.join(str(p) for p in new_path),
    }
    status = cli("migrate", "--status", env=env)
    assert status.returncode == 3, status.stdout + status.stderr  # something to apply
    assert f"{PROBE_VERSION:04d} upgrade_probe" in status.stdout
    assert "pending" in status.stdout.split(f"{PROBE_VERSION:04d}")[1].splitlines()[0]
    dry = cli("migrate", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert cli("migrate", "--status", env=env).stdout == status.stdout  # dry run changed nothing
    stop = threading.Event()
    failures: list[str] = []
    load_client = Client(dev_pki, old.target)
    worker = threading.Thread(
        target=lambda: failures.extend(_load(load_client, key_old, secret_old, stop))
    )
    worker.start()
    try:
        time.sleep(0.5)
        migrated = cli("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        after = cli("migrate", "--status", env=env)
        assert after.returncode == 0, after.stdout  # nothing pending for this release
        time.sleep(0.5)

        # 3. This release's server joins on the same database.
        # The upgrade window from the previous release (docs/operations/upgrade.md): its
        # claims name no source credential; this release accepts them only while told to.
        new = ServerProcess(
            dev_pki,
            fresh_pg_url,
            keyring,
            tmp_path / "new.log",
            python_path=new_path,
            extra_env={"ZUMIK_ACCEPT_CLAIMS_WITHOUT_CREDENTIAL": "1"},
        )
        servers.append(new)
        new.wait_serving()
        via_new = Client(dev_pki, new.target)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(timeout=30)
        load_client.close()
    assert failures == [], failures[:5]

    # 4. Both serve, and each sees what the other wrote.
    key_new_name, key_new = via_new.create_api_key("acme", "web", SCOPES)
    fix_leaks.REGISTRY.add(key_new, "API key made on this release")
    for client in (via_old, via_new):
        for raw in (key_old, key_new):
            result, claim = client.verify(raw)
            assert result == "VERIFY_RESULT_VALID", (client.target, result)
            fix_leaks.REGISTRY.add(claim, "claim")
    _, claim_new = via_new.verify(key_new)
    secret_new = via_new.seal(claim_new, "acme", "web", b"sealed-by-this-release")
    assert via_old.open(claim_new, secret_new) == b"sealed-by-this-release"
    assert via_new.open(claim_old, secret_old) == b"sealed-by-the-previous-release"

    # A revocation made on the new server reaches the old one (change feed), and the reverse.
    via_new.revoke(key_old_name)
    via_old.revoke(key_new_name)
    deadline = time.monotonic() + 10
    seen: dict[tuple[str, str], str] = {}
    while time.monotonic() < deadline:
        seen = {
            (client.target, which): client.verify(raw)[0]
            for client in (via_old, via_new)
            for which, raw in (("old", key_old), ("new", key_new))
        }
        if set(seen.values()) == {"VERIFY_RESULT_REVOKED"}:
            break
        time.sleep(0.2)
    assert set(seen.values()) == {"VERIFY_RESULT_REVOKED"}, seen

    # Audit events from both releases form one chain that both verify.
    for client in (via_old, via_new):
        chain = client.verify_chain("acme")
        assert chain.ok, (client.target, chain)
        assert chain.checked_count >= 6

    # 5. Rollback: the new server goes away; the old one keeps serving on the newest schema.
    new.stop()
    key_back_name, key_back = via_old.create_api_key("acme", "web", SCOPES)
    fix_leaks.REGISTRY.add(key_back, "API key made after the rollback")
    result, claim_back = via_old.verify(key_back)
    assert result == "VERIFY_RESULT_VALID"
    fix_leaks.REGISTRY.add(claim_back, "claim after the rollback")
    assert via_old.open(claim_back, secret_new) == b"sealed-by-this-release"
    assert via_old.verify_chain("acme").ok
    assert key_back_name.startswith("tenants/acme/projects/web/apiKeys/")
    via_old.close()
    via_new.close()
    # A fresh pod of the previous release starts on the newest schema (its own migrate finds
    # nothing of its own to apply and leaves the newer versions alone).
    old.stop()
    again = ServerProcess(
        dev_pki,
        fresh_pg_url,
        keyring,
        tmp_path / "old-again.log",
        python_path=old_path,
        extra_env=old_env,
    )
    servers.append(again)
    again.wait_serving()
    restarted = Client(dev_pki, again.target)
    result, claim_again = restarted.verify(key_back)
    assert result == "VERIFY_RESULT_VALID"
    fix_leaks.REGISTRY.add(claim_again, "claim from the restarted previous release")
    assert restarted.open(claim_again, secret_old) == b"sealed-by-the-previous-release"
    restarted.close()
    final = cli("migrate", "--status", env=env)
    assert final.returncode == 0 and f"{PROBE_VERSION:04d} upgrade_probe" in final.stdout
