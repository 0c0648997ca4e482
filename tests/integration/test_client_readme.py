"""Every Python example of clients/python/README.md runs, in order, against a real server.

The README is written for a `make run` server (127.0.0.1:50051, the dev PKI in var/dev/pki):
the test runs its ```python blocks in one namespace from a directory whose var/dev/pki is the
test PKI, with the address replaced by the test server's. ``make client-check`` type-checks the
same blocks with ``mypy --strict`` in a clean venv.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import zumik_secrets_client
from tests import fix_leaks
from tests.fix_server import RunningServer

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "clients" / "python" / "README.md"
DEV_ADDRESS = "127.0.0.1:50051"


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_the_sections_a_user_needs() -> None:
    text = README.read_text()
    for heading in (
        "## Install",
        "## Connect with mTLS",
        "## Get a claim",
        "## Seal and open",
        "## Handle errors by reason",
        "## Refresh: claims and certificates",
        "## Asyncio",
        "## Try it against a local server",
        "## Typing",
    ):
        assert heading in text, heading
    assert len(python_blocks(text)) >= 6
    # The install line names the wheel `make dist` builds for the current version.
    assert f"zumik_secrets_client-{zumik_secrets_client.__version__}-py3" in text


def test_readme_examples_run_against_a_real_server(
    zumik_server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "var" / "dev").mkdir(parents=True)
    (tmp_path / "var" / "dev" / "pki").symlink_to(zumik_server.pki.directory)
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text())
    assert all(DEV_ADDRESS in b for b in blocks[:1])
    namespace: dict[str, Any] = {"__name__": "readme"}
    for number, block in enumerate(blocks, 1):
        code = block.replace(DEV_ADDRESS, zumik_server.target)
        exec(compile(code, f"README.md python block {number}", "exec"), namespace)  # noqa: S102
        if "api_key" in namespace:
            fix_leaks.REGISTRY.add(namespace["api_key"], "README example API key")
    printed = capsys.readouterr().out
    # The error examples took the branches they document.
    assert "not found: tenants/other/projects/web/secrets/" in printed
    assert "forgot the claim" in printed
    assert "plaintext" in printed or "parent" in printed  # a BadRequest field violation
    assert namespace["claims"].refreshes == 1
