"""The import graph of service/: no module imports another module's private name, no cycles.

A private name (leading underscore) is private to the module that defines it; a private module
(``storage/_common.py``) is private to its package, so modules inside that package may import
it and nothing outside may. Every import counts, also those inside functions and under
``TYPE_CHECKING``: a lazy import that closes a circle is still a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "service"
PACKAGE = "zumik_secrets"

# Violations left on purpose, each with its reason (none at present).
ALLOWED_PRIVATE: set[tuple[str, str]] = set()
ALLOWED_CYCLES: list[set[str]] = []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


MODULES = _modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    drop = node.level - 1 if is_package else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def _imports(importer: str) -> Iterator[tuple[str, str | None, int]]:
    """``(module, name or None, line)`` for every import of ``importer`` inside the package."""
    tree = ast.parse(MODULES[importer].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(importer, node)
            if module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                yield module, alias.name, node.lineno


def _private_violations(importer: str) -> Iterator[str]:
    for module, name, line in _imports(importer):
        target = module if name is None or f"{module}.{name}" not in MODULES else f"{module}.{name}"
        parts = target.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])  # a private module is private to its package
            if _is_private(part) and importer != owner and not importer.startswith(owner + "."):
                yield f"{importer}:{line} imports private module {target}"
        if name is not None and target == module and _is_private(name):
            yield f"{importer}:{line} imports private name {name} from {module}"


def _edges(importer: str) -> set[str]:
    out: set[str] = set()
    for module, name, _line in _imports(importer):
        target = f"{module}.{name}" if f"{module}.{name}" in MODULES else module
        if target in MODULES and target != importer:
            out.add(target)
    return out


def _cycles() -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: _edges(m) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("importer", sorted(MODULES))
def test_no_module_imports_a_private_name_of_another(importer: str) -> None:
    bad = [v for v in _private_violations(importer) if (importer, v) not in ALLOWED_PRIVATE]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    cycles = [sorted(c) for c in _cycles() if c not in ALLOWED_CYCLES]
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_can_fail() -> None:
    """The scanner sees the shapes it forbids (guards against a test that cannot fail)."""
    assert _is_private("_Db") and not _is_private("__all__")
    assert "zumik_secrets.storage.sqlite.kernel" in _edges("zumik_secrets.storage.sqlite.store")
