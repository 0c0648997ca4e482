"""Rendering: the terminal table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.runner import Result

PEERS: tuple[tuple[str, str], ...] = (
    ("openbao_prod", "production-like OpenBao (raft on disk, file audit, TLS)"),
    ("openbao", "OpenBao dev server (in memory, no audit)"),
)
PEER_GROUPS = tuple(g for g, _ in PEERS)
MAIN_GROUPS = ("zumik", *PEER_GROUPS)

# Our scenario vs the OpenBao shape it is compared with (on each peer).
PEER_PAIRS: tuple[tuple[str, str], ...] = (
    ("verify_warm", "token_lookup"),
    ("open_1k", "kv_get_1k"),
    ("seal_1k", "kv_put_1k"),
    ("seal_64", "transit_encrypt_64"),
    ("seal_1k", "transit_encrypt_1k"),
    ("open_1k", "transit_decrypt_1k"),
    ("fp_1", "transit_hmac"),
)

_NAMES = {
    "verify_warm": "VerifyApiKey warm",
    "open_1k": "Open 1 KiB",
    "seal_1k": "Seal 1 KiB",
    "fp_1": "Fingerprint batch 1",
    "token_lookup": "token lookup-self",
    "kv_get_1k": "KV v2 get 1 KiB",
    "kv_put_1k": "KV v2 put 1 KiB",
    "transit_encrypt_1k": "Transit encrypt 1 KiB",
    "transit_decrypt_1k": "Transit decrypt 1 KiB",
    "transit_hmac": "Transit HMAC",
}

# Issue 18's peer targets: (our scenario, their shape) at c=64, each >= 1.0x.
PROD_TARGETS = (("verify_warm", "token_lookup"), ("open_1k", "kv_get_1k"), ("seal_1k", "kv_put_1k"))
DEV_TARGETS = (
    *PROD_TARGETS,
    ("seal_1k", "transit_encrypt_1k"),
    ("open_1k", "transit_decrypt_1k"),
    ("fp_1", "transit_hmac"),
)
# Per call, against the empty RPC at c=64.
EMPTY_TARGETS = (("verify_warm", 0.8), ("open_1k", 0.5), ("seal_1k", 0.5))
EMPTY_CPU_US = 300.0
GATEWAY_RATIO = 100.0
GATEWAY_REVOCATION_S = 1.0
SCALE_BAND = 0.10
FP_100_RATE = 100_000.0  # kept from the earlier bar (issue 9)
GATEWAY_JSON = "gateway_cache.json"  # written by bench/gateway_cache.py (its --output default)


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
            + (f"  ({_notes(r)})" if _notes(r) else "")
        )
    return "\n".join(lines)


def _notes(r: Result) -> str:
    split = "/".join(f"{x:.0f}" for x in r.server_cpu_split)
    return "; ".join(x for x in (r.notes, f"CPU split {split}%" if split else "") if x)


def markdown_table(results: Sequence[Result]) -> str:
    """The same table in Markdown (for bench/README.md)."""
    lines = [
        "| group | scenario | c | calls/s | items/s | p50 ms | p99 ms | p99.9 ms | errors "
        "| server CPU % | server us/call | RSS MB | x empty | notes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.group} | {r.label} | {r.concurrency} | {r.status} |" + " |" * 10)
            continue
        ratio = f"{r.ratio_to_empty:.2f}" if r.ratio_to_empty is not None else "-"
        items = _fmt_num(r.items_per_s) if r.items_per_s != r.throughput else ""
        lines.append(
            f"| {r.group} | {r.label} | {r.concurrency} | {_fmt_num(r.throughput)} | {items} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} | {sum(r.errors.values())} "
            f"| {r.server_cpu_pct:.0f} | {r.server_cpu_us_per_call:.0f} | {r.server_rss_mb:.0f} "
            f"| {ratio} | {_notes(r)} |"
        )
    return "\n".join(lines)


def _find(results: Sequence[Result], group: str, scenario: str, c: int) -> Result | None:
    for r in results:
        if r.group == group and r.scenario == scenario and r.concurrency == c and r.status == "ok":
            return r
    return None


def set_empty_ratios(results: Sequence[Result]) -> None:
    """Fill ``ratio_to_empty`` of our rows from the empty run at the same concurrency.

    Rows of the channel sweep (group ``channels``) compare with the empty run of the same
    concurrency and the same count of channels.
    """
    for r in results:
        if r.group not in ("zumik", "channels") or r.status != "ok":
            continue
        empty = next(
            (
                e
                for e in results
                if e.group == r.group
                and e.scenario == "empty"
                and e.concurrency == r.concurrency
                and (r.group == "zumik" or e.channels == r.channels)
                and e.status == "ok"
            ),
            None,
        )
        if empty and empty.throughput:
            r.ratio_to_empty = r.throughput / empty.throughput


def peer_ratios(results: Sequence[Result], c: int = 64) -> list[dict[str, Any]]:
    """Our/OpenBao throughput ratios per compared pair and peer at concurrency ``c``."""
    out = []
    for peer in PEER_GROUPS:
        for ours, theirs in PEER_PAIRS:
            a = _find(results, "zumik", ours, c)
            b = _find(results, peer, theirs, c)
            row: dict[str, Any] = {"peer": peer, "ours": ours, "openbao": theirs, "concurrency": c}
            if a is None or b is None or not b.throughput:
                missing = ours if a is None else f"{peer} {theirs}"
                row["ratio"] = None
                row["note"] = f"{missing} not measured"
                if b is not None and b.status != "ok":
                    row["note"] = f"{peer}: {b.status}"
            else:
                row["ratio"] = a.throughput / b.throughput
                row["ours_per_s"] = a.throughput
                row["openbao_per_s"] = b.throughput
                row["p99_ratio"] = a.p99_ms / b.p99_ms if b.p99_ms else None
            out.append(row)
    return out


def _peer_note(results: Sequence[Result], peer: str, theirs: str, c: int) -> str:
    for r in results:
        if r.group == peer and r.scenario == theirs and r.concurrency == c and r.status != "ok":
            return r.status
    return ""


def read_gateway(results_dir: Path) -> dict[str, Any] | None:
    """The figures bench/gateway_cache.py left in ``results_dir`` (None when it has not run)."""
    path = results_dir / GATEWAY_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gateway_targets(gateway: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The two gateway-cache targets from bench/gateway_cache.py's JSON (or not measured).

    Its JSON holds, per backend, ``ratio_per_client_core`` and ``revocation_ms`` (``p99``,
    ``n``): the worst backend counts, and the revocation target needs both backends with at
    least 100 revocations each.
    """
    ratio = rev = None
    where = f"not measured (no bench/results/{GATEWAY_JSON}: run python -m bench.gateway_cache)"
    rev_note = where
    backends = (gateway or {}).get("backends")
    if isinstance(backends, dict) and backends:
        names = ", ".join(sorted(backends))
        date = (gateway or {}).get("date") or "undated"
        where = f"bench/gateway_cache.py, {date} ({names})"
        ratios = [_num(b.get("ratio_per_client_core")) for b in backends.values()]
        known = [x for x in ratios if x is not None]
        ratio = min(known) if known else None
        revs = [b.get("revocation_ms") or {} for b in backends.values()]
        p99s = [_num(r.get("p99")) for r in revs]
        counts = [int(r.get("n") or 0) for r in revs]
        if all(x is not None for x in p99s):
            rev = max(x for x in p99s if x is not None) / 1000.0
        rev_note = f"{where}; revocations per backend: {', '.join(map(str, counts))}"
        if rev is not None and (len(backends) < 2 or min(counts) < 100):
            rev_note += " (the target asks for both backends and >= 100 each)"
    rev_met = None
    if rev is not None:
        full = len(backends or {}) >= 2 and "(the target asks" not in rev_note
        rev_met = rev <= GATEWAY_REVOCATION_S and full
    return [
        _target(
            "gateway_cache_vs_uncached",
            "gateway",
            f"gateway cache >= {GATEWAY_RATIO:.0f}x uncached VerifyApiKey per client core",
            ratio,
            None if ratio is None else ratio >= GATEWAY_RATIO,
            where,
            unit="x",
        ),
        _target(
            "gateway_revocation_p99",
            "gateway",
            f"revocation seen through the cache within {GATEWAY_REVOCATION_S:.0f} s (p99)",
            rev,
            rev_met,
            rev_note,
            unit="s",
        ),
    ]


