"""`migrate --status/--dry-run`, `keygen --drop-version` and `signing-keys retire`: what they
refuse and that the read-only modes change nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.storage.factory import open_store

pytestmark = pytest.mark.integration


def _cli(*args: str, url: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    if url:
        env["ZUMIK_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "zumik_secrets.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/zumik.db"
    return str(request.getfixturevalue("fresh_pg_url"))


def test_migrate_status_and_dry_run_change_nothing(empty_url: str) -> None:
    status = _cli("migrate", "--status", url=empty_url)
    assert status.returncode == 3, status.stdout + status.stderr  # pending
    assert "0001 initial" in status.stdout and "pending" in status.stdout
    dry = _cli("migrate", "--dry-run", url=empty_url)
    assert dry.returncode == 0
    assert "-- 0001_initial (expand)" in dry.stdout and "CREATE TABLE" in dry.stdout
    assert _cli("migrate", "--status", url=empty_url).stdout == status.stdout
    assert _cli("migrate", url=empty_url).returncode == 0
    done = _cli("migrate", "--status", url=empty_url)
    assert done.returncode == 0, done.stdout
    assert "0 pending" in done.stdout and "pending\n" not in done.stdout.split("0 pending")[0]
    assert "up to date" in _cli("migrate", "--dry-run", url=empty_url).stdout
    # A version applied by a newer release is shown, not hidden (a rollback's tell-tale).
    store = open_store(empty_url)
    try:
        if store.backend == "sqlite":
            import sqlite3

            with sqlite3.connect(empty_url.removeprefix("sqlite:///")) as conn:
                conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
        else:
            import psycopg

            with psycopg.connect(empty_url, autocommit=True) as conn:
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    finally:
        store.close()
    future = _cli("migrate", "--status", url=empty_url)
    assert "0999 (unknown to this release)" in future.stdout


def test_migrate_status_and_dry_run_are_exclusive(tmp_path: Path) -> None:
    both = _cli("migrate", "--status", "--dry-run", url=f"sqlite:///{tmp_path}/z.db")
    assert both.returncode == 2
    assert "not allowed with" in both.stderr


def test_drop_version_refuses_the_primary_an_active_and_an_unknown_version(
    tmp_path: Path,
) -> None:
    keyring = tmp_path / "keyring.json"
    keyring.write_text(generate_keyring())
    url = f"sqlite:///{tmp_path}/zumik.db"
    assert _cli("keygen", "--add-version", "--out", str(keyring)).returncode == 0
    text = keyring.read_text()
    for version, why in (("2", "retired"), ("1", "retired"), ("7", "retired")):
        r = _cli("keygen", "--drop-version", version, "--out", str(keyring), url=url)
        assert r.returncode == 2, r.stdout + r.stderr
        assert why in r.stderr
        assert keyring.read_text() == text  # unchanged
    assert _cli("keygen", "--retire", "1", "--out", str(keyring)).returncode == 0
    # Nothing in this (empty) database is wrapped under version 1: it can go.
    assert _cli("migrate", url=url).returncode == 0
    r = _cli("keygen", "--drop-version", "1", "--out", str(keyring), url=url)
    assert r.returncode == 0, r.stdout + r.stderr
    ring = MasterKeyring.from_text(keyring.read_text())
    assert list(ring.fingerprints()) == [2] and ring.primary == 2
    assert (keyring.stat().st_mode & 0o777) == 0o600  # written like every keyring change


def test_signing_keys_retire_refuses_the_active_key(tmp_path: Path) -> None:
    from zumik_secrets.app.signing_keys import SigningKeys

    url = f"sqlite:///{tmp_path}/zumik.db"
    store = open_store(url)
    try:
        store.migrate()
        keys = SigningKeys(
            store.signing_keys,
            MasterKeyring.from_text(generate_keyring()),
            purpose="claims",
            audience="zumik-secrets",
        )
        keys.load()
        active = next(r.kid for r in store.signing_keys.list("claims") if r.state == "active")
    finally:
        store.close()
    r = _cli("signing-keys", "retire", active, url=url)
    assert r.returncode == 2 and "rotate first" in r.stderr
    assert _cli("signing-keys", "retire", "nope", url=url).returncode == 2
    listed = _cli("signing-keys", "list", url=url)
    assert f"{active}\tactive" in listed.stdout
