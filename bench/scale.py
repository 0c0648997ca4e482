"""Scale: VerifyApiKey and Open with 1,000 vs 1,000,000 stored rows on PostgreSQL.

Rows go straight into the real tables of a scratch database migrated by the service itself:

* API keys by ``COPY ... FROM STDIN`` from a generator: each row comes from
  ``core.api_keys.generate_api_key`` (real salt and hash); only a sample of raw keys is kept to
  drive the verify load.
* Sealed secrets by cloning a secret sealed through the real Seal RPC with
  ``INSERT ... SELECT ... generate_series`` (new ids, same ciphertext: those clones are never
  opened, they only fill the table and its indexes; the opened ones are real).

Each size has its own database, loaded once. Three rounds (``--scale-rounds``) alternate the
sizes, each on a freshly started server: warm verify (a hot set of 1,000 keys) and Open (a hot set
of 64 secrets) at c=64; the report gives the ratio of the medians, the ratio of every round and
the spread. In the last round, at the large size, cold verifies over more distinct keys than the
key cache holds follow, so the RSS reported is the server's with the cache at its bound.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bench.harness import (
    BenchEnv,
    ServerGroup,
    create_scratch_db,
    drop_scratch_db,
    pg_available,
    proc_cpu_seconds,
    proc_rss_bytes,
)
from bench.loadgen import Generators
from bench.runner import Result, RunSpec, measure
from bench.scenarios import PROJECT, TENANT, Ctx, NotServed, SetupFailed, _open

if TYPE_CHECKING:
    from bench.settings import Settings

DB = "zumik_bench_scale"
SMALL = 1_000
HOT = 1_000
KEY_CACHE_BOUND = 100_000  # app/api_keys.py ApiKeyService(cache_entries=...) default
COLD_SAMPLE = KEY_CACHE_BOUND + 20_000

_KEY_COLS = (
    "key_id, tenant_id, project_id, display_name, env, masked_prefix, salt, secret_hash, "
    "scopes, state, created_at"
)


def copy_keys(url: str, count: int, keep: int) -> list[str]:
    """COPY ``count`` API keys into ``api_keys``; returns the first ``keep`` raw keys."""
    import psycopg

    from zumik_secrets.core.api_keys import generate_api_key

    now = datetime.now(UTC).isoformat()
    raws: list[str] = []
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY api_keys ({_KEY_COLS}) FROM STDIN") as cp:
            buf = io.StringIO()
            for i in range(count):
                g = generate_api_key("live")
                if i < keep:
                    raws.append(g.raw)
                buf.write(
                    f"{g.handle}\t{TENANT}\t{PROJECT}\tscale\t{g.env}\t{g.masked_prefix}\t"
                    f"\\\\x{g.salt.hex()}\t\\\\x{g.secret_hash.hex()}\t{{secrets.open}}\t"
                    f"active\t{now}\n"
                )
                if i % 10_000 == 9_999:
                    cp.write(buf.getvalue())
                    buf = io.StringIO()
            cp.write(buf.getvalue())
        conn.commit()
    return raws


def clone_secrets(url: str, template_id: str, count: int) -> None:
    """Insert ``count`` copies of one sealed secret under new ids (never opened)."""
    import psycopg

    with psycopg.connect(url) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name ="
                " 'sealed_secrets' AND is_identity = 'NO' AND is_generated = 'NEVER'"
                " ORDER BY ordinal_position"
            )
        ]
        prefix = template_id.split("_", 1)[0] + "_0"
        select = [
            "%s || substr(md5(random()::text || g::text), 1, 21)" if c == "secret_id" else c
            for c in cols
        ]
        conn.execute(
            f"INSERT INTO sealed_secrets ({', '.join(cols)}) SELECT {', '.join(select)} "  # noqa: S608 - column names from the catalog
            "FROM sealed_secrets, generate_series(1, %s) AS g WHERE secret_id = %s",
            (prefix, count, template_id),
        )
        conn.commit()


def _count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(row[0]) if row else 0


def run_scale(
    s: Settings, env: BenchEnv, gens: Generators, results: list[Result]
) -> dict[str, Any]:
    """Measure at 1,000 and at ``s.scale_rows`` rows, ``s.scale_rounds`` rounds alternating.

    Each size has its own scratch database, loaded once; every round starts a fresh server on
    the small one, then on the large one, so drift in the machine's load falls on both sizes
    alike. Rows go to ``results`` (group ``scale``); the ratios and their spread to the info.
    """
    sizes = (SMALL, s.scale_rows)
    rounds = max(1, s.scale_rounds)
    info: dict[str, Any] = {"sizes": list(sizes), "rounds": rounds}
    if not pg_available():
        info["status"] = "skipped: PostgreSQL not reachable at 127.0.0.1:5432"
        for n in sizes:
            results.append(
                Result(
                    "scale",
                    "verify_warm",
                    f"VerifyApiKey warm, {n:,} keys",
                    64,
                    status=info["status"],
                )
            )
        return info
    timings: dict[str, float] = {}
    dbs = {SMALL: DB + "_small", s.scale_rows: DB}
    measured: list[tuple[int, int, Result]] = []  # (size, round, row)
    try:
        loaded: dict[int, tuple[str, list[str], list[str]]] = {}
        for size in sizes:
            if size != SMALL:
                print(f"scale: loading {size:,} keys...", file=sys.stderr, flush=True)
            url = create_scratch_db(dbs[size])
            from zumik_secrets.storage.factory import open_store

            store = open_store(url)
            store.migrate()
            store.close()
            t = time.monotonic()
            keep = HOT + (COLD_SAMPLE if size != SMALL else 0)
            sample = copy_keys(url, size, min(size, keep))
            timings[f"copy_{size}_keys_s"] = time.monotonic() - t
            loaded[size] = (url, sample[:HOT], sample[HOT:])
        cloned: set[int] = set()
        for k in range(1, rounds + 1):
            for size in sizes:
                url, hot, cold = loaded[size]
                print(f"scale: round {k}/{rounds}, {size:,} rows", file=sys.stderr, flush=True)
                server = ServerGroup(env, url, extra_env=dict(s.server_env))
                server.start()
                ctx = Ctx(env.channel(server.target), url)
                try:
                    rows = _measure_size(
                        s,
                        env,
                        gens,
                        server,
                        ctx,
                        size,
                        k,
                        hot,
                        cold if k == rounds else [],
                        results,
                        size in cloned,
                        timings,
                    )
                    cloned.add(size)
                    measured.extend((size, k, r) for r in rows)
                finally:
                    ctx.channel.close()
                    server.stop()
                if k == 1 and size != SMALL:
                    info["stored_keys"] = _count(url, "api_keys")
                    info["stored_secrets"] = _count(url, "sealed_secrets")
    finally:
        for name in dbs.values():
            drop_scratch_db(name)
    info["timings"] = timings
    info["ratios"] = scale_ratios(measured, SMALL, s.scale_rows)
    info["status"] = "ok"
    return info


def _run(
    s: Settings,
    env: BenchEnv,
    gens: Generators,
    server: ServerGroup,
    row: Result,
    method: str,
    reqs: list[bytes],
    md: tuple[tuple[str, str], ...] = (),
    distinct: bool = False,
) -> Result:
    spec = RunSpec(
        kind=s.generator,
        target=server.target,
        tls=env.tls(),
        method=method,
        requests=reqs,
        metadata=md,
        concurrency=64,
        warmup=s.warmup,
        duration=s.duration,
        channels_per_generator=s.channels,
        distinct=distinct,
    )
    server.reset_log()
    return measure(gens, spec, server.pids, proc_cpu_seconds, proc_rss_bytes, row)


def _measure_size(
    s: Settings,
    env: BenchEnv,
    gens: Generators,
    server: ServerGroup,
    ctx: Ctx,
    size: int,
    round_no: int,
    hot: list[str],
    cold: list[str],
    results: list[Result],
    cloned: bool,
    timings: dict[str, float],
) -> list[Result]:
    from zumik.secrets.v1 import key_service_pb2, seal_service_pb2

    rows: list[Result] = []
    verify = "/zumik.secrets.v1.KeyService/VerifyApiKey"
    reqs = [key_service_pb2.VerifyApiKeyRequest(key=k).SerializeToString() for k in hot]
    row = Result("scale", "verify_warm", f"VerifyApiKey warm, {size:,} keys, round {round_no}", 64)
    rows.append(_run(s, env, gens, server, row, verify, reqs))
    row = Result("scale", "open_1k", f"Open 1 KiB, {size:,} secrets, round {round_no}", 64)
    try:
        prep = _open(ctx, 0)
        if not cloned:
            # Fill the table up to the size with clones of one secret sealed just now.
            name = seal_service_pb2.OpenRequest.FromString(prep.requests[0]).name
            t = time.monotonic()
            clone_secrets(
                ctx.database_url,
                name.rsplit("/", 1)[-1],
                size - _count(ctx.database_url, "sealed_secrets"),
            )
            timings[f"clone_{size}_secrets_s"] = time.monotonic() - t
        rows.append(_run(s, env, gens, server, row, prep.method, prep.requests, prep.metadata))
    except NotServed:
        row.status = "not yet served"
        rows.append(row)
    except SetupFailed as exc:
        row.status = f"failed: set-up {exc}"[:200]
        rows.append(row)
    if cold:
        # Cold verifies over more distinct keys than the cache holds: fills it to its bound.
        reqs = [key_service_pb2.VerifyApiKeyRequest(key=k).SerializeToString() for k in cold]
        row = Result("scale", "verify_cold", f"VerifyApiKey cold, {size:,} keys", 64)
        warm = rows[0].throughput if rows[0].status == "ok" else 1500.0
        rate = max(300.0, warm / 4)
        saved = s.duration
        s.duration = min(240.0, len(reqs) / rate)
        try:
            _run(s, env, gens, server, row, verify, reqs, distinct=True)
        finally:
            s.duration = saved
        row.notes = (row.notes + f"; {row.calls:,} distinct keys in the window").lstrip("; ")
        time.sleep(1.0)
        row.server_rss_mb = server.rss_bytes() / 2**20
        rows.append(row)
    results.extend(rows)
    return rows


def scale_ratios(measured: list[tuple[int, int, Result]], small: int, large: int) -> dict[str, Any]:
    """Large/small throughput per scenario: of the medians, per round, and the spread."""
    out: dict[str, Any] = {}
    for scenario in ("verify_warm", "open_1k"):
        by: dict[int, dict[int, float]] = {small: {}, large: {}}
        cpu: dict[int, list[float]] = {small: [], large: []}
        for size, k, r in measured:
            if r.scenario == scenario and r.status == "ok" and size in by:
                by[size][k] = r.throughput
                cpu[size].append(r.server_cpu_us_per_call)
        a, b = by[small], by[large]
        if not a or not b:
            out[scenario] = {"ratio": None}
            continue
        med_a, med_b = statistics.median(a.values()), statistics.median(b.values())
        rounds = [b[k] / a[k] for k in sorted(a) if k in b and a[k]]
        ratio = med_b / med_a if med_a else None
        out[scenario] = {
            "small_per_s": sorted(a.values()),
            "large_per_s": sorted(b.values()),
            "small_median_per_s": med_a,
            "large_median_per_s": med_b,
            "ratio": ratio,
            "round_ratios": rounds,
            "spread_small": (max(a.values()) - min(a.values())) / med_a if med_a else None,
            "spread_large": (max(b.values()) - min(b.values())) / med_b if med_b else None,
            # Server CPU per call: steadier than calls/s when the machine is shared.
            "cpu_us_per_call_small": statistics.median(cpu[small]) if cpu[small] else None,
            "cpu_us_per_call_large": statistics.median(cpu[large]) if cpu[large] else None,
            "flat_within_10pct": ratio is not None
            and abs(1 - ratio) <= 0.10
            and all(abs(1 - x) <= 0.10 for x in rounds),
        }
    cold = [r for _, _, r in measured if r.scenario == "verify_cold" and r.status == "ok"]
    if cold:
        out["rss_mb_with_cache_full"] = cold[-1].server_rss_mb
    return out
