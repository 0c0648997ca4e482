"""Architecture comparison: threaded vs grpc.aio, one vs two processes, uvloop on or off.

Each variant serves the empty RPC and VerifyApiKey (warm) through the same interceptor and
servicer code (see bench/aio_server.py); each is driven the same way at c=16 and c=64. Server CPU
per call is the number to compare: on a 2-core machine the load generator takes a core too, so
throughput alone under-rates the variants that use two processes.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from bench.harness import BenchEnv, ServerGroup, proc_cpu_seconds, proc_rss_bytes
from bench.loadgen import Generators
from bench.runner import Result, measure
from bench.scenarios import Ctx, NotServed, Prepared, SetupFailed, _verify_warm

if TYPE_CHECKING:
    from bench.settings import Settings

EMPTY = "/zumik.bench.v1.BenchService/Empty"

VARIANTS: tuple[tuple[str, int, list[str] | None], ...] = (
    ("threaded x1", 1, None),
    ("threaded x2 (reuse-port)", 2, None),
    ("aio x1", 1, [sys.executable, "-m", "bench.aio_server"]),
    ("aio+uvloop x1", 1, [sys.executable, "-m", "bench.aio_server", "--uvloop"]),
    (
        "aio+uvloop x2 (reuse-port)",
        2,
        [sys.executable, "-m", "bench.aio_server", "--uvloop", "--reuse-port"],
    ),
)


def run_arch(s: Settings, env: BenchEnv, gens: Generators, results: list[Result]) -> dict[str, Any]:
    """Run every variant; rows go to ``results`` with group ``arch``."""
    concurrencies = [c for c in s.concurrency if c > 1] or [64]
    info: dict[str, Any] = {"variants": [v[0] for v in VARIANTS], "concurrency": concurrencies}
    for i, (label, procs, argv) in enumerate(VARIANTS):
        if argv is not None and "--uvloop" in argv and importlib.util.find_spec("uvloop") is None:
            for c in concurrencies:
                for name in ("empty", "verify_warm"):
                    results.append(
                        Result("arch", name, f"{label}: {name}", c, status="skipped: no uvloop")
                    )
            continue
        url = f"sqlite:///{env.root}/arch-{i}.db"
        server = ServerGroup(env, url, processes=procs, argv=argv, extra_env=dict(s.server_env))
        print(f"architecture: {label}", file=sys.stderr, flush=True)
        try:
            server.start()
        except RuntimeError as exc:
            for c in concurrencies:
                for name in ("empty", "verify_warm"):
                    results.append(
                        Result("arch", name, f"{label}: {name}", c, status=f"failed: {exc}"[:200])
                    )
            continue
        ctx = Ctx(env.channel(server.target), url)
        try:
            for name in ("empty", "verify_warm"):
                try:
                    prep = Prepared(EMPTY, [b""]) if name == "empty" else _verify_warm(ctx, 0)
                except (NotServed, SetupFailed) as exc:
                    for c in concurrencies:
                        results.append(
                            Result("arch", name, f"{label}: {name}", c, status=f"skipped: {exc}")
                        )
                    continue
                for c in concurrencies:
                    row = Result("arch", name, f"{label}: {name}", c)
                    spec = prep.spec(
                        s.generator, server.target, env.tls(), c, s.warmup, s.duration, s.channels
                    )
                    server.reset_log()
                    measure(gens, spec, server.pids, proc_cpu_seconds, proc_rss_bytes, row)
                    results.append(row)
        finally:
            ctx.channel.close()
            server.stop()
    return info
