"""The benchmark harness's pure parts: plan, percentiles, ratios, targets, tables, profile folding.

Nothing here starts a server or measures anything (CI never runs the bench itself).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.cli import build_parser, main, plan_text, settings_from
from bench.loadgen import split_concurrency
from bench.profiling import fold
from bench.runner import Result, percentile


def _row(group: str, scenario: str, c: int, rate: float, p99: float = 10.0, **kw: object) -> Result:
    return Result(group, scenario, scenario, c, throughput=rate, items_per_s=rate, p99_ms=p99, **kw)


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 1001)]
    assert percentile(values, 0.5) == 500.0
    assert percentile(values, 0.99) == 990.0
    assert percentile(values, 0.999) == 999.0
    assert percentile([], 0.5) == 0.0


def test_split_concurrency_never_leaves_a_generator_empty() -> None:
    assert split_concurrency(1, 2) == [1]
    assert split_concurrency(64, 2) == [32, 32]
    assert split_concurrency(5, 2) == [3, 2]


def test_ratios_targets_and_peer_pairs() -> None:
    rows = [
        _row("zumik", "empty", 64, 1000.0, p99=10.0),
        _row("zumik", "verify_warm", 64, 850.0, p99=14.0),
        _row("zumik", "seal_1k", 64, 500.0),
        _row("zumik", "open_1k", 64, 700.0),
        Result("zumik", "fp_100", "fp_100", 64, throughput=1200.0, items_per_s=120_000.0),
        _row("openbao", "transit_encrypt_1k", 64, 1000.0),
        _row("openbao", "token_lookup", 64, 800.0),
        Result("openbao", "transit_decrypt_1k", "x", 64, status="skipped: bao not found"),
    ]
    report.set_empty_ratios(rows)
    assert rows[1].ratio_to_empty == pytest.approx(0.85)
    met = {t["target"]: t["met"] for t in report.targets(rows)}
    assert met == {
        "verify_warm_vs_empty": True,
        "verify_warm_p99": True,
        "seal_1k_vs_empty": False,
        "open_1k_vs_empty": True,
        "fp_100_rate": True,
        "seal_vs_transit": False,
        "open_vs_transit": None,  # OpenBao side not measured: said so, not guessed
        "verify_vs_lookup": True,
    }
    peers = {p["openbao"]: p for p in report.peer_ratios(rows)}
    assert peers["token_lookup"]["ratio"] == pytest.approx(850 / 800)
    assert peers["transit_decrypt_1k"]["ratio"] is None
    assert "not measured" in peers["transit_decrypt_1k"]["note"]
    text = report.targets_text(report.targets(rows))
    assert "[NOT MET] Seal 1 KiB" in text and "[not measured]" in text


def test_tables_show_unserved_scenarios() -> None:
    rows = [
        _row("zumik", "empty", 1, 600.0),
        Result("zumik", "fp_1", "Fingerprint batch 1", 1, status="not yet served"),
    ]
    report.set_empty_ratios(rows)
    text = report.table(rows)
    assert "not yet served" in text and "1.00" in text
    md = report.markdown_table(rows)
    assert md.count("\n") == 3 and "| not yet served |" in md


def test_fold_py_spy_raw_output() -> None:
    raw = (
        "_bootstrap (threading.py:1);handle (server/interceptor.py:10);"
        "finish (server/telemetry.py:20) 30\n"
        "_bootstrap (threading.py:1);handle (server/interceptor.py:10) 70\n"
    )
    folded = fold(raw)
    assert folded["samples"] == 100
    assert dict(folded["self"])["server/interceptor.py:handle"] == 70.0
    assert dict(folded["inclusive"])["server/telemetry.py:finish"] == 30.0


def test_quick_plan_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    s = settings_from(build_parser().parse_args(["--quick"]))
    assert not (s.scale or s.arch or s.profile)
    assert s.concurrency == [1, 16, 64] and s.scenarios[0] == "empty"
    full = settings_from(build_parser().parse_args([]))
    assert full.scale and full.arch and full.profile
    only = settings_from(build_parser().parse_args(["--scenario", "seal_1k"]))
    assert only.scenarios == ["empty", "seal_1k"]  # the ceiling is always measured
    assert "estimated time" in plan_text(s)
    assert main(["--quick", "--dry-run"]) == 0
    assert "scenarios:" in capsys.readouterr().out


def test_chart_renders(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [_row("zumik", "empty", 1, 600.0), _row("openbao", "token_lookup", 1, 500.0)]
    assert report.write_chart(tmp_path / "c.png", rows, "t")
    assert (tmp_path / "c.png").stat().st_size > 1000
