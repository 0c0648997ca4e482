"""One measured run: hand jobs to the generators, sample the server, summarise."""

from __future__ import annotations

import os
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen import Generators, Job, Share, Tls, split_concurrency


@dataclass
class Result:
    """A scenario at one concurrency (one row of the report)."""

    group: str  # "zumik", "openbao", "scale", "arch"
    scenario: str
    label: str
    concurrency: int
    status: str = "ok"  # "ok", "not yet served", "failed: ...", "skipped: ..."
    throughput: float = 0.0  # calls/s
    items_per_s: float = 0.0  # calls/s * items per call (fingerprints)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_pct: float = 0.0  # of one core
    server_cpu_us_per_call: float = 0.0
    server_rss_mb: float = 0.0
    client_cpu_us_per_call: float = 0.0
    ratio_to_empty: float | None = None
    notes: str = ""
    channels: int = 0  # channels per generator (0: not recorded)
    server_cpu_split: list[float] = field(default_factory=list)  # % of server CPU per process
    load1: float = 0.0  # the machine's 1-minute load average at the end of the window

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON report."""
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class RunSpec:
    """How to drive one run."""

    kind: str
    target: str
    tls: Tls
    method: str
    requests: list[bytes]
    metadata: tuple[tuple[str, str], ...] = ()
    caller_metadata: tuple[tuple[tuple[str, str], ...], ...] = ()
    concurrency: int = 1
    warmup: float = 1.0
    duration: float = 5.0
    channels_per_generator: int = 4
    distinct: bool = False
    items_per_call: int = 1


def measure(
    gens: Generators,
    spec: RunSpec,
    server_pids: Sequence[int],
    cpu_of: Callable[[int], float],
    rss_of: Callable[[int], int],
    result: Result,
) -> Result:
    """Run ``spec`` on the generators; fill ``result`` with what was measured."""
    shares_c = split_concurrency(spec.concurrency, gens.count)
    start_at = time.time() + 0.3 + 0.03 * spec.channels_per_generator
    jobs = []
    per = len(spec.requests) // len(shares_c)
    for i, c in enumerate(shares_c):
        reqs = spec.requests
        if spec.distinct:
            reqs = spec.requests[i * per : (i + 1) * per]
        jobs.append(
            Job(
                kind=spec.kind,
                target=spec.target,
                tls=spec.tls,
                method=spec.method,
                requests=tuple(reqs),
                metadata=spec.metadata,
                caller_metadata=spec.caller_metadata,
                concurrency=c,
                channels=spec.channels_per_generator,
                start_at=start_at,
                warmup=spec.warmup,
                duration=spec.duration,
                distinct=spec.distinct,
                offset=0 if spec.distinct else i * 7919,
            )
        )
    # The generators block until their shares are done: sample the server from a thread.
    import threading

    samples: dict[str, float] = {}

    def sampler() -> None:
        time.sleep(max(0.0, start_at + spec.warmup - time.time()))
        per0 = [cpu_of(p) for p in server_pids]
        samples["t0"] = time.monotonic()
        time.sleep(max(0.0, start_at + spec.warmup + spec.duration - time.time()))
        per1 = [cpu_of(p) for p in server_pids]
        samples["cpu0"], samples["cpu1"] = sum(per0), sum(per1)
        for i, (a, b) in enumerate(zip(per0, per1, strict=True)):
            samples[f"pid{i}"] = b - a
        samples["t1"] = time.monotonic()
        samples["rss"] = sum(rss_of(p) for p in server_pids)
        samples["load1"] = os.getloadavg()[0]

    th = threading.Thread(target=sampler)
    th.start()
    shares: list[Share] = gens.run(jobs)
    th.join()
    failures = [s.failure for s in shares if s.failure]
    if failures:
        result.status = "failed: " + failures[0][:200]
        return result
    lat = array("d")
    errors: Counter[str] = Counter()
    client_cpu = 0.0
    exhausted = False
    for s in shares:
        a = array("d")
        a.frombytes(s.latencies)
        lat.extend(a)
        errors.update(s.errors)
        client_cpu += s.cpu_seconds
        exhausted = exhausted or s.exhausted
    values = sorted(lat)
    n = len(values)
    result.calls = n
    seconds = spec.duration
    if exhausted:
        seconds = max([s.active_seconds for s in shares] + [1e-3])
    result.throughput = n / seconds
    result.items_per_s = result.throughput * spec.items_per_call
    result.p50_ms = percentile(values, 0.50) * 1000
    result.p99_ms = percentile(values, 0.99) * 1000
    result.p999_ms = percentile(values, 0.999) * 1000
    result.errors = dict(errors)
    wall = samples.get("t1", 0.0) - samples.get("t0", 0.0) or spec.duration
    server_cpu = samples.get("cpu1", 0.0) - samples.get("cpu0", 0.0)
    result.server_cpu_pct = 100.0 * server_cpu / wall
    if len(server_pids) > 1 and server_cpu > 0:
        # How evenly the kernel's port sharing spread the work over the processes.
        result.server_cpu_split = sorted(
            (
                round(100.0 * samples.get(f"pid{i}", 0.0) / server_cpu, 1)
                for i in range(len(server_pids))
            ),
            reverse=True,
        )
    total_calls = n + sum(errors.values())
    if total_calls:
        result.server_cpu_us_per_call = 1e6 * server_cpu / total_calls
        result.client_cpu_us_per_call = 1e6 * client_cpu / total_calls
    result.server_rss_mb = samples.get("rss", 0) / 2**20
    result.load1 = samples.get("load1", 0.0)
    if exhausted:
        result.notes = f"distinct requests ran out after {seconds:.1f}s"
    if errors and not n:
        result.status = "failed: " + ", ".join(f"{k} x{v}" for k, v in errors.items())
    return result
