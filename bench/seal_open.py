"""Seal and Open throughput and latency over gRPC with mutual TLS (not part of the test suite).

Runs the real server in a child process (this script with ``--serve``: the threaded grpcio
server, the dev policy, a throwaway dev PKI and keyring, SQLite in a temp dir or the PostgreSQL
URL given), then drives it from this process with grpc.aio (the leanest Python client here) at
each concurrency, over several channels because port sharing balances connections, not calls.

    PYTHONPATH=service:clients/python/src .venv/bin/python bench/seal_open.py \
        [--concurrency 16 64] [--seconds 5] [--size 256] [--database-url postgresql://...]

Prints one line per (operation, concurrency): calls/s, p50, p99 and max latency in ms, plus the
data-key cache size and TTL the server ran with. Opens hit a warm data-key cache (the hot path:
one secret-row read, one AES-GCM decrypt, one durable audit record); Seals do one insert each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from zumik.secrets.v1 import seal_service_pb2, seal_service_pb2_grpc

PROJECT = "tenants/bench/projects/p"


class _NullAudit:
    """Drops every event: isolates what the durable audit write costs (never in production)."""

    def record(self, entry: object, *, durable: bool = False) -> None:
        return None


def serve(workdir: Path, database_url: str, null_audit: bool = False) -> None:
    """Child: run the server, write its port and claims to ``workdir/ready.json``, block."""
    from zumik_secrets.cli.dev_pki import generate_dev_pki
    from zumik_secrets.core.keyring import generate_keyring
    from zumik_secrets.server.config import ServerConfig, dev_policy_path
    from zumik_secrets.server.grpc_server import ZumikServer
    from zumik_secrets.server.runtime import Runtime

    pki = generate_dev_pki(workdir / "pki")
    keyring = workdir / "keyring.json"
    keyring.write_text(generate_keyring())
    env = {
        "ZUMIK_LISTEN": "127.0.0.1:0",
        "ZUMIK_DATABASE_URL": database_url or f"sqlite:///{workdir}/zumik.db",
        "ZUMIK_TLS_CERT": str(pki.server.cert),
        "ZUMIK_TLS_KEY": str(pki.server.key),
        "ZUMIK_TLS_CLIENT_CA": str(pki.ca_cert),
        "ZUMIK_POLICY_FILE": str(dev_policy_path()),
        "ZUMIK_MASTER_KEYRING_FILE": str(keyring),
    }
    config = ServerConfig.load(env)
    runtime = Runtime.open(config)
    if null_audit:
        runtime.audit = _NullAudit()
        runtime.sealed_secrets._audit = _NullAudit()
    server = ZumikServer(runtime)
    server.start()
    now = int(time.time())
    signer = runtime.claim_keys.signer
    seal_claim, _ = signer.mint(
        "bench", "p", "bench", ("secrets.seal",), now, 300, credential_id="key_bench"
    )
    open_claim, _ = signer.mint(
        "bench", "p", "bench", ("secrets.open",), now, 300, credential_id="key_bench"
    )
    ready = {
        "port": server.port,
        "seal_claim": seal_claim,
        "open_claim": open_claim,
        "cache_entries": runtime.data_keys.cache.max_entries,
        "cache_ttl": runtime.data_keys.cache.ttl,
        "workers": config.workers,
        "backend": runtime.store.backend,
        "ca": str(pki.ca_cert),
        "console": [str(pki.client("console").cert), str(pki.client("console").key)],
        "executor": [str(pki.client("executor").cert), str(pki.client("executor").key)],
    }
    (workdir / "ready.tmp").write_text(json.dumps(ready))
    (workdir / "ready.tmp").rename(workdir / "ready.json")
    server.wait()


def _channel(ready: dict[str, Any], role: str, claim: str, index: int) -> grpc.aio.Channel:
    cert, key = ready[role]
    creds = grpc.ssl_channel_credentials(
        Path(ready["ca"]).read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes()
    )
    call_creds = grpc.metadata_call_credentials(
        lambda _ctx, cb: cb((("zumik-claim", claim),), None)
    )
    return grpc.aio.secure_channel(
        f"localhost:{ready['port']}",
        grpc.composite_channel_credentials(creds, call_creds),
        options=[("grpc.channel_id", index)],  # distinct channels, distinct connections
    )


async def _drive(
    stubs: list[seal_service_pb2_grpc.SealServiceStub],
    make_call: Any,
    concurrency: int,
    seconds: float,
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        stub = stubs[i % len(stubs)]
        n = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await make_call(stub, i, n)
            latencies.append(time.perf_counter() - started)
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return len(latencies) / (time.perf_counter() - began), latencies


def _report(op: str, concurrency: int, rate: float, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{op:<5} c={concurrency:<3} {rate:8.0f} calls/s  p50 {statistics.median(ms):6.2f} ms"
        f"  p99 {p99:6.2f} ms  max {ms[-1]:7.2f} ms  ({len(ms)} calls)"
    )


async def load(ready: dict[str, Any], args: argparse.Namespace) -> None:
    channels = 4
    seal_stubs = [
        seal_service_pb2_grpc.SealServiceStub(_channel(ready, "console", ready["seal_claim"], i))
        for i in range(channels)
    ]
    open_stubs = [
        seal_service_pb2_grpc.SealServiceStub(_channel(ready, "executor", ready["open_claim"], i))
        for i in range(channels)
    ]
    payload = os.urandom(args.size)
    names = []
    for i in range(64):  # secrets to open, round-robin
        answer = await seal_stubs[0].Seal(
            seal_service_pb2.SealRequest(parent=PROJECT, plaintext=payload + bytes([i])), timeout=10
        )
        names.append(answer.secret.name)

    async def do_seal(stub: Any, i: int, n: int) -> None:
        await stub.Seal(seal_service_pb2.SealRequest(parent=PROJECT, plaintext=payload), timeout=10)

    async def do_open(stub: Any, i: int, n: int) -> None:
        answer = await stub.Open(
            seal_service_pb2.OpenRequest(name=names[(i + n) % len(names)]), timeout=10
        )
        assert len(answer.plaintext) == args.size + 1

    print(
        f"server: {ready['backend']}, {ready['workers']} worker threads, 1 process; "
        f"data-key cache {ready['cache_entries']} entries, TTL {ready['cache_ttl']:.0f} s; "
        f"plaintext {args.size} B; {channels} channels per role; {args.seconds:.0f} s per run"
    )
    for concurrency in args.concurrency:
        await _drive(open_stubs, do_open, concurrency, 1.0)  # warm-up
        for op, stubs, call in (("seal", seal_stubs, do_seal), ("open", open_stubs, do_open)):
            rate, latencies = await _drive(stubs, call, concurrency, args.seconds)
            print(_report(op, concurrency, rate, latencies), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=256, help="plaintext bytes")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument(
        "--null-audit",
        action="store_true",
        help="drop audit events (measures the audit write's share; never do this in production)",
    )
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.database_url, args.null_audit)
        return 0
    with tempfile.TemporaryDirectory(prefix="zumik-bench-") as tmp:
        workdir = Path(tmp)
        child = subprocess.Popen(  # this very script, fixed arguments
            [
                sys.executable,
                __file__,
                "--serve",
                str(workdir),
                "--database-url",
                args.database_url,
                *(["--null-audit"] if args.null_audit else []),
            ],
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (workdir / "ready.json").exists():
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.1)
            ready = json.loads((workdir / "ready.json").read_text())
            asyncio.run(load(ready, args))
        finally:
            child.terminate()
            child.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