def scale_targets(scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Verify and Open within 10% from 1,000 to the large size (every round), from bench/scale."""
    out = []
    ratios = (scale or {}).get("ratios") or {}
    sizes = (scale or {}).get("sizes") or [1_000, 1_000_000]
    for name in ("verify_warm", "open_1k"):
        r = ratios.get(name) or {}
        value = _num(r.get("ratio"))
        spread = r.get("round_ratios") or []
        note = "not measured (scale runs in the full run, or with --scale)"
        met: bool | None = None
        if value is not None:
            rounds = [x for x in spread if isinstance(x, int | float)]
            worst = max((abs(1 - x) for x in rounds), default=abs(1 - value))
            met = abs(1 - value) <= SCALE_BAND and worst <= SCALE_BAND
            note = (
                f"{len(rounds)} rounds: " + ", ".join(f"{x:.2f}" for x in rounds)
                if rounds
                else "one round"
            )
            a, b = r.get("cpu_us_per_call_small"), r.get("cpu_us_per_call_large")
            if a and b:
                note += f"; server CPU/call {a:,.0f} -> {b:,.0f} us ({b / a:.2f}x)"
        out.append(
            _target(
                f"scale_{name}",
                "scale",
                f"{_NAMES[name]}: {sizes[-1]:,} rows within 10% of {sizes[0]:,}"
                " (median; every round)",
                value,
                met,
                note,
                unit="x",
            )
        )
    return out


def _target(
    key: str, kind: str, text: str, value: float | None, met: bool | None, note: str, unit: str
) -> dict[str, Any]:
    return {
        "target": key,
        "kind": kind,
        "text": text,
        "value": value,
        "met": met,
        "note": note,
        "unit": unit,
    }


def targets(
    results: Sequence[Result],
    c: int = 64,
    *,
    gateway: dict[str, Any] | None = None,
    scale: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every target of issue 18, each a ratio within this run: met, missed or not measured."""
    out: list[dict[str, Any]] = []
    for peer, pairs, where in (
        ("openbao_prod", PROD_TARGETS, "production-like OpenBao"),
        ("openbao", DEV_TARGETS, "OpenBao dev server"),
    ):
        for ours, theirs in pairs:
            a = _find(results, "zumik", ours, c)
            b = _find(results, peer, theirs, c)
            value: float | None = None
            if a is None or b is None or not b.throughput:
                note = _peer_note(results, peer, theirs, c) or (
                    f"{ours if a is None else theirs} not measured"
                )
            else:
                value = a.throughput / b.throughput
                note = (
                    f"{a.throughput:,.0f}/s vs {b.throughput:,.0f}/s; server CPU/call "
                    f"{a.server_cpu_us_per_call:,.0f} vs {b.server_cpu_us_per_call:,.0f} us; "
                    f"load {a.load1:.1f} vs {b.load1:.1f}"
                )
            out.append(
                _target(
                    f"{ours}_vs_{theirs}_{'prod' if peer == 'openbao_prod' else 'dev'}",
                    peer,
                    f"{_NAMES[ours]} >= 1.0x {_NAMES[theirs]} ({where}, c={c})",
                    value,
                    None if value is None else value >= 1.0,
                    note,
                    unit="x",
                )
            )
    empty = _find(results, "zumik", "empty", c)
    for ours, bar in EMPTY_TARGETS:
        a = _find(results, "zumik", ours, c)
        value = a.throughput / empty.throughput if a and empty and empty.throughput else None
        out.append(
            _target(
                f"{ours}_vs_empty",
                "per_call",
                f"{_NAMES[ours]} >= {bar}x the empty RPC (c={c})",
                value,
                None if value is None else value >= bar,
                "" if value is not None else f"{ours} or empty not measured",
                unit="x",
            )
        )
    cpu = empty.server_cpu_us_per_call if empty else None
    out.append(
        _target(
            "empty_cpu_us",
            "per_call",
            f"empty RPC <= {EMPTY_CPU_US:.0f} us of server CPU per call (c={c})",
            cpu,
            None if cpu is None else cpu <= EMPTY_CPU_US,
            "" if cpu is not None else "empty not measured",
            unit="us",
        )
    )
    out += gateway_targets(gateway)
    out += scale_targets(scale)
    fps = [
        r.items_per_s
        for r in results
        if r.group == "zumik" and r.scenario == "fp_100" and r.status == "ok"
    ]
    best = max(fps) if fps else None
    out.append(
        _target(
            "fp_100_rate",
            "earlier",
            "Fingerprint batch 100 >= 100,000 fingerprints/s (kept from the earlier bar)",
            best,
            None if best is None else best >= FP_100_RATE,
            "" if best is not None else "fp_100 not measured",
            unit="/s",
        )
    )
    return out


def _state(t: dict[str, Any]) -> str:
    return "not measured" if t["met"] is None else ("MET" if t["met"] else "MISSED")


def _value(t: dict[str, Any]) -> str:
    v = t["value"]
    if v is None:
        return ""
    unit = t.get("unit", "")
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "us":
        return f"{v:,.0f} us"
    return f"{v:,.0f}{unit}"


def targets_text(rows: Sequence[dict[str, Any]]) -> str:
    """Targets as lines: MET / MISSED / not measured, with the measured value and its basis."""
    met = sum(1 for t in rows if t["met"] is True)
    missed = sum(1 for t in rows if t["met"] is False)
    out = [f"  {met} met, {missed} missed, {len(rows) - met - missed} not measured"]
    for t in rows:
        value = _value(t)
        note = t.get("note", "")
        tail = f" = {value}" if value else ""
        tail += f"  [{note}]" if note else ""
        out.append(f"  [{_state(t)}] {t['text']}{tail}")
    return "\n".join(out)


def targets_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Targets as a Markdown table."""
    out = ["| target | measured | state | basis |", "|---|--:|---|---|"]
    for t in rows:
        state = {"MET": "**met**", "MISSED": "missed"}.get(_state(t), "not measured")
        out.append(f"| {t['text']} | {_value(t)} | {state} | {t.get('note', '')} |")
    return "\n".join(out)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write the JSON report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _chart_name(r: Result) -> str:
    return f"{'OpenBao ' if r.group in PEER_GROUPS else ''}{r.label}"


def write_chart(path: Path, results: Sequence[Result], title: str) -> bool:
    """A PNG of throughput per scenario and concurrency (and p99); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in results if r.status == "ok" and r.group in MAIN_GROUPS]
    if not rows:
        return False
    labels: list[str] = []
    for r in rows:
        name = _chart_name(r)
        if name not in labels:
            labels.append(name)
    concurrencies = sorted({r.concurrency for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.45 * len(labels) + 2.5))
    height = 0.8 / max(1, len(concurrencies))
    for j, c in enumerate(concurrencies):
        xs, ps, ys = [], [], []
        for i, name in enumerate(labels):
            for r in rows:
                if _chart_name(r) == name and r.concurrency == c:
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


