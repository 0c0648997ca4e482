"""`python -m bench`: run the scenarios, the OpenBao peer run, scale and architecture runs."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import gateway_cache, report
from bench.arch import run_arch
from bench.harness import (
    REPO,
    BenchEnv,
    ServerGroup,
    create_scratch_db,
    drop_scratch_db,
    proc_cpu_seconds,
    proc_rss_bytes,
)
from bench.loadgen import Generators
from bench.openbao import peer_steps, run_openbao
from bench.profiling import run_profile
from bench.runner import Result, measure
from bench.scale import run_scale
from bench.scenarios import BY_NAME, SCENARIOS, Ctx, NotServed, SetupFailed
from bench.settings import Progress, Settings

RESULTS = REPO / "bench" / "results"
LATEST_PNG = REPO / "bench" / "latest.png"


def _parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short runs, no scale/arch/profile")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        help=f"scenario(s) to run (repeat or comma-separate): {', '.join(BY_NAME)}",
    )
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated (default 1,16,64)")
    p.add_argument("--duration", type=float, help="measured seconds per run (5; quick 1.5)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per run (2; quick 0.5)")
    p.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--generators", type=int, default=1, help="load-generator processes (1)")
    p.add_argument(
        "--generator", choices=("aio", "threads"), default="aio", help="client kind (aio)"
    )
    p.add_argument(
        "--channels",
        default="4",
        help="channels per generator (4); a list (2,4,8,16) adds a sweep over them",
    )
    p.add_argument("--server-procs", type=int, default=1, help="server processes (1)")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip OpenBao")
    p.add_argument("--scale", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--scale-rows", type=int, default=1_000_000)
    p.add_argument("--scale-rounds", type=int, default=3, help="runs per scale size (3)")
    p.add_argument("--arch", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--gateway",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gateway-cache targets: run bench.gateway_cache on both backends (full run: yes)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ZUMIK_* setting for the servers (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Resolve defaults that depend on --quick."""
    names: list[str] = []
    for item in args.scenario:
        names.extend(x.strip() for x in item.split(",") if x.strip())
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    selected = bool(names)
    if not names:
        names = [s.name for s in SCENARIOS]
    if "empty" not in names:
        names.insert(0, "empty")  # the ceiling every ratio is taken against
    full = not args.quick and not selected
    channels = _parse_list(str(args.channels)) or [4]
    return Settings(
        quick=args.quick,
        scenarios=names,
        concurrency=_parse_list(args.concurrency),
        warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0),
        duration=args.duration if args.duration is not None else (1.5 if args.quick else 5.0),
        backend=args.backend,
        generators=args.generators,
        generator=args.generator,
        channels=channels[0],
        server_procs=args.server_procs,
        peer=args.peer,
        scale=full if args.scale is None else args.scale,
        scale_rows=args.scale_rows,
        arch=full if args.arch is None else args.arch,
        profile=full if args.profile is None else args.profile,
        gateway=full if args.gateway is None else args.gateway,
        server_env=dict(item.split("=", 1) for item in args.server_env),
        channel_sweep=channels if len(channels) > 1 else [],
        scale_rounds=args.scale_rounds,
    )


