"""The benchmark harness's imports run one way: no bench/ module imports one that imports it back.

Every import counts, also the ones under ``if TYPE_CHECKING:`` and inside functions: a circle that
only type checkers or a late import see is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_imports(source: str, modules: set[str]) -> set[str]:
    """The bench modules (``bench.x``) that ``source`` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            if node.module == "bench":
                found.update(f"bench.{a.name}" for a in node.names if f"bench.{a.name}" in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the bench modules it imports (the package itself, ``bench``, included)."""
    files = {
        ("bench" if p.stem == "__init__" else f"bench.{p.stem}"): p for p in BENCH.glob("*.py")
    }
    names = set(files)
    return {m: bench_imports(p.read_text(), names) - {m} for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk (each reported once, from its first node)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


def test_the_detector_sees_a_circle() -> None:
    graph = {"bench.a": {"bench.b"}, "bench.b": {"bench.c"}, "bench.c": {"bench.a"}}
    assert cycles(graph) == [["bench.a", "bench.b", "bench.c", "bench.a"]]
    source = "if TYPE_CHECKING:\n    from bench.cli import Settings\n"
    assert bench_imports(source, {"bench.cli"}) == {"bench.cli"}
    assert bench_imports("def f():\n    from bench import report\n", {"bench.report"}) == {
        "bench.report"
    }


def test_bench_has_no_import_circles() -> None:
    graph = import_graph()
    assert "bench.cli" in graph and "bench.settings" in graph
    assert cycles(graph) == []


def test_only_the_entry_point_imports_the_cli() -> None:
    importers = sorted(m for m, deps in import_graph().items() if "bench.cli" in deps)
    assert importers == ["bench.__main__"]
