"""Profiles of the server under the top scenarios: py-spy (sampling, from outside) when ptrace is
allowed, else a note (pyinstrument would have to run inside the server).

For each scenario the server is sampled at c=64 while the generators drive it; the collapsed
stacks are folded into the top functions by self time and by inclusive time (per file:function,
so the numbers add up across call sites).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import BenchEnv, ServerGroup, proc_cpu_seconds, proc_rss_bytes
from bench.loadgen import Generators
from bench.runner import Result, measure
from bench.scenarios import BY_NAME, Ctx, NotServed, SetupFailed

if TYPE_CHECKING:
    from bench.settings import Settings

TOP_SCENARIOS = ("empty", "verify_warm", "seal_1k", "open_1k", "fp_100")


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame_key(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "file.py:function"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{short}:{name}"


def fold(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Top functions by self and inclusive share of the samples in py-spy's raw output."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        self_c[_frame_key(frames[-1])] += count
        for key in {_frame_key(f) for f in frames}:
            incl[key] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}

    def rows(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(top)]

    return {"samples": total, "self": rows(self_c), "inclusive": rows(incl)}


def run_profile(s: Settings, env: BenchEnv, gens: Generators) -> dict[str, Any]:
    """Profile each served top scenario; returns folded profiles (and prints them)."""
    spy = _py_spy()
    out: dict[str, Any] = {"tool": "py-spy" if spy else None}
    if spy is None:
        out["status"] = "skipped: py-spy not installed"
        return out
    url = f"sqlite:///{env.root}/profile.db"
    server = ServerGroup(env, url, extra_env=dict(s.server_env))
    server.start()
    ctx = Ctx(env.channel(server.target), url)
    seconds = max(3.0, s.duration)
    try:
        for name in TOP_SCENARIOS:
            if name not in s.scenarios:
                continue
            try:
                prep = BY_NAME[name].prepare(ctx, 0)
            except (NotServed, SetupFailed) as exc:
                out[name] = {"status": f"skipped: {exc}"}
                continue
            raw = env.root / f"profile-{name}.txt"
            print(f"profiling {name} with py-spy ({seconds:.0f}s)", file=sys.stderr, flush=True)
            spec = prep.spec(s.generator, server.target, env.tls(), 64, 1.0, seconds, s.channels)
            spy_proc = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--gil",
                    "--pid",
                    str(server.pids[0]),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--duration",
                    str(int(seconds) + 1),
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(0.5)
            row = Result("profile", name, name, 64)
            server.reset_log()
            measure(gens, spec, server.pids, proc_cpu_seconds, proc_rss_bytes, row)
            _, err = spy_proc.communicate(timeout=60)
            if spy_proc.returncode != 0 or not raw.exists():
                out[name] = {"status": "py-spy failed: " + err.decode(errors="replace")[-300:]}
                continue
            folded = fold(raw.read_text(errors="replace"))
            folded["throughput_under_profiler"] = row.throughput
            out[name] = folded
            print(format_profile(name, folded), file=sys.stderr, flush=True)
    finally:
        ctx.channel.close()
        server.stop()
    out["status"] = "ok"
    return out


def format_profile(name: str, folded: dict[str, Any], top: int = 20) -> str:
    """Human-readable top lists."""
    lines = [f"profile {name}: {folded.get('samples', 0)} samples"]
    for kind in ("self", "inclusive"):
        lines.append(f"  top by {kind} time:")
        for key, pct in folded.get(kind, [])[:top]:
            lines.append(f"    {pct:5.1f}%  {key}")
    return "\n".join(lines)
