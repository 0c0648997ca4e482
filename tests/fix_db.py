"""Database fixtures: a ``store`` parametrized over SQLite and PostgreSQL, and ``pg_url``.

PostgreSQL is found, in order:

1. ``ZUMIK_TEST_DATABASE_URL`` (a server URL; a throwaway database is created on it);
2. ``postgresql://postgres@127.0.0.1:5432/postgres`` if it answers;
3. a throwaway cluster made with ``initdb``/``pg_ctl`` (from PATH or /usr/lib/postgresql/*/bin)
   in a temp dir on a free port, stopped at the end of the session.

If none works, PostgreSQL tests are skipped with the reason. Each session creates a database
``zumik_test_<random>`` (dropped at the end); tables are truncated before each test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

BACKENDS = ("sqlite", "postgresql")
_TABLES = (
    "tenant_settings",
    "signing_keys",
    "api_keys",
    "sessions",
    "changes",
    "data_keys",
    "sealed_secrets",
    "customer_keys",
    "audit_events",
    "audit_heads",
    "audit_checkpoints",
    "audit_outbox",
    "fingerprint_key_schedule",
    "handles",
    "purge_jobs",
    "purge_receipts",
    "break_glass_grants",
)
_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class _PgServer:
    """Where the test PostgreSQL server is, or why there is none."""

    admin_url: str | None = None
    source: str = ""
    skip_reason: str = ""
    cleanup: list[str] = field(default_factory=list)  # what to undo, for the summary


_state: dict[str, object] = {"pg_source": None, "pg_skip": None}
_outcomes: dict[str, Counter[str]] = {b: Counter() for b in BACKENDS}


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


def _answers(url: str, timeout: int = 2) -> str | None:
    """None if a connection works, else a one-line reason."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _start_throwaway_cluster(server: _PgServer) -> str | None:
    """Start a private cluster; returns the failure reason, or None on success."""
    initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        return "initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin"
    prefix: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root: run the cluster as the postgres system user.
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run initdb as"
        if not runuser:
            return "running as root and no runuser to run initdb as 'postgres'"
        prefix = [runuser, "-u", "postgres", "--"]
    tmp = tempfile.mkdtemp(prefix="zumik-pg-")
    if prefix:
        shutil.chown(tmp, user="postgres")
    data = os.path.join(tmp, "data")
    port = _free_port()
    try:
        subprocess.run(
            [
                *prefix,
                initdb,
                "-D",
                data,
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
        subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                data,
                "-l",
                os.path.join(tmp, "log"),
                "-w",
                "-t",
                "30",
                "-o",
                f"-p {port} -c listen_addresses=127.0.0.1 -k {tmp} -F",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return f"throwaway cluster failed to start: {exc}"
    server.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    server.source = f"throwaway cluster ({initdb}) on 127.0.0.1:{port}"
    server.cleanup = [*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop", "::", tmp]
    return None


def _stop_throwaway_cluster(server: _PgServer) -> None:
    if not server.cleanup:
        return
    sep = server.cleanup.index("::")
    cmd, tmp = server.cleanup[:sep], server.cleanup[sep + 1]
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(cmd, check=False, capture_output=True, timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[_PgServer]:
    """The PostgreSQL server for this session (see the module docstring for the search order)."""
    server = _PgServer()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        server.skip_reason = "psycopg is not installed"
    else:
        env_url = os.environ.get("ZUMIK_TEST_DATABASE_URL")
        if env_url:
            reason = _answers(env_url, timeout=5)
            if reason is None:
                server.admin_url, server.source = env_url, "ZUMIK_TEST_DATABASE_URL"
            else:
                server.skip_reason = f"ZUMIK_TEST_DATABASE_URL does not answer: {reason}"
        elif _answers(_DEFAULT_URL) is None:
            server.admin_url, server.source = _DEFAULT_URL, "127.0.0.1:5432 (user postgres)"
        else:
            failure = _start_throwaway_cluster(server)
            if failure:
                server.skip_reason = (
                    "no PostgreSQL: ZUMIK_TEST_DATABASE_URL unset, 127.0.0.1:5432 not answering, "
                    + failure
                )
    _state["pg_source"] = server.source or None
    _state["pg_skip"] = server.skip_reason or None
    try:
        yield server
    finally:
        _stop_throwaway_cluster(server)


@contextlib.contextmanager
def _scratch_database(admin_url: str) -> Iterator[str]:
    """CREATE DATABASE zumik_test_<random>; yields its URL; drops it afterwards."""
    import psycopg

    name = f"zumik_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(pg_server: _PgServer) -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this session (dropped at the end)."""
    if pg_server.admin_url is None:
        pytest.skip(pg_server.skip_reason)
    from zumik_secrets.storage.postgres.store import PgStore

    with _scratch_database(pg_server.admin_url) as url:
        store = PgStore(url, max_size=2)
        try:
            store.migrate()
        finally:
            store.close()
        yield url


@pytest.fixture
def fresh_pg_url(pg_server: _PgServer) -> Iterator[str]:
    """URL of an empty (unmigrated) PostgreSQL database, dropped after the test."""
    if pg_server.admin_url is None:
        pytest.skip(pg_server.skip_reason)
    with _scratch_database(pg_server.admin_url) as url:
        yield url


def truncate_tables(url: str) -> None:
    """Empty every table of a scratch database (rows wrapped under another test's keyring too)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY")


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name; a test taking ``store`` runs once per backend."""
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a migrated, empty store of ``backend`` (share it to open a second instance)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/var/zumik.db"
    url = str(request.getfixturevalue("pg_url"))
    truncate_tables(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[object]:
    """A migrated, empty :class:`~zumik_secrets.storage.ports.Store`, closed afterwards."""
    from zumik_secrets.storage.factory import open_store

    s = open_store(store_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


# ------------------------------------------------------------------------------ reporting


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count storage outcomes per backend from the test ids (``test_x[sqlite]``)."""
    if "[" not in report.nodeid or "tests/storage/" not in report.nodeid.replace("\\", "/"):
        return
    ids = report.nodeid.rsplit("[", 1)[1].rstrip("]").split("-")
    backend = next((b for b in BACKENDS if b in ids), None)
    if backend is None:
        return
    if report.when == "call":
        _outcomes[backend][report.outcome] += 1
    elif report.outcome != "passed":  # skipped or errored in setup/teardown
        _outcomes[backend]["skipped" if report.skipped else "error"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which backends the storage conformance suite actually ran on."""
    if not any(_outcomes[b] for b in BACKENDS):
        return
    parts = []
    for b in BACKENDS:
        counts = _outcomes[b]
        text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "not run"
        parts.append(f"{b}={text}")
    line = "storage conformance: " + "; ".join(parts)
    if _state["pg_source"]:
        line += f" (postgresql from {_state['pg_source']})"
    elif _state["pg_skip"]:
        line += f" (postgresql skipped: {_state['pg_skip']})"
    terminalreporter.write_sep("-", "storage backends")
    terminalreporter.write_line(line)


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; returns the last result."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)
