"""Migrations: idempotent, and safe when several processes start at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from zumik_secrets.storage.factory import open_store

REPO = Path(__file__).resolve().parents[2]
# Every migration shipped (both backends ship the same numbers): a fresh store applies them all.
ALL = [
    m.version
    for m in __import__(
        "zumik_secrets.storage._common", fromlist=["load_migrations"]
    ).load_migrations("zumik_secrets.storage.sqlite")
]


def _versions(store):
    return [
        m.version
        for m in __import__(
            "zumik_secrets.storage._common", fromlist=["load_migrations"]
        ).load_migrations(
            f"zumik_secrets.storage.{'sqlite' if store.backend == 'sqlite' else 'postgres'}"
        )
    ]


def test_migrate_twice_is_a_no_op(store):
    assert _versions(store) == ALL
    assert store.migrate() == []  # the fixture already migrated
    assert store.migrate() == []
    store.check_ready()


def test_fresh_sqlite_migrates_once(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/deep/dir/z.db")
    try:
        assert s.migrate() == ALL
        assert s.migrate() == []
    finally:
        s.close()
    s = open_store(f"sqlite:///{tmp_path}/deep/dir/z.db")
    try:
        assert s.migrate() == []  # recorded in the file, not in memory
    finally:
        s.close()


def _race_threads(url: str, n: int = 4) -> list[list[int]]:
    stores = [open_store(url) for _ in range(n)]
    results: list[list[int]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(s):
        barrier.wait()
        try:
            results.append(s.migrate())
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert not failures, failures
    return results


def test_concurrent_sqlite_migrations_from_threads(tmp_path):
    results = _race_threads(f"sqlite:///{tmp_path}/z.db")
    assert sorted(results) == [[], [], [], ALL]


@pytest.mark.postgres
def test_concurrent_pg_migrations_from_threads(fresh_pg_url):
    results = _race_threads(fresh_pg_url)
    assert sorted(results) == [[], [], [], ALL]


_CHILD = """
import sys, time
from zumik_secrets.storage.factory import open_store
s = open_store(sys.argv[1])
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
print(s.migrate())
s.close()
"""


def _race_processes(url: str, n: int = 3) -> list[str]:
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "service"), str(REPO)])}
    start = str(time.time() + 1.5)  # all children have imported and connected by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, start],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return sorted(outs)


@pytest.mark.postgres
def test_concurrent_pg_migrations_from_processes(fresh_pg_url):
    assert _race_processes(fresh_pg_url) == [str(ALL), "[]", "[]"]


def test_concurrent_sqlite_migrations_from_processes(tmp_path):
    assert _race_processes(f"sqlite:///{tmp_path}/z.db") == [str(ALL), "[]", "[]"]
