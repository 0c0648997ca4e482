"""The leak sweep catches planted leaks (and stays quiet without them).

Each case runs a tiny pytest session in a subprocess with only ``tests.fix_leaks`` loaded; its
own ``--basetemp`` keeps pytest from pruning this session's temp directories.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.security.rpcs import REPO

LOG_SECRET = "planted-LOG-secret-8f2c61ad"
DB_SECRET = "planted-DB-secret-5e07b9c4"
SPAN_SECRET = "planted-SPAN-secret-c3a1d7"
API_KEY = "zk_live_4bC9dE2fG7hJ1kL3mN5pQ8_Xr7Tz2Wq9Ls4Kd8Mf1Hb6Nc3Vj5Gp0Ya2Q1w2E3"
KEY_PIECE = "7Tz2Wq9Ls4Kd8M"  # 14 characters of the key's secret part, logged on their own
LABEL_SECRET = "planted-LABEL-secret-91be0f"
EXEMPLAR_SECRET = "planted-EXEMPLAR-secret-4d6a2e"
PUBLIC_PLANT = "planted-in-a-public-field-0b5e9d17"

PLANTED = f'''
import logging
import sqlite3

from opentelemetry import trace


def test_logs_a_secret(leak_registry):
    leak_registry.add("{LOG_SECRET}", "planted")
    logging.getLogger("zumik.test").warning("oops %s", "{LOG_SECRET}")


def test_stores_a_secret(leak_registry, tmp_path):
    leak_registry.add("{DB_SECRET}", "planted")
    with sqlite3.connect(tmp_path / "leaky.db") as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", ("{DB_SECRET}",))


def test_traces_a_secret(leak_registry):
    leak_registry.add("{SPAN_SECRET}", "planted")
    with trace.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("oops", "{SPAN_SECRET}")


def test_logs_a_piece_of_an_api_key(leak_registry):
    leak_registry.add("{API_KEY}", "planted key")
    logging.getLogger("zumik.test").warning("piece %s", "{KEY_PIECE}")


def test_labels_a_secret(leak_registry):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from tests import fix_leaks

    leak_registry.add("{LABEL_SECRET}", "planted")
    reader = InMemoryMetricReader()
    MeterProvider(metric_readers=[reader]).get_meter("t").create_counter("c").add(
        1, {{"oops": "{LABEL_SECRET}"}}
    )
    fix_leaks.record_metrics(reader, "planted metrics")


def test_exemplar_keeps_a_secret(leak_registry):
    # A view drops the label from the data point; the exemplar keeps it (filtered_attributes).
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import View

    from tests import fix_leaks

    leak_registry.add("{EXEMPLAR_SECRET}", "planted")
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader], views=[View(instrument_name="h", attribute_keys={{"kept"}})]
    )
    histogram = provider.get_meter("t").create_histogram("h")
    with trace.get_tracer("t").start_as_current_span("sampled"):
        histogram.record(1.0, {{"kept": "x", "oops": "{EXEMPLAR_SECRET}"}})
    fix_leaks.record_metrics(reader, "planted exemplars")


def test_echoes_a_value_planted_in_a_public_field(leak_registry):
    # The rich-mode sweep sends secret-shaped values in non-sensitive fields on purpose: being
    # "public" must not take them out of the sweep.
    leak_registry.add("{PUBLIC_PLANT}", "planted public", planted=True)
    leak_registry.add_public("{PUBLIC_PLANT}")
    logging.getLogger("zumik.test").warning("echo %s", "{PUBLIC_PLANT}")
'''  # noqa: S608 - Python source of the planted tests, not SQL

CLEAN = f'''
import logging


def test_keeps_a_secret(leak_registry):
    leak_registry.add("{LOG_SECRET}", "planted")
    logging.getLogger("zumik.test").warning("nothing to see")
'''


def _run(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_planted.py"
    test_file.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ZUMIK_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "service"), str(REPO / "clients/python/src")]
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-p",
            "tests.fix_leaks",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            "--basetemp",
            str(tmp_path / "basetemp"),
            str(test_file),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def test_planted_leaks_fail_the_session_and_are_named(tmp_path: Path) -> None:
    done = _run(tmp_path, PLANTED)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "7 passed" in out  # the tests themselves pass: the sweep fails the session
    assert "LEAK SWEEP FAILED" in out
    assert f"sha256:{_digest(LOG_SECRET)}" in out and "log records" in out
    assert f"sha256:{_digest(DB_SECRET)}" in out and "leaky.db" in out
    assert f"sha256:{_digest(SPAN_SECRET)}" in out and "found in spans" in out
    assert "12-char piece" in out
    for secret in (LABEL_SECRET, EXEMPLAR_SECRET):
        assert f"sha256:{_digest(secret)} (planted) found in metric labels and exemplars" in out
    assert f"sha256:{_digest(PUBLIC_PLANT)}" in out
    for secret in (
        LOG_SECRET,
        DB_SECRET,
        SPAN_SECRET,
        KEY_PIECE,
        API_KEY,
        LABEL_SECRET,
        EXEMPLAR_SECRET,
        PUBLIC_PLANT,
    ):
        assert secret not in out, "the report must never print a secret"


def test_clean_session_passes(tmp_path: Path) -> None:
    done = _run(tmp_path, CLEAN)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "leak sweep: no secret found anywhere" in out
