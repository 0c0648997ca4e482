"""A database that is down, locked or closed fails fast with Unavailable."""

from __future__ import annotations

import socket
import sqlite3
import time

import pytest

from tests.storage.data import api_key
from zumik_secrets.core import errors
from zumik_secrets.storage.factory import open_store


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the with block ends


def test_unreachable_postgres_is_unavailable_quickly():
    url = f"postgresql://postgres:hunter2@127.0.0.1:{_closed_port()}/zumik"
    t0 = time.monotonic()
    store = open_store(url)  # opening does not wait for the database
    try:
        assert time.monotonic() - t0 < 1.0
        for call in (store.check_ready, store.changes.latest_seq):
            t1 = time.monotonic()
            with pytest.raises(errors.Unavailable) as info:
                call()
            assert time.monotonic() - t1 < 5.0
            assert info.value.reason == "STORAGE_UNAVAILABLE"
            assert "hunter2" not in str(info.value)
        assert store.changes.listen(lambda: None) is not None  # keeps retrying, never blocks
    finally:
        store.close()
    assert time.monotonic() - t0 < 15.0


def test_locked_sqlite_is_unavailable_after_busy_timeout(tmp_path):
    path = tmp_path / "z.db"
    store = open_store(f"sqlite:///{path}", busy_timeout_ms=100)
    store.migrate()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        with pytest.raises(errors.Unavailable) as info:
            store.api_keys.insert(api_key())
        assert time.monotonic() - t0 < 2.0
        assert info.value.reason == "STORAGE_UNAVAILABLE"
        assert (
            store.api_keys.list("acme", "web", page_size=5, after_seq=None, include_revoked=True)
            == []
        )  # WAL: reads still work
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.close()


def test_closed_store_is_unavailable(store):
    store.close()
    store.close()  # idempotent
    with pytest.raises(errors.Unavailable):
        store.check_ready()
    with pytest.raises(errors.Unavailable):
        store.api_keys.get_by_id("key_x")


def test_check_ready_succeeds(store):
    store.check_ready()
    assert store.backend in ("sqlite", "postgresql")
