"""The insecure-transport check passes on the code and catches what it should."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.security.rpcs import REPO

SCRIPT = REPO / "scripts" / "check_no_insecure_transport.py"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_no_insecure_transport", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_service_and_clients_build_no_insecure_transport() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "service", "clients"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no insecure port or channel" in done.stdout


@pytest.mark.parametrize(
    "snippet",
    [
        "import grpc\ngrpc.insecure_channel('x')",
        "server.add_insecure_port('[::]:1')",
        "from grpc import insecure_channel\ninsecure_channel('x')",
        "grpc.experimental.insecure_channel_credentials()",
        "grpc.local_channel_credentials()",
        "stub.Call(req, 'host', insecure=True)",
        "requests.get(url, verify=False)",
        "import ssl\nctx = ssl.create_default_context()\nctx.verify_mode = ssl.CERT_NONE",
        "ctx.check_hostname = False",
        "ssl._create_unverified_context()",
        "grpc.ssl_server_credentials(pairs, root_certificates=ca, require_client_auth=False)",
    ],
)
def test_checker_catches(snippet: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text(snippet + "\n")
    assert _checker().check_file(path), snippet


def test_checker_ignores_safe_code_and_honours_allow(tmp_path: Path) -> None:
    path = tmp_path / "ok.py"
    path.write_text(
        "# grpc.insecure_channel in a comment\n"
        "text = 'add_insecure_port'\n"
        "def call(insecure=False): ...\n"
        "grpc.ssl_server_credentials(pairs, root_certificates=ca, require_client_auth=True)\n"
        "grpc.insecure_channel('x')  # transport-check: allow test double\n"
    )
    assert _checker().check_file(path) == []
