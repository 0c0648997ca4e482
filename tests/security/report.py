"""Case counts of the hardening suite, printed in the terminal summary.

A plugin loaded from ``tests/conftest.py`` (not a hook of ``tests/security/conftest.py``): under
pytest-xdist only the controller prints the summary, and it never loads sub-directory conftests.
Tests report counts through ``user_properties``, which xdist ships to the controller.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

_COUNTS: Counter[tuple[str, str]] = Counter()


def count_cases(request: pytest.FixtureRequest, kind: str, service: str, n: int) -> None:
    """Count ``n`` cases of ``kind`` for ``service`` (summed over xdist workers)."""
    request.node.user_properties.append(("zumik_cases", (kind, service, n)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == "zumik_cases":
            kind, service, n = value
            _COUNTS[(kind, service)] += n


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _COUNTS:
        return
    terminalreporter.write_sep("-", "hardening suite: cases run")
    kinds = sorted({k for k, _ in _COUNTS})
    for kind in kinds:
        per_service = {s: n for (k, s), n in _COUNTS.items() if k == kind}
        total = sum(per_service.values())
        detail = ", ".join(f"{s}={n}" for s, n in sorted(per_service.items()))
        terminalreporter.write_line(f"{kind}: {total} ({detail})")
