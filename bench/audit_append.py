"""Durable audit-append throughput, with and without group commit, on SQLite and PostgreSQL.

In-process (no gRPC): threads call ``AuditLog.record(entry, durable=True)`` for a fixed time
against a fresh store, and the table shows events per second and per-call latency. "group" runs
the writer thread (many events per transaction); "direct" writes one event per transaction in
the caller's thread, which is what durability costs without group commit.

    .venv/bin/python -m bench.audit_append [--seconds 3] [--threads 1,8,32]
        [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres] [--no-pg]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.storage.factory import open_store

_KEYRING = MasterKeyring.from_text(generate_keyring())


def _entry(i: int, tenant: str) -> AuditEntry:
    return AuditEntry(
        tenant_id=tenant,
        actor="spiffe://zumik.local/svc/executor",
        actor_subject="key_0123456789abcdefABCDEF",
        action="secret.open",
        target=f"tenants/{tenant}/projects/web/secrets/sec_{i:022d}",
        outcome="success",
        reason="OK",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        attributes={"purpose": "llm", "dek_version": "3"},
    )


@contextmanager
def _pg_database(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"zumik_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_one(url: str, *, group: bool, threads: int, seconds: float) -> tuple[float, float, float]:
    """Events per second, median and p99 latency (ms) of durable records."""
    store = (
        open_store(url, max_size=max(4, threads + 2))
        if url.startswith("postgres")
        else (open_store(url))
    )
    store.migrate()
    keys = CheckpointKeys(store.signing_keys, _KEYRING)
    keys.load()
    log = AuditLog(store.audit, keys, group_commit=group, checkpoint_interval=3600)
    log.start()
    tenants = [f"t{n}" for n in range(4)]
    stop = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def work(n: int) -> None:
        mine = latencies[n]
        i = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            log.record(_entry(i, tenants[(n + i) % len(tenants)]), durable=True)
            mine.append(time.perf_counter() - started)
            i += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    began = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - began
    log.stop()
    all_lat = sorted(x for lat in latencies for x in lat)
    for tenant in tenants:
        assert log.reader.verify(tenant).ok
    store.close()
    rate = len(all_lat) / elapsed
    p50 = statistics.median(all_lat) * 1000
    p99 = all_lat[int(len(all_lat) * 0.99) - 1] * 1000
    return rate, p50, p99


def main() -> None:
    """Run the matrix and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", default="1,8,32")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    rows: list[tuple[str, str, int, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        backends: list[tuple[str, str]] = []
        backends.append(("sqlite", f"sqlite:///{Path(tmp)}/bench.db"))
        pg_ctx = None if args.no_pg else _pg_database(args.pg_admin_url)
        if pg_ctx is not None:
            backends.append(("postgresql", pg_ctx.__enter__()))
        try:
            for name, base_url in backends:
                for group in (False, True):
                    for threads in thread_counts:
                        url = base_url
                        if name == "sqlite":  # a fresh file per run
                            url = f"sqlite:///{Path(tmp)}/bench-{uuid.uuid4().hex[:6]}.db"
                        rate, p50, p99 = run_one(
                            url, group=group, threads=threads, seconds=args.seconds
                        )
                        mode = "group" if group else "direct"
                        rows.append((name, mode, threads, rate, p50, p99))
                        print(
                            f"{name:<11} {mode:<7} {threads:>3} threads: {rate:>8.0f} ev/s"
                            f"  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms",
                            flush=True,
                        )
        finally:
            if pg_ctx is not None:
                pg_ctx.__exit__(None, None, None)
    print()
    print("| backend | commit | threads | durable events/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name, mode, threads, rate, p50, p99 in rows:
        print(f"| {name} | {mode} | {threads} | {rate:.0f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
