"""Noisy neighbour: a victim's Open throughput and p99, alone and beside an attacker, in one run.

Issue 15: no caller can stall others. Runs the real server in a child process (this script with
``--serve``; the dev policy, a throwaway dev PKI and keyring, SQLite in a temp dir or the
PostgreSQL URL given), then drives it from this process with grpc.aio:

- the *victim*: the executor identity opening its tenant's secrets (``Open``: a secret-row read,
  AES-GCM, a durable audit event) at ``--concurrency``;
- the *attacker*, at the same time in the second run: a certificate the policy does not name
  flooding denied calls (every one a denial to audit) and holding ``--streams`` idle
  ``Health/Watch`` streams, plus a legitimate identity for its own tenant sending 1 MB
  ``"eyJ"``-shaped resource names and forged page tokens (``--attack-concurrency`` each).

    PYTHONPATH=service:clients/python/src:. .venv/bin/python bench/noisy_neighbour.py \\
        [--concurrency 16] [--seconds 5] [--postgres]

``--postgres`` runs on a scratch database of the local PostgreSQL (made and dropped here).

Prints the victim's calls/s, p50 and p99 alone and under attack, their ratios, and what the
attacker got (status counts). On one machine the attacker also competes for the same CPU, so the
ratio includes that share; the point is that it stays bounded (no starvation, no timeouts).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zumik.secrets.v1 import (
    key_service_pb2,
    key_service_pb2_grpc,
    seal_service_pb2,
    seal_service_pb2_grpc,
)

PROJECT = "tenants/bench/projects/p"
ATTACKER_PROJECT = "tenants/attacker/projects/p"


def serve(workdir: Path, database_url: str) -> None:
    """Child: run the server, write its port, claims and certificates to ``ready.json``."""
    from zumik_secrets.cli.dev_pki import generate_dev_pki, issue_client_cert
    from zumik_secrets.core.keyring import generate_keyring
    from zumik_secrets.server.config import ServerConfig, dev_policy_path
    from zumik_secrets.server.grpc_server import ZumikServer
    from zumik_secrets.server.runtime import Runtime

    pki = generate_dev_pki(workdir / "pki")
    stranger = issue_client_cert(
        pki.directory, "stranger", "spiffe://zumik.local/svc/stranger", out_dir=workdir / "s"
    )
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
    server = ZumikServer(runtime)
    server.start()
    now = int(time.time())
    signer = runtime.claim_keys.signer
    mint = signer.mint
    ready = {
        "port": server.port,
        "seal_claim": mint("bench", "p", "bench", ("secrets.seal",), now, 300)[0],
        "open_claim": mint("bench", "p", "bench", ("secrets.open",), now, 300)[0],
        "attacker_claim": mint("attacker", "p", "x", ("secrets.read",), now, 300)[0],
        "workers": config.workers,
        "backend": runtime.store.backend,
        "ca": str(pki.ca_cert),
        "console": [str(pki.client("console").cert), str(pki.client("console").key)],
        "executor": [str(pki.client("executor").cert), str(pki.client("executor").key)],
        "stranger": [str(stranger.cert), str(stranger.key)],
    }
    (workdir / "ready.tmp").write_text(json.dumps(ready))
    (workdir / "ready.tmp").rename(workdir / "ready.json")
    server.wait()


def _channel(ready: dict[str, Any], role: str, claim: str, index: int) -> grpc.aio.Channel:
    cert, key = ready[role]
    creds = grpc.ssl_channel_credentials(
        Path(ready["ca"]).read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes()
    )
    if claim:
        call_creds = grpc.metadata_call_credentials(
            lambda _ctx, cb: cb((("zumik-claim", claim),), None)
        )
        creds = grpc.composite_channel_credentials(creds, call_creds)
    return grpc.aio.secure_channel(
        f"localhost:{ready['port']}",
        creds,
        options=[("grpc.channel_id", index), ("grpc.max_send_message_length", 8 << 20)],
    )


async def _victim(
    stubs: list[Any], names: list[str], concurrency: int, seconds: float
) -> tuple[float, list[float], Counter[str]]:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await stubs[i % len(stubs)].Open(
                    seal_service_pb2.OpenRequest(name=names[(i + n) % len(names)]), timeout=1.0
                )
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as err:
                failures[err.code().name] += 1
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return len(latencies) / (time.perf_counter() - began), latencies, failures


async def _attacker(
    ready: dict[str, Any], concurrency: int, streams: int, stop: asyncio.Event
) -> Counter[str]:
    codes: Counter[str] = Counter()
    stranger = _channel(ready, "stranger", "", 100)
    keys = key_service_pb2_grpc.KeyServiceStub(stranger)
    health = health_pb2_grpc.HealthStub(stranger)
    own = seal_service_pb2_grpc.SealServiceStub(
        _channel(ready, "console", ready["attacker_claim"], 101)
    )
    watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(streams)]
    huge_name = "eyJ" * 350_000  # about 1 MB
    forged = base64.urlsafe_b64encode(bytes([1]) + (2**63 + 5).to_bytes(9, "big")[1:] + bytes(8))
    forged_token = forged.decode().rstrip("=")

    async def loop(call: Any) -> None:
        while not stop.is_set():
            try:
                await call()
                codes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                codes[err.code().name] += 1

    async def denied() -> Any:
        return await keys.ListSigningKeys(key_service_pb2.ListSigningKeysRequest(), timeout=5)

    async def eyj() -> Any:
        return await own.GetSecret(seal_service_pb2.GetSecretRequest(name=huge_name), timeout=5)

    async def token() -> Any:
        return await own.ListSecrets(
            seal_service_pb2.ListSecretsRequest(parent=ATTACKER_PROJECT, page_token=forged_token),
            timeout=5,
        )

    tasks = [
        asyncio.create_task(loop(fn)) for fn in (denied, eyj, token) for _ in range(concurrency)
    ]
    await stop.wait()
    for task in tasks:
        await task
    for watch in watches:
        watch.cancel()
    await stranger.close(None)
    return codes


def _summary(rate: float, latencies: list[float]) -> tuple[float, float, float]:
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return rate, float("nan"), float("nan")
    return rate, statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


async def load(ready: dict[str, Any], args: argparse.Namespace) -> None:
    seal = seal_service_pb2_grpc.SealServiceStub(_channel(ready, "console", ready["seal_claim"], 0))
    victims = [
        seal_service_pb2_grpc.SealServiceStub(_channel(ready, "executor", ready["open_claim"], i))
        for i in range(4)
    ]
    names = []
    for i in range(64):
        answer = await seal.Seal(
            seal_service_pb2.SealRequest(parent=PROJECT, plaintext=os.urandom(64) + bytes([i])),
            timeout=10,
        )
        names.append(answer.secret.name)
    print(
        f"server: {ready['backend']}, {ready['workers']} worker threads, 1 process; victim: "
        f"executor Open at c={args.concurrency}, 1 s deadline; attacker: {args.streams} idle "
        f"Watch streams + {args.attack_concurrency} x (denied flood, 1 MB eyJ names, forged "
        f"page tokens); {args.seconds:.0f} s per run"
    )
    await _victim(victims, names, args.concurrency, 1.0)  # warm-up
    alone = await _victim(victims, names, args.concurrency, args.seconds)
    stop = asyncio.Event()
    attacker = asyncio.create_task(_attacker(ready, args.attack_concurrency, args.streams, stop))
    await asyncio.sleep(0.5)  # the streams are open, the floods running
    beside = await _victim(victims, names, args.concurrency, args.seconds)
    stop.set()
    codes = await attacker
    a_rate, a_p50, a_p99 = _summary(alone[0], alone[1])
    b_rate, b_p50, b_p99 = _summary(beside[0], beside[1])
    print(
        f"victim alone:        {a_rate:8.0f} calls/s  p50 {a_p50:6.2f} ms  p99 {a_p99:6.2f} ms"
        f"  failures {dict(alone[2]) or 0}"
    )
    print(
        f"victim beside attack:{b_rate:8.0f} calls/s  p50 {b_p50:6.2f} ms  p99 {b_p99:6.2f} ms"
        f"  failures {dict(beside[2]) or 0}"
    )
    print(
        f"ratio (under attack / alone): throughput {b_rate / a_rate:.2f}, p99 {b_p99 / a_p99:.2f}"
    )
    print(f"attacker statuses: {dict(codes)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--attack-concurrency", type=int, default=4)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--database-url", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--postgres", action="store_true", help="a scratch PostgreSQL database (default: SQLite)"
    )
    args = parser.parse_args()
    if args.postgres and not args.serve:
        from bench.harness import create_scratch_db, drop_scratch_db

        args.database_url = create_scratch_db("zumik_bench_noisy")
        try:
            args.postgres = False
            return _run(args)
        finally:
            drop_scratch_db("zumik_bench_noisy")
    if args.serve:
        serve(Path(args.serve), args.database_url)
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
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
