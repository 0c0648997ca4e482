"""`make buf-breaking` (run by `make test`, so by CI) fails on a breaking contract change.

Each case copies the contracts, the Makefile and buf's configuration into a scratch directory
(node_modules linked), edits the copy, and runs the same make target CI runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "node_modules" / ".bin" / "buf"
SEAL = Path("proto/zumik/secrets/v1/seal_service.proto")

pytestmark = pytest.mark.skipif(
    not BUF.exists(), reason="buf is not installed: run `make node_modules` (make test does)"
)


def _copy(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("Makefile", "buf.yaml", "package.json", "package-lock.json"):
        shutil.copy2(REPO / name, work / name)
    shutil.copytree(REPO / "proto", work / "proto")
    (work / "node_modules").symlink_to(REPO / "node_modules")
    return work


def _buf_breaking(work: Path) -> subprocess.CompletedProcess[str]:
    # -o: never try to reinstall node_modules in the copy.
    return subprocess.run(
        ["make", "-C", str(work), "-o", "node_modules/.zumik.stamp", "buf-breaking"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))},
    )


def _edit(work: Path, pattern: str, replacement: str) -> None:
    path = work / SEAL
    text = path.read_text(encoding="utf-8")
    edited, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"pattern {pattern!r} not found in {SEAL}"
    path.write_text(edited, encoding="utf-8")


def test_the_current_contract_is_compatible_with_the_released_one(tmp_path: Path) -> None:
    out = _buf_breaking(_copy(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_removed_field_fails(tmp_path: Path) -> None:
    work = _copy(tmp_path)
    # Secret.display_name (field 2) and its comment go.
    _edit(work, r"^(\s*//[^\n]*\n)*\s*string display_name = 2;\n", "")
    out = _buf_breaking(work)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert 'Previously present field "2" with name "display_name" on message "Secret"' in text


def test_a_renumbered_field_fails(tmp_path: Path) -> None:
    work = _copy(tmp_path)
    _edit(work, r"string display_name = 2;", "string display_name = 99;")
    out = _buf_breaking(work)
    assert out.returncode != 0
    assert "display_name" in out.stdout + out.stderr


def test_an_added_field_passes(tmp_path: Path) -> None:
    work = _copy(tmp_path)
    _edit(
        work,
        r"(\s*string display_name = 2;\n)",
        r"\1  // A field added later: compatible.\n  string added_later = 999;\n",
    )
    out = _buf_breaking(work)
    assert out.returncode == 0, out.stdout + out.stderr
