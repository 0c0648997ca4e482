"""Gateway verification cache: cached vs uncached verifies per client core, and the
revocation delay through the cache (not a test).

Real servers (``zumik-secrets serve`` processes, mTLS, the bench policy) on each backend: two
processes over one database (SQLite file or a scratch PostgreSQL database), A serving the
gateway's verifier and its revocation feed, B where keys are created and revoked, so a
revocation crosses replicas as it does in production.

- **Uncached**: ``VerifyApiKey`` over one channel from ``--threads`` client threads for
  ``--seconds``; verifies per second (wall) and per client CPU-second.
- **Cached**: :class:`zumik_secrets_client.CachingVerifier` over the same keys (all hits) in one
  thread; verifies per client CPU-second (the loop is CPU-bound, so wall ~ CPU).
- **Revocation delay**: ``--revocations`` times, create a key on B, verify it twice through the
  cache on A (the second from memory), revoke it on B, and poll the cache until it stops
  answering VALID; the delay runs from the start of the revoke call. p50 / p99 / max.

    .venv/bin/python -m bench.gateway_cache [--backends sqlite postgresql] [--seconds 5]
        [--revocations 120] [--output bench/results/gateway_cache.json]

The JSON holds, per backend, ``uncached`` / ``cached`` (``per_s``, ``per_client_cpu_s``), the
``ratio_per_client_core`` (cached per client CPU-second over uncached per client CPU-second;
target >= 100) and ``revocation_ms`` (``p50``, ``p99``, ``max``, ``n``; target p99 <= 1000).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zumik.secrets.v1 import common_pb2, key_service_pb2, key_service_pb2_grpc

from bench.harness import (
    REPO,
    BenchEnv,
    ServerGroup,
    create_scratch_db,
    drop_scratch_db,
    pg_available,
)
from zumik_secrets_client import CachingVerifier

PARENT = "tenants/bench/projects/gateway"
VALID = common_pb2.VERIFY_RESULT_VALID
DEFAULT_OUTPUT = REPO / "bench" / "results" / "gateway_cache.json"


def _cpu() -> float:
    return time.process_time()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _keys(stub: key_service_pb2_grpc.KeyServiceStub, n: int) -> list[str]:
    return [
        stub.CreateApiKey(
            key_service_pb2.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]), timeout=10
        ).raw_key
        for _ in range(n)
    ]


def uncached(
    stub: key_service_pb2_grpc.KeyServiceStub, keys: list[str], seconds: float, threads: int
) -> dict[str, float]:
    """Real VerifyApiKey calls from ``threads`` threads."""
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            answer = stub.VerifyApiKey(
                key_service_pb2.VerifyApiKeyRequest(key=keys[(i + n) % len(keys)]), timeout=10
            )
            assert answer.result == VALID
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    cpu, wall = _cpu(), time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    cpu, wall = _cpu() - cpu, time.monotonic() - wall
    total = sum(counts)
    return {"calls": total, "per_s": total / wall, "per_client_cpu_s": total / max(cpu, 1e-9)}


def cached(verifier: CachingVerifier, keys: list[str], seconds: float) -> dict[str, float]:
    """Verifications answered from memory, one thread."""
    for key in keys:  # warm: one real call each
        assert verifier.verify_api_key(key).result == VALID
    hits = verifier.stats().hits
    n = 0
    stop = time.monotonic() + seconds
    cpu, wall = _cpu(), time.monotonic()
    verify = verifier.verify_api_key
    count = len(keys)
    while True:
        for _ in range(1000):
            verify(keys[n % count])
            n += 1
        if time.monotonic() >= stop:
            break
    cpu, wall = _cpu() - cpu, time.monotonic() - wall
    served = verifier.stats().hits - hits
    return {
        "calls": n,
        "from_memory": served,
        "per_s": n / wall,
        "per_client_cpu_s": n / max(cpu, 1e-9),
    }


def revocation_delays(
    verifier: CachingVerifier,
    control: key_service_pb2_grpc.KeyServiceStub,
    n: int,
) -> list[float]:
    """Seconds from the start of each revoke call (on the other server) until the cache stops
    answering VALID."""
    delays = []
    for _ in range(n):
        created = control.CreateApiKey(
            key_service_pb2.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]), timeout=10
        )
        verifier.verify_api_key(created.raw_key)
        hits = verifier.stats().hits
        assert verifier.verify_api_key(created.raw_key).result == VALID
        if verifier.stats().hits != hits + 1:
            time.sleep(0.05)  # an event of the previous round still quarantined it: retry once
            verifier.verify_api_key(created.raw_key)
        started = time.monotonic()
        control.RevokeApiKey(
            key_service_pb2.RevokeApiKeyRequest(name=created.api_key.name), timeout=10
        )
        while verifier.verify_api_key(created.raw_key).result == VALID:
            if time.monotonic() - started > 10:
                raise RuntimeError("a revoked key still verified through the cache after 10 s")
            time.sleep(0.001)
        delays.append(time.monotonic() - started)
    return delays


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values) * 1000, 1),
        "p99": round(_percentile(values, 0.99) * 1000, 1),
        "max": round(max(values) * 1000, 1),
    }


def run_backend(
    env: BenchEnv, url: str, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    """Both measurements on one database."""
    a = ServerGroup(env, url)
    a.start()
    b = ServerGroup(env, url)
    try:
        b.start()
        with env.channel(a.target) as ch_a, env.channel(b.target) as ch_b:
            stub_a = key_service_pb2_grpc.KeyServiceStub(ch_a)
            control_b = key_service_pb2_grpc.KeyServiceStub(ch_b)
            keys = _keys(control_b, args.keys)
            raw = uncached(stub_a, keys, args.seconds, args.threads)
            log(
                f"  uncached VerifyApiKey: {raw['per_s']:.0f}/s wall,"
                f" {raw['per_client_cpu_s']:.0f} per client CPU-s ({args.threads} threads)"
            )
            with CachingVerifier(ch_a) as verifier:
                if not verifier.wait_synced(15):
                    raise RuntimeError(f"revocation feed not synced: {verifier.last_error!r}")
                hot = cached(verifier, keys, args.seconds)
                log(
                    f"  cached: {hot['per_s']:.0f}/s, {hot['per_client_cpu_s']:.0f} per client"
                    f" CPU-s ({hot['from_memory']} of {hot['calls']} from memory)"
                )
                delays = revocation_delays(verifier, control_b, args.revocations)
                log(f"  revocation through the cache: {_ms(delays)} ms")
        return {
            "uncached": raw,
            "cached": hot,
            "ratio_per_client_core": hot["per_client_cpu_s"] / raw["per_client_cpu_s"],
            "ratio_wall": hot["per_s"] / raw["per_s"],
            "revocation_ms": _ms(delays),
            "targets": {
                "cached_vs_uncached_per_client_core": {
                    "target": 100.0,
                    "met": hot["per_client_cpu_s"] / raw["per_client_cpu_s"] >= 100.0,
                },
                "revocation_p99_ms": {"target": 1000.0, "met": _ms(delays)["p99"] <= 1000.0},
            },
        }
    finally:
        b.stop()
        a.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cache", description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8, help="uncached client threads")
    parser.add_argument("--keys", type=int, default=50, help="distinct keys verified")
    parser.add_argument("--revocations", type=int, default=120)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    env = BenchEnv.create()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.gateway_cache " + " ".join(argv or []),
        "backends": {},
    }
    try:
        for backend in args.backends:
            print(f"{backend}:", flush=True)
            if backend == "sqlite":
                url = f"sqlite:///{env.root}/gateway.db"
            elif pg_available():
                url = create_scratch_db("zumik_bench_gateway")
            else:
                print("  PostgreSQL not available: skipped")
                continue
            try:
                results["backends"][backend] = run_backend(
                    env, url, args, lambda line: print(line, flush=True)
                )
            finally:
                if backend == "postgresql":
                    drop_scratch_db("zumik_bench_gateway")
    finally:
        env.cleanup()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
