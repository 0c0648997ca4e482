"""Dependencies inside the service point one way: core -> storage -> app -> api -> server -> cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "service" / "zumik_secrets"
ORDER = ["core", "storage", "app", "api", "server", "cli"]
# What each layer may import from third parties that matter for purity.
FORBIDDEN_THIRD_PARTY = {
    "core": {"grpc", "psycopg", "psycopg_pool", "opentelemetry", "sqlite3", "logging"},
    "storage": {"grpc", "opentelemetry"},
    "app": {"grpc"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _files() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in ORDER for path in sorted((ROOT / layer).rglob("*.py"))]


@pytest.mark.parametrize(
    ("layer", "path"), _files(), ids=lambda v: str(v).split("zumik_secrets/")[-1]
)
def test_imports_point_down(layer: str, path: Path) -> None:
    allowed = set(ORDER[: ORDER.index(layer) + 1])
    for module in _imports(path):
        top = module.split(".")[0]
        if module.startswith("zumik_secrets."):
            target = module.split(".")[1]
            assert target in allowed, f"{path.name} ({layer}) imports {module} from a higher layer"
        assert top not in FORBIDDEN_THIRD_PARTY.get(layer, set()), (
            f"{path.name} ({layer}) imports {top}"
        )


def test_only_primitives_imports_hazmat() -> None:
    for path in (ROOT / "core").rglob("*.py"):
        if path.name == "primitives.py":
            continue
        assert not any("hazmat" in m for m in _imports(path)), path.name