def plan_text(s: Settings) -> str:
    """What the invocation will do, with a rough duration."""
    runs = len(s.scenarios) * len(s.concurrency) * (1 + len(s.channel_sweep))
    peer_runs = peer_steps(s) if s.peer else 0
    per = s.warmup + s.duration + 0.6
    est = (runs + peer_runs) * per + 15 + (40 if s.peer else 0)
    scale = (
        f"yes (1,000 and {s.scale_rows:,} rows, PostgreSQL, {s.scale_rounds} rounds)"
        if s.scale
        else "no"
    )
    lines = [
        f"scenarios: {', '.join(s.scenarios)}",
        f"concurrency: {s.concurrency}; warm-up {s.warmup}s, measured {s.duration}s per run",
        f"backend: {s.backend}; server processes: {s.server_procs}; "
        f"generators: {s.generators} x {s.generator} ({s.channels} channels each)",
        f"OpenBao peers: "
        f"{f'dev + production-like, c={s.peer_concurrency}' if s.peer else 'no'}; scale: "
        f"{scale}; "
        f"architecture comparison: {'yes' if s.arch else 'no'}; "
        f"profile: {'yes' if s.profile else 'no'}; "
        f"gateway cache: {'yes (both backends, about 3 min)' if s.gateway else 'no'}",
        f"estimated time for scenarios + peers: about {est / 60:.1f} min",
    ]
    if s.channel_sweep:
        lines.insert(3, f"channel sweep: {s.channel_sweep} channels per generator")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model, Python."""
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "cpu": model,
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def database_url(env: BenchEnv, backend: str, name: str) -> str:
    """A fresh database of the backend for one server group."""
    if backend == "postgresql":
        return create_scratch_db(name)
    return f"sqlite:///{env.root / name}.db"


def run_scenarios(
    s: Settings,
    env: BenchEnv,
    gens: Generators,
    progress: Progress,
    results: list[Result],
    *,
    group: str = "zumik",
    server_procs: int | None = None,
    db_name: str = "zumik_bench",
    channel_counts: Sequence[int] = (),
) -> None:
    """Start a server, run every selected scenario at every concurrency, stop it.

    With ``channel_counts`` each scenario and concurrency runs once per count of channels per
    generator, one after the other (the sweep: rows labelled ``..., N ch``).
    """
    sweep = list(channel_counts)
    counts = sweep or [s.channels]
    url = database_url(env, s.backend, db_name)
    server = ServerGroup(
        env, url, processes=server_procs or s.server_procs, extra_env=dict(s.server_env)
    )
    try:
        server.start()
    except RuntimeError as exc:
        for name in s.scenarios:
            for c in s.concurrency:
                for ch in counts:
                    r = Result(group, name, _label(name, ch, sweep), c, channels=ch)
                    r.status = f"failed: {exc}"[:300]
                    results.append(r)
        return
    ctx = Ctx(env.channel(server.target), url)
    empty_rate: dict[int, float] = {}
    try:
        for name in s.scenarios:
            sc = BY_NAME[name]
            status = ""
            for c in s.concurrency:
                for ch in counts:
                    label = _label(name, ch, sweep)
                    progress.step(f"{label} c={c}")
                    row = Result(group, name, label, c, channels=ch)
                    if status:
                        row.status = status
                        results.append(row)
                        continue
                    calls = int(empty_rate.get(c, 5000) * (s.warmup + s.duration) * 1.2) + 500
                    try:
                        prep = sc.prepare(ctx, min(calls, 80_000))
                    except NotServed:
                        status = row.status = "not yet served"
                        results.append(row)
                        continue
                    except SetupFailed as exc:
                        status = row.status = f"failed: set-up {exc}"[:300]
                        results.append(row)
                        continue
                    server.reset_log()
                    spec = prep.spec(
                        s.generator, server.target, env.tls(), c, s.warmup, s.duration, ch
                    )
                    measure(gens, spec, server.pids, proc_cpu_seconds, proc_rss_bytes, row)
                    logged = server.reset_log()
                    if logged:
                        row.notes = (row.notes + f"; {logged} server ERROR log lines").lstrip("; ")
                    if name == "empty" and row.status == "ok":
                        empty_rate[c] = max(empty_rate.get(c, 0.0), row.throughput)
                    results.append(row)
    finally:
        ctx.channel.close()
        server.stop()
        if s.backend == "postgresql":
            drop_scratch_db(db_name)


def _label(name: str, channels: int, sweep: Sequence[int]) -> str:
    label = BY_NAME[name].label
    return f"{label}, {channels} ch" if sweep else label


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    s = settings_from(args)
    print(plan_text(s), flush=True)
    if args.dry_run:
        return 0
    env = BenchEnv.create()
    print(f"temp dir (PKI, keyring, policy, server logs): {env.root}", flush=True)
    machine = machine_info()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results: list[Result] = []
    extra: dict[str, Any] = {}
    runs = len(s.scenarios) * len(s.concurrency) * (1 + len(s.channel_sweep))
    progress = Progress(runs + (peer_steps(s) if s.peer else 0))
    gens = Generators(s.generators)
    try:
        run_scenarios(s, env, gens, progress, results)
        if s.channel_sweep:
            run_scenarios(
                s,
                env,
                gens,
                progress,
                results,
                group="channels",
                db_name="zumik_bench_channels",
                channel_counts=s.channel_sweep,
            )
        report.set_empty_ratios(results)
        if s.peer:
            extra["openbao"] = run_openbao(s, env, gens, progress, results)
        progress.end()
        if s.scale:
            extra["scale"] = run_scale(s, env, gens, results)
        if s.arch:
            extra["architecture"] = run_arch(s, env, gens, results)
        if s.profile:
            extra["profile"] = run_profile(s, env, gens)
        if s.gateway:
            # Its own servers and JSON (bench/results/gateway_cache.json), read below with the
            # targets: a full run measures every target instead of reading an older file.
            gateway_cache.main(["--output", str(RESULTS / report.GATEWAY_JSON)])
    finally:
        gens.close()
        if not args.keep:
            env.cleanup()
    machine["load_avg_at_end"] = os.getloadavg()
    peers = report.peer_ratios(results)
    targets = report.targets(
        results, gateway=report.read_gateway(RESULTS), scale=extra.get("scale")
    )
    main_rows = [r for r in results if r.group in report.MAIN_GROUPS]
    print()
    print(report.table(main_rows))
    other = [r for r in results if r.group not in report.MAIN_GROUPS]
    if other:
        print()
        print(report.table(other))
    print("\nours / OpenBao at c=64 (throughput):")
    print(report.peer_ratios_text(peers))
    load = ", ".join(f"{x:.1f}" for x in machine["load_avg_at_start"])
    end = ", ".join(f"{x:.1f}" for x in machine["load_avg_at_end"])
    print(f"\ntargets (issue 18; ratios within this run; load average {load} -> {end}):")
    print(report.targets_text(targets))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "quick" if s.quick else ("partial" if args.scenario else "full")
    payload = {
        "started": started,
        "kind": kind,
        "machine": machine,
        "settings": vars(s),
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "results": [r.to_json() for r in results],
        "peer_ratios": peers,
        "targets": targets,
        **extra,
    }
    json_path = RESULTS / f"bench-{kind}-{stamp}.json"
    report.write_json(json_path, payload)
    report.write_json(RESULTS / f"latest-{kind}.json", payload)
    (RESULTS / f"latest-{kind}.md").write_text(report.markdown_report(payload))
    png = RESULTS / f"bench-{kind}-{stamp}.png"
    title = f"Zumik Secrets bench ({kind}, {started}, {machine['cores']} cores, {s.backend})"
    if report.write_chart(png, main_rows, title):
        print(f"\nchart: {png}")
        if kind == "full":
            shutil.copyfile(png, LATEST_PNG)
            print(f"copied to {LATEST_PNG}")
    print(f"json: {json_path}")
    return 0
