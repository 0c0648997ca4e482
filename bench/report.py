"""Rendering: the terminal table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.runner import Result

# The bar (measured, never asserted in tests).
TARGETS: tuple[tuple[str, str], ...] = (
    ("verify_warm_vs_empty", "VerifyApiKey warm >= 0.8x empty-RPC throughput at c=64"),
    ("verify_warm_p99", "VerifyApiKey warm p99 <= 1.5x empty-RPC p99 at c=64"),
    ("seal_1k_vs_empty", "Seal 1 KiB >= 0.6x empty at c=64"),
    ("open_1k_vs_empty", "Open 1 KiB >= 0.6x empty at c=64"),
    ("fp_100_rate", "Fingerprint batch 100 >= 100,000 fingerprints/s"),
    ("seal_vs_transit", "Seal 1 KiB >= 1.0x Transit encrypt 1 KiB at c=64"),
    ("open_vs_transit", "Open 1 KiB >= 1.0x Transit decrypt 1 KiB at c=64"),
    ("verify_vs_lookup", "VerifyApiKey warm >= 1.0x token lookup at c=64"),
)

# Our scenario vs the OpenBao shape it is compared with.
PEER_PAIRS: tuple[tuple[str, str], ...] = (
    ("seal_64", "transit_encrypt_64"),
    ("seal_1k", "transit_encrypt_1k"),
    ("open_1k", "transit_decrypt_1k"),
    ("fp_1", "transit_hmac"),
    ("verify_warm", "token_lookup"),
)


def _fmt_num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(results: Sequence[Result]) -> str:
    """A fixed-width table of the results."""
    head = (
        f"{'group':<8} {'scenario':<30} {'c':>3} {'calls/s':>9} {'items/s':>9} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'p99.9':>7} {'err':>5} {'srvCPU%':>7} {'us/call':>7} {'RSS MB':>7} "
        f"{'xEmpty':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if r.status != "ok":
            lines.append(f"{r.group:<8} {r.label:<30} {r.concurrency:>3} {r.status}")
            continue
        ratio = f"{r.ratio_to_empty:.2f}" if r.ratio_to_empty is not None else "-"
        items = _fmt_num(r.items_per_s) if r.items_per_s != r.throughput else ""
        lines.append(
            f"{r.group:<8} {r.label:<30} {r.concurrency:>3} {_fmt_num(r.throughput):>9} "
            f"{items:>9} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.p999_ms:>7.2f} "
            f"{sum(r.errors.values()):>5} {r.server_cpu_pct:>7.0f} "
            f"{r.server_cpu_us_per_call:>7.0f} {r.server_rss_mb:>7.0f} {ratio:>6}"
            + (f"  ({r.notes})" if r.notes else "")
        )
    return "\n".join(lines)


def markdown_table(results: Sequence[Result]) -> str:
    """The same table in Markdown (for bench/README.md)."""
    lines = [
        "| group | scenario | c | calls/s | items/s | p50 ms | p99 ms | p99.9 ms | errors "
        "| server CPU % | server us/call | RSS MB | x empty |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.group} | {r.label} | {r.concurrency} | {r.status} |" + " |" * 9)
            continue
        ratio = f"{r.ratio_to_empty:.2f}" if r.ratio_to_empty is not None else "-"
        items = _fmt_num(r.items_per_s) if r.items_per_s != r.throughput else ""
        lines.append(
            f"| {r.group} | {r.label} | {r.concurrency} | {_fmt_num(r.throughput)} | {items} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} | {sum(r.errors.values())} "
            f"| {r.server_cpu_pct:.0f} | {r.server_cpu_us_per_call:.0f} | {r.server_rss_mb:.0f} "
            f"| {ratio} |"
        )
    return "\n".join(lines)


def _find(results: Sequence[Result], group: str, scenario: str, c: int) -> Result | None:
    for r in results:
        if r.group == group and r.scenario == scenario and r.concurrency == c and r.status == "ok":
            return r
    return None


def set_empty_ratios(results: Sequence[Result]) -> None:
    """Fill ``ratio_to_empty`` of every zumik row from the empty run at the same concurrency."""
    for r in results:
        if r.group != "zumik" or r.status != "ok":
            continue
        empty = _find(results, "zumik", "empty", r.concurrency)
        if empty and empty.throughput:
            r.ratio_to_empty = r.throughput / empty.throughput


def peer_ratios(results: Sequence[Result], c: int = 64) -> list[dict[str, Any]]:
    """Our/OpenBao throughput ratios per compared pair at concurrency ``c``."""
    out = []
    for ours, theirs in PEER_PAIRS:
        a = _find(results, "zumik", ours, c)
        b = _find(results, "openbao", theirs, c)
        row: dict[str, Any] = {"ours": ours, "openbao": theirs, "concurrency": c}
        if a is None or b is None:
            missing = ours if a is None else theirs
            row["ratio"] = None
            row["note"] = f"{missing} not measured"
        else:
            row["ratio"] = a.throughput / b.throughput if b.throughput else None
            row["ours_per_s"] = a.throughput
            row["openbao_per_s"] = b.throughput
            row["p99_ratio"] = a.p99_ms / b.p99_ms if b.p99_ms else None
        out.append(row)
    return out


def targets(results: Sequence[Result], c: int = 64) -> list[dict[str, Any]]:
    """Which of the issue's targets are met (None when not measurable in this run)."""
    empty = _find(results, "zumik", "empty", c)

    def vs_empty(name: str, bar: float) -> tuple[float | None, bool | None]:
        r = _find(results, "zumik", name, c)
        if r is None or empty is None or not empty.throughput:
            return None, None
        v = r.throughput / empty.throughput
        return v, v >= bar

    vals: dict[str, tuple[float | None, bool | None]] = {}
    vals["verify_warm_vs_empty"] = vs_empty("verify_warm", 0.8)
    vw = _find(results, "zumik", "verify_warm", c)
    if vw and empty and empty.p99_ms:
        v = vw.p99_ms / empty.p99_ms
        vals["verify_warm_p99"] = (v, v <= 1.5)
    else:
        vals["verify_warm_p99"] = (None, None)
    vals["seal_1k_vs_empty"] = vs_empty("seal_1k", 0.6)
    vals["open_1k_vs_empty"] = vs_empty("open_1k", 0.6)
    fps = [
        r.items_per_s
        for r in results
        if r.group == "zumik" and r.scenario == "fp_100" and r.status == "ok"
    ]
    vals["fp_100_rate"] = (max(fps), max(fps) >= 100_000) if fps else (None, None)
    peers = {(p["ours"], p["openbao"]): p.get("ratio") for p in peer_ratios(results, c)}
    for key, pair in (
        ("seal_vs_transit", ("seal_1k", "transit_encrypt_1k")),
        ("open_vs_transit", ("open_1k", "transit_decrypt_1k")),
        ("verify_vs_lookup", ("verify_warm", "token_lookup")),
    ):
        ratio = peers.get(pair)
        vals[key] = (ratio, None if ratio is None else ratio >= 1.0)
    return [
        {"target": key, "text": text, "value": vals[key][0], "met": vals[key][1]}
        for key, text in TARGETS
    ]


