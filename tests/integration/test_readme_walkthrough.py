"""The README's grpcurl walkthrough, pasted verbatim into bash against a real server.

The blocks run in a scratch directory laid out like a checkout after `make run` (``var/dev/pki``
from the dev PKI, ``.venv`` pointing at this venv) with ``ZUMIK_LISTEN`` naming the server's
address, as a developer who set it would have. The test checks what each step promises and that
the walkthrough left no file behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fix_leaks
from zumik_secrets.cli.dev_pki import generate_dev_pki
from zumik_secrets.core.keyring import generate_keyring

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from ops_lib import ServerProcess  # noqa: E402

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent


def _walkthrough_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## grpcurl walkthrough", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[tuple[Path, ServerProcess]]:
    if not (VENV_BIN / "grpcurl").exists() or not shutil.which("jq"):
        message = "the walkthrough needs grpcurl in the venv and jq on PATH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path / "checkout"
    pki = generate_dev_pki(root / "var/dev/pki")
    (root / ".venv").symlink_to(VENV_BIN.parent)
    keyring = tmp_path / "keyring.json"
    keyring.write_text(generate_keyring(), encoding="utf-8")
    fix_leaks.REGISTRY.add_keyring(keyring.read_text())
    server = ServerProcess(pki, f"sqlite:///{tmp_path}/zumik.db", keyring, tmp_path / "server.log")
    try:
        server.wait_serving()
        yield root, server
    finally:
        server.stop()
        fix_leaks.add_haystack_file(server.log)


def test_readme_walkthrough_runs_verbatim(checkout: tuple[Path, ServerProcess]) -> None:
    root, server = checkout
    blocks = _walkthrough_blocks()
    assert len(blocks) >= 2, "the walkthrough has its setup and flow blocks (then examples)"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    # A PATH without the venv: the walkthrough's own first line must find grpcurl.
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN
    )
    env["ZUMIK_LISTEN"] = server.target
    # Every command that exits non-zero is reported with its line (the ERR trap); only the
    # ones the README says fail may. Asserting on the output alone let a failing step pass
    # unseen when another step printed what it promised (the break-glass Open printed nothing,
    # the executor's Open the plaintext the test looked for).
    trap = "trap 'echo \"STEP FAILED [$?] line $LINENO\" >&2' ERR\n"
    script = trap + "\n".join(blocks) + '\necho "KEY_AFTER=[${KEY:-}] CLAIM_AFTER=[${CLAIM:-}]"\n'
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout + result.stderr
    fix_leaks.add_haystack("README walkthrough output", out)

    assert "need grpcurl" not in out
    assert "zumik.secrets.v1.KeyService" in out  # list
    assert "rpc VerifyApiKey" in out  # describe
    assert '"status": "SERVING"' in out
    assert '"keys": [' in out  # ListSigningKeys
    assert '"name": "tenants/acme/settings"' in out  # control plane without a claim
    assert "CLAIM_MISSING" in out  # console without a claim
    assert '"plaintext": "c2stdGVzdA=="' in out  # Open with the claim from VerifyApiKey
    assert "NotFound" in out  # another tenant's name
    assert '"ok": true' in out  # VerifyChain
    assert "SELF_APPROVAL" in out  # break-glass: the requester cannot approve
    assert '"state": "GRANT_STATE_ACTIVE"' in out  # approved by the second operator
    assert '"state": "GRANT_STATE_REVOKED"' in out  # revoked
    # The Open under the grant answered the plaintext (as the executor's did), and the one after
    # RevokeGrant was refused with the reason the README names, in words that say so.
    assert out.count('"plaintext": "c2stdGVzdA=="') == 2, out
    assert "Message: the break-glass grant was revoked" in out, out
    assert '"reason":"GRANT_REVOKED"' in out, out
    lines = script.splitlines()
    failed = [
        (int(code), lines[int(line) - 1].strip())
        for code, line in re.findall(r"^STEP FAILED \[(\d+)\] line (\d+)$", out, flags=re.M)
    ]
    print("failed steps:", *failed, sep="\n  ")
    # grpcurl exits 64 + the gRPC code; 1 without a client certificate.
    assert [code for code, _ in failed] == [
        80,  # console without a claim: UNAUTHENTICATED CLAIM_MISSING
        1,  # no client certificate
        69,  # another tenant's name: NOT_FOUND
        71,  # alice approving her own grant: PERMISSION_DENIED SELF_APPROVAL
        71,  # Open after RevokeGrant: PERMISSION_DENIED GRANT_REVOKED
        67,  # the error example: INVALID_ARGUMENT INVALID_UPDATE_MASK
    ], failed
    assert "command not found" not in out
    # Nothing written into the checkout (no key.json, no claim file).
    after = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert after == before


def test_make_run_hint_uses_the_configured_address(tmp_path: Path) -> None:
    from zumik_secrets.cli.main import _grpcurl_hint

    pki = tmp_path / "pki"
    assert "127.0.0.1:6000 list" in _grpcurl_hint("0.0.0.0:6000", pki)
    assert "10.0.0.5:7000 list" in _grpcurl_hint("10.0.0.5:7000", pki)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    env["ZUMIK_LISTEN"] = "127.0.0.1:50999"
    root = tmp_path / "repo"
    root.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "zumik_secrets.cli.main", "dev-setup"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:50999 list" in result.stdout
    assert ":50051" not in result.stdout
