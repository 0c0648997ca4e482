"""The benchmark harness's pure parts: plan, percentiles, ratios, targets, tables, profile folding.

Nothing here starts a server or measures anything (CI never runs the bench itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.cli import build_parser, main, plan_text, settings_from
from bench.loadgen import http_path, split_concurrency
from bench.profiling import fold
from bench.runner import Result, percentile
from bench.scale import scale_ratios


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


def _met(rows: list[dict[str, object]]) -> dict[object, object]:
    return {t["target"]: t["met"] for t in rows}


def test_ratios_targets_and_peer_pairs() -> None:
    rows = [
        _row("zumik", "empty", 64, 1000.0, p99=10.0, server_cpu_us_per_call=280.0),
        _row("zumik", "verify_warm", 64, 850.0, p99=14.0),
        _row("zumik", "seal_1k", 64, 400.0),
        _row("zumik", "open_1k", 64, 700.0),
        _row("zumik", "fp_1", 64, 900.0),
        Result("zumik", "fp_100", "fp_100", 64, throughput=1200.0, items_per_s=120_000.0),
        _row("openbao_prod", "token_lookup", 64, 800.0),
        _row("openbao_prod", "kv_get_1k", 64, 1400.0),
        _row("openbao_prod", "kv_put_1k", 64, 300.0),
        _row("openbao", "token_lookup", 64, 1700.0),
        _row("openbao", "kv_get_1k", 64, 600.0),
        _row("openbao", "transit_encrypt_1k", 64, 1000.0),
        _row("openbao", "transit_hmac", 64, 900.0),
        Result("openbao", "kv_put_1k", "x", 64, status="failed: OpenBao (dev) did not run: boom"),
    ]
    report.set_empty_ratios(rows)
    assert rows[1].ratio_to_empty == pytest.approx(0.85)
    got = report.targets(rows)
    assert _met(got) == {
        "verify_warm_vs_token_lookup_prod": True,
        "open_1k_vs_kv_get_1k_prod": False,
        "seal_1k_vs_kv_put_1k_prod": True,
        "verify_warm_vs_token_lookup_dev": False,
        "open_1k_vs_kv_get_1k_dev": True,
        "seal_1k_vs_kv_put_1k_dev": None,  # the peer failed: said so, not guessed
        "seal_1k_vs_transit_encrypt_1k_dev": False,
        "open_1k_vs_transit_decrypt_1k_dev": None,
        "fp_1_vs_transit_hmac_dev": True,
        "verify_warm_vs_empty": True,
        "open_1k_vs_empty": True,
        "seal_1k_vs_empty": False,
        "empty_cpu_us": True,
        "gateway_cache_vs_uncached": None,
        "gateway_revocation_p99": None,
        "scale_verify_warm": None,
        "scale_open_1k": None,
        "fp_100_rate": True,
    }
    by_key = {t["target"]: t for t in got}
    assert by_key["verify_warm_vs_token_lookup_prod"]["value"] == pytest.approx(850 / 800)
    assert "did not run: boom" in by_key["seal_1k_vs_kv_put_1k_dev"]["note"]
    assert by_key["verify_warm_vs_token_lookup_prod"]["note"] == (
        "850/s vs 800/s; server CPU/call 0 vs 0 us; load 0.0 vs 0.0"
    )
    assert by_key["seal_1k_vs_empty"]["value"] == pytest.approx(0.4)
    peers = {(p["peer"], p["openbao"]): p for p in report.peer_ratios(rows)}
    assert peers[("openbao_prod", "kv_put_1k")]["ratio"] == pytest.approx(400 / 300)
    assert peers[("openbao", "transit_decrypt_1k")]["ratio"] is None
    assert "not measured" in peers[("openbao", "transit_decrypt_1k")]["note"]
    text = report.targets_text(got)
    assert "[MISSED] Seal 1 KiB >= 0.5x the empty RPC" in text and "[not measured]" in text
    assert text.splitlines()[0].strip() == "8 met, 4 missed, 6 not measured"
    md = report.peer_ratios_markdown(report.peer_ratios(rows))
    assert "| verify_warm | token_lookup | 1.06x | 0.50x |" in md
    assert "| not measured |" in report.targets_markdown(got)


def test_gateway_figures_come_from_gateway_cache_json(tmp_path: Path) -> None:
    assert report.read_gateway(tmp_path) is None
    assert _met(report.gateway_targets(None)) == {
        "gateway_cache_vs_uncached": None,
        "gateway_revocation_p99": None,
    }

    def backend(ratio: float, p99_ms: float, n: int = 120) -> dict[str, object]:
        return {"ratio_per_client_core": ratio, "revocation_ms": {"p99": p99_ms, "n": n}}

    def write(backends: dict[str, object]) -> list[dict[str, object]]:
        payload = {"date": "2026-12-03T23:00:00Z", "backends": backends}
        (tmp_path / report.GATEWAY_JSON).write_text(json.dumps(payload))
        return report.gateway_targets(report.read_gateway(tmp_path))

    got = write({"sqlite": backend(250.0, 200.0), "postgresql": backend(180.0, 1400.0)})
    assert _met(got) == {"gateway_cache_vs_uncached": True, "gateway_revocation_p99": False}
    assert got[0]["value"] == 180.0 and got[1]["value"] == pytest.approx(1.4)  # the worst
    got = write({"sqlite": backend(40.0, 300.0), "postgresql": backend(150.0, 500.0)})
    assert _met(got) == {"gateway_cache_vs_uncached": False, "gateway_revocation_p99": True}
    got = write({"sqlite": backend(400.0, 300.0)})  # one backend is not the target
    assert _met(got) == {"gateway_cache_vs_uncached": True, "gateway_revocation_p99": False}
    got = write({"sqlite": backend(400.0, 30.0, n=50), "postgresql": backend(400.0, 30.0)})
    assert got[1]["met"] is False and ">= 100 each" in got[1]["note"]
    (tmp_path / report.GATEWAY_JSON).write_text("not json")
    assert report.read_gateway(tmp_path) is None


def test_scale_ratios_need_every_round_within_the_band() -> None:
    def r(scenario: str, rate: float) -> Result:
        return _row("scale", scenario, 64, rate)

    measured = [
        (1_000, 1, r("verify_warm", 1000.0)),
        (1_000_000, 1, r("verify_warm", 980.0)),
        (1_000, 2, r("verify_warm", 1100.0)),
        (1_000_000, 2, r("verify_warm", 1050.0)),
        (1_000, 3, r("verify_warm", 900.0)),
        (1_000_000, 3, r("verify_warm", 950.0)),
        (1_000, 1, r("open_1k", 500.0)),
        (1_000_000, 1, r("open_1k", 400.0)),
        (1_000, 2, r("open_1k", 500.0)),
        (1_000_000, 2, r("open_1k", 500.0)),
    ]
    ratios = scale_ratios(measured, 1_000, 1_000_000)
    v = ratios["verify_warm"]
    assert v["ratio"] == pytest.approx(980 / 1000) and v["flat_within_10pct"]
    assert v["round_ratios"] == pytest.approx([0.98, 1050 / 1100, 950 / 900])
    assert v["spread_small"] == pytest.approx(0.2)
    assert v["cpu_us_per_call_small"] == 0.0  # the rows here carry no CPU figures
    assert not ratios["open_1k"]["flat_within_10pct"]  # round 1 is 0.80
    met = _met(report.scale_targets({"ratios": ratios}))
    assert met == {"scale_verify_warm": True, "scale_open_1k": False}


def test_http_paths_name_each_put_and_index_each_get() -> None:
    assert http_path("/v1/kv/data/bench-{k}", 7, "") == "/v1/kv/data/bench-7"
    assert http_path("/v1/kv/data/put-{n}", 3, "12-0-4-9") == "/v1/kv/data/put-12-0-4-9"
    assert http_path("/v1/auth/token/lookup-self", 0, "x") == "/v1/auth/token/lookup-self"


def test_channel_sweep_rows_compare_with_the_empty_run_of_their_channels() -> None:
    rows = [
        _row("channels", "empty", 64, 1000.0, channels=2),
        _row("channels", "empty", 64, 2000.0, channels=8),
        _row("channels", "verify_warm", 64, 800.0, channels=2),
        _row("channels", "verify_warm", 64, 800.0, channels=8, server_cpu_split=[61.5, 38.5]),
    ]
    report.set_empty_ratios(rows)
    assert [r.ratio_to_empty for r in rows[2:]] == [pytest.approx(0.8), pytest.approx(0.4)]
    assert "(CPU split 62/38%)" in report.table(rows)
    assert "| CPU split 62/38% |" in report.markdown_table(rows)
    s = settings_from(build_parser().parse_args(["--channels", "2,4,8", "--quick"]))
    assert s.channels == 2 and s.channel_sweep == [2, 4, 8]
    assert s.peer_concurrency == [64]
    assert "channel sweep: [2, 4, 8]" in plan_text(s)
    one = settings_from(build_parser().parse_args(["--channels", "8"]))
    assert one.channels == 8 and one.channel_sweep == [] and one.peer_concurrency == [1, 16, 64]


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
    assert full.scale and full.arch and full.profile and full.scale_rounds == 3
    only = settings_from(build_parser().parse_args(["--scenario", "seal_1k"]))
    assert only.scenarios == ["empty", "seal_1k"]  # the ceiling is always measured
    assert "estimated time" in plan_text(s)
    assert main(["--quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "scenarios:" in out and "dev + production-like" in out


def test_chart_renders(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [_row("zumik", "empty", 1, 600.0), _row("openbao", "token_lookup", 1, 500.0)]
    assert report.write_chart(tmp_path / "c.png", rows, "t")
    assert (tmp_path / "c.png").stat().st_size > 1000