def targets_text(rows: Sequence[dict[str, Any]]) -> str:
    """Targets as lines: MET / NOT MET / not measured."""
    out = []
    for t in rows:
        state = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "" if t["value"] is None else f" (measured {t['value']:,.2f})"
        out.append(f"  [{state}] {t['text']}{value}")
    return "\n".join(out)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write the JSON report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def write_chart(path: Path, results: Sequence[Result], title: str) -> bool:
    """A PNG of throughput per scenario and concurrency (and p99); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in results if r.status == "ok" and r.group in ("zumik", "openbao")]
    if not rows:
        return False
    labels: list[str] = []
    for r in rows:
        name = f"{'OpenBao ' if r.group == 'openbao' else ''}{r.label}"
        if name not in labels:
            labels.append(name)
    concurrencies = sorted({r.concurrency for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.45 * len(labels) + 2.5))
    height = 0.8 / max(1, len(concurrencies))
    for j, c in enumerate(concurrencies):
        xs, ps, ys = [], [], []
        for i, name in enumerate(labels):
            for r in rows:
                if f"{'OpenBao ' if r.group == 'openbao' else ''}{r.label}" == name and (
                    r.concurrency == c
                ):
                    ys.append(i + j * height)
                    xs.append(r.throughput)
                    ps.append(r.p99_ms)
        ax1.barh(ys, xs, height=height, label=f"c={c}")
        ax2.barh(ys, ps, height=height, label=f"c={c}")
    for ax, xlabel in ((ax1, "calls/s"), (ax2, "p99 latency (ms, log)")):
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))])
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right")
    ax2.set_xscale("log")
    ax2.set_yticklabels([])
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _shape(payload: dict[str, Any]) -> str:
    """``1 process, sqlite`` (from the run's settings; older reports lack some keys)."""
    settings = payload.get("settings", {})
    procs = int(settings.get("server_procs", 1))
    backend = settings.get("backend", "sqlite")
    return f"{procs} process{'es' if procs != 1 else ''}, {backend}"


def markdown_report(payload: dict[str, Any]) -> str:
    """The results section of bench/README.md, from a JSON report (``results/latest-*.md``)."""
    results = [Result(**r) for r in payload["results"]]
    m = payload["machine"]
    out = [
        f"Run: `{payload['kind']}`, started {payload['started']}; {m['cores']} cores "
        f"({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_avg_at_start'])}.",
        "",
        f"### Scenarios (ours, threaded server, {_shape(payload)}) and the OpenBao peer",
        "",
        markdown_table([r for r in results if r.group in ("zumik", "openbao")]),
        "",
        "### Ours / OpenBao at c=64",
        "",
        "| ours | OpenBao | throughput ratio | p99 ratio (ours/theirs) |",
        "|---|---|--:|--:|",
    ]
    for p in payload.get("peer_ratios", []):
        ratio = "n/a: " + p.get("note", "") if p["ratio"] is None else f"{p['ratio']:.2f}x"
        p99 = f"{p['p99_ratio']:.2f}" if p.get("p99_ratio") else "-"
        out.append(f"| {p['ours']} | {p['openbao']} | {ratio} | {p99} |")
    out += ["", "### Targets (c=64)", ""]
    for t in payload.get("targets", []):
        state = "not measured" if t["met"] is None else ("**met**" if t["met"] else "NOT met")
        value = "" if t["value"] is None else f" (measured {t['value']:,.2f})"
        out.append(f"- {state}: {t['text']}{value}")
    for group, title in (("scale", "Scale (PostgreSQL, c=64)"), ("arch", "Architecture")):
        rows = [r for r in results if r.group == group]
        if rows:
            out += ["", f"### {title}", "", markdown_table(rows)]
    scale = payload.get("scale") or {}
    if scale.get("ratios"):
        out += ["", "Scale ratios (large / small): " + json.dumps(scale["ratios"], default=str)]
    if scale.get("timings"):
        out += ["", "Load timings (s): " + json.dumps(scale["timings"], default=str)]
    prof = payload.get("profile") or {}
    for name, folded in prof.items():
        if not isinstance(folded, dict) or "self" not in folded:
            continue
        out += ["", f"### Profile: {name} (py-spy --gil, {folded['samples']} samples)", ""]
        out.append("| self % | function | | inclusive % | function |")
        out.append("|--:|---|---|--:|---|")
        for (sk, sv), (ik, iv) in zip(folded["self"][:15], folded["inclusive"][:15], strict=False):
            out.append(f"| {sv} | `{sk}` | | {iv} | `{ik}` |")
    return "\n".join(out) + "\n"
