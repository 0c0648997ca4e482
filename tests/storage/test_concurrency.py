"""Thread safety: the threaded gRPC server calls one store from many threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.storage.data import api_key, at, session
from zumik_secrets.storage.factory import open_store

REPO = Path(__file__).resolve().parents[2]


def test_many_threads_insert_and_read(store):
    threads, per_thread = 12, 20

    def work(i):
        mine = []
        for _ in range(per_thread):
            rec = store.api_keys.insert(api_key(f"t{i}"))
            assert store.api_keys.get_by_id(rec.key_id) == rec
            ses = store.sessions.insert(session(f"t{i}"))
            assert store.sessions.get_by_token_hash(ses.token_hash) == ses
            store.api_keys.record_last_used({rec.key_id: at(i)})
            mine.append(rec)
        return mine

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(work, range(threads)))

    seqs = [r.seq for rs in results for r in rs]
    assert len(seqs) == len(set(seqs)) == threads * per_thread
    for i, recs in enumerate(results):
        listed = store.api_keys.list(
            f"t{i}", "web", page_size=100, after_seq=None, include_revoked=True
        )
        assert [r.key_id for r in listed] == [r.key_id for r in recs]


def test_concurrent_revokes_record_exactly_one_change(store):
    rec = store.api_keys.insert(api_key())
    before = store.changes.latest_seq()
    barrier = threading.Barrier(8)

    def revoke(i):
        barrier.wait()
        return store.api_keys.revoke("acme", "web", rec.key_id, at(i))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(revoke, range(8)))
    assert len({r.revoke_time for r in results}) == 1
    assert len(store.changes.since(before)) == 1


def test_change_seqs_are_gapless_in_commit_order_under_concurrency(store):
    keys = [store.api_keys.insert(api_key()) for _ in range(40)]
    before = store.changes.latest_seq()
    seen: list[int] = []
    stop = threading.Event()

    def poller():
        cursor = before
        while True:
            last_round = stop.is_set()
            for ch in store.changes.since(cursor):
                seen.append(ch.seq)
                cursor = ch.seq
            if last_round:
                return

    t = threading.Thread(target=poller)
    t.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.api_keys.revoke("acme", "web", k.key_id, at(1)), keys))
    stop.set()
    t.join()
    final = [c.seq for c in store.changes.since(before)]
    # A poller that follows its cursor never skips a change that committed after a higher seq
    # (on PostgreSQL the advisory lock makes seq order equal commit order).
    assert seen == final
    assert len(final) == 40


_WRITER = """
import sys
from tests.storage.data import api_key
from zumik_secrets.storage.factory import open_store
s = open_store(sys.argv[1])
s.migrate()
for i in range(50):
    rec = s.api_keys.insert(api_key())
    print(rec.key_id, flush=True)
import time
time.sleep(60)
"""


def test_sqlite_acknowledged_writes_survive_kill_9(tmp_path):
    url = f"sqlite:///{tmp_path}/z.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "service"), str(REPO)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, url], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(50)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    s = open_store(url)
    try:
        for key_id in acknowledged:
            assert s.api_keys.get_by_id(key_id) is not None
    finally:
        s.close()