def peer_ratios_markdown(peers: Sequence[dict[str, Any]]) -> str:
    """Our/OpenBao ratios, one column per peer."""
    out = [
        "| ours | OpenBao shape | vs production-like | vs dev server | p99 ratio (prod / dev) |",
        "|---|---|--:|--:|--:|",
    ]
    by_pair: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for p in peers:
        by_pair.setdefault((p["ours"], p["openbao"]), {})[p.get("peer", "openbao")] = p

    def cell(p: dict[str, Any] | None, key: str = "ratio") -> str:
        if p is None or p.get(key) is None:
            return "n/a" if key == "ratio" else "-"
        return f"{p[key]:.2f}x" if key == "ratio" else f"{p[key]:.2f}"

    for (ours, theirs), by_peer in by_pair.items():
        prod, dev = by_peer.get("openbao_prod"), by_peer.get("openbao")
        out.append(
            f"| {ours} | {theirs} | {cell(prod)} | {cell(dev)} "
            f"| {cell(prod, 'p99_ratio')} / {cell(dev, 'p99_ratio')} |"
        )
    return "\n".join(out)


def peer_ratios_text(peers: Sequence[dict[str, Any]]) -> str:
    """Our/OpenBao ratios for the terminal."""
    if all(p["ratio"] is None for p in peers):
        return "  not measured (no pair has both sides in this run)"
    out = []
    for p in peers:
        ratio = "n/a (" + p.get("note", "") + ")" if p["ratio"] is None else f"{p['ratio']:.2f}x"
        out.append(
            f"  {p.get('peer', 'openbao'):<13} {p['ours']:<12} vs {p['openbao']:<20} {ratio}"
        )
    return "\n".join(out)


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
        f"{', '.join(f'{x:.1f}' for x in m['load_avg_at_start'])}"
        + (
            f", at end {', '.join(f'{x:.1f}' for x in m['load_avg_at_end'])}."
            if m.get("load_avg_at_end")
            else "."
        ),
        "",
        f"### Scenarios (ours, threaded server, {_shape(payload)}) and the OpenBao peers",
        "",
        markdown_table([r for r in results if r.group in MAIN_GROUPS]),
        "",
        "### Targets (issue 18; ratios within this run)",
        "",
        targets_markdown(payload.get("targets", [])),
        "",
        "### Ours / OpenBao at c=64",
        "",
        peer_ratios_markdown(payload.get("peer_ratios", [])),
    ]
    for group, title in (
        ("channels", "Channel sweep (channels per generator)"),
        ("scale", "Scale (PostgreSQL, c=64)"),
        ("arch", "Architecture"),
    ):
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
