"""Every command of the compromise runbooks (docs/operations/*.md) runs here, as the runbooks
give it: `scripts/runbooks.sh STEP` against a real server (mTLS, SQLite), with the restarts the
runbooks ask for done in between. Each step is checked for its effect, and the steps that must
refuse (dropping a master-key version still in use, a denied identity) are shown to refuse.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from zumik.secrets.v1 import key_service_pb2 as kpb

from tests import fix_leaks
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.server.config import dev_policy_path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from ops_lib import Client, ServerProcess, cli  # noqa: E402

# Generous: several server and PostgreSQL processes on a shared 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

SCRIPT = REPO / "scripts/runbooks.sh"
VENV_BIN = Path(sys.executable).parent
SCOPES = ["secrets.seal", "secrets.open", "secrets.read", "keys.read"]


class Ops:
    """The operator's shell: runs runbook steps and restarts the server."""

    def __init__(self, pki: DevPki, work: Path) -> None:
        self.pki = pki
        self.work = work
        self.db = f"sqlite:///{work}/zumik.db"
        self.keyring = work / "keyring.json"
        self.keyring.write_text(generate_keyring(), encoding="utf-8")
        self.policy = dev_policy_path()
        self.out = work / "evidence"
        self.out.mkdir()
        self.witness = work / "witness"  # checkpoints outside the database
        self.witness.mkdir()
        self.server: ServerProcess | None = None
        self.logs = 0

    def start(self) -> Client:
        """(Re)start the server with the current keyring and policy; a client for it."""
        self.stop()
        self.logs += 1
        fix_leaks.REGISTRY.add_keyring(self.keyring.read_text())
        self.server = ServerProcess(
            self.pki,
            self.db,
            self.keyring,
            self.work / f"server-{self.logs}.log",
            extra_env={
                "ZUMIK_POLICY_FILE": str(self.policy),
                "ZUMIK_AUDIT_WITNESS_DIR": str(self.witness),
            },
        )
        self.server.wait_serving()
        return Client(self.pki, self.server.target)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            fix_leaks.add_haystack_file(self.server.log)
            self.server = None

    def run(self, step: str, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.server is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            ADDR=self.server.target,
            P=str(self.pki.directory),
            KEYRING=str(self.keyring),
            ZUMIK_DATABASE_URL=self.db,
            OUT=str(self.out),
            ZUMIK=str(VENV_BIN / "zumik-secrets"),
            ZUMIK_AUDIT_WITNESS_DIR=str(self.witness),
        )
        result = subprocess.run(
            ["bash", str(SCRIPT), step, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        fix_leaks.add_haystack(f"runbooks.sh {step}", result.stdout + result.stderr)
        return result


@pytest.fixture
def ops(dev_pki: DevPki, tmp_path: Path) -> Iterator[Ops]:
    for tool in ("grpcurl", "jq"):
        if not (VENV_BIN / tool).exists() and not shutil.which(tool):
            message = f"the runbooks need {tool}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    o = Ops(dev_pki, tmp_path)
    yield o
    o.stop()


def _key(c: Client, tenant: str = "acme") -> tuple[str, str, str]:
    name, raw = c.create_api_key(tenant, "web", SCOPES)
    fix_leaks.REGISTRY.add(raw, "runbook test key")
    result, claim = c.verify(raw)
    assert result == "VERIFY_RESULT_VALID"
    fix_leaks.REGISTRY.add(claim, "runbook test claim")
    return name, raw, claim


def _eventually(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_every_runbook_step_runs_and_has_its_effect(ops: Ops) -> None:
    c = ops.start()
    key_name, raw, claim = _key(c)
    secret = c.seal(claim, "acme", "web", b"provider-key")
    assert c.open(claim, secret) == b"provider-key"
    spare_name, spare_raw, _ = _key(c)
    session = c.keys("control-plane").CreateSession(
        kpb.CreateSessionRequest(
            parent="tenants/acme/projects/web", user_subject="user-1", scopes=["console"]
        ),
        timeout=10,
    )
    fix_leaks.REGISTRY.add(session.token, "runbook test session")

    # Audit verification: export, checkpoint keys, offline verify against the witness.
    r = ops.run("audit-verify", "acme")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (ops.out / "acme-audit.jsonl").stat().st_size > 0
    assert any(ops.witness.iterdir()), "the server published checkpoints to the witness"
    # The check can fail: an export cut short (no signed checkpoint over its end) is refused.
    export = ops.out / "acme-audit.jsonl"
    lines = export.read_text().splitlines()
    export.write_text("\n".join(lines[:2]) + "\n")
    env = {"ZUMIK_DATABASE_URL": ops.db}
    cut = cli(
        "audit",
        "verify",
        str(export),
        "--keys",
        str(ops.out / "checkpoint-keys.json"),
        "--witness",
        str(ops.witness),
        env=env,
    )
    assert cut.returncode == 1 and "FAILED" in cut.stdout, cut.stdout + cut.stderr

    # Leaked API key: revoked, and its use (verify, seal, open with its claim) is listed.
    r = ops.run("leaked-api-key", key_name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.verify(raw)[0] == "VERIFY_RESULT_REVOKED"
    use = (ops.out / "credential-use.tsv").read_text()
    for action in ("api_key.create", "api_key.verify", "secret.seal", "secret.open"):
        assert f"\t{action}\t" in use, (action, use)
    assert spare_name not in use

    # Leaked session: revoked.
    r = ops.run("leaked-session", session.session.name)
    assert r.returncode == 0, r.stdout + r.stderr
    verified = c.keys("gateway").VerifySession(
        kpb.VerifySessionRequest(token=session.token), timeout=10
    )
    assert verified.result == 5  # VERIFY_RESULT_REVOKED

    # Signing key compromised: rotate and end the overlap; a claim of the old key is refused
    # (outstanding or forged alike), a fresh one works.
    _, old_claim = c.verify(spare_raw)
    fix_leaks.REGISTRY.add(old_claim, "claim of the old signing key")
    assert c.open(old_claim, secret) == b"provider-key"
    r = ops.run("signing-key-compromised")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "retired" in r.stdout
    assert _eventually(lambda: c.open(old_claim, secret) == "UNAUTHENTICATED")
    _, new_claim = c.verify(spare_raw)
    fix_leaks.REGISTRY.add(new_claim, "claim of the new signing key")
    assert c.open(new_claim, secret) == b"provider-key"

    # Master key: add a version, restart; dropping the old version refuses while data is still
    # wrapped under it; the runbook's finish step rewraps, retires and drops it; restart.
    r = ops.run("master-key-add")
    assert r.returncode == 0, r.stdout + r.stderr
    c.close()
    c = ops.start()
    before = ops.keyring.read_text()
    env = {"ZUMIK_DATABASE_URL": ops.db}
    assert cli("keygen", "--retire", "1", "--out", str(ops.keyring), env=env).returncode == 0
    refused = cli("keygen", "--drop-version", "1", "--out", str(ops.keyring), env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "still wraps" in refused.stderr
    assert MasterKeyring.from_text(ops.keyring.read_text()).fingerprints().keys() == {1, 2}
    assert ops.keyring.read_text() != before  # retired, not dropped
    r = ops.run("master-key-finish", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(MasterKeyring.from_text(ops.keyring.read_text()).fingerprints()) == [2]
    c.close()
    c = ops.start()  # only version 2 now: everything still opens
    _, claim2 = c.verify(spare_raw)
    fix_leaks.REGISTRY.add(claim2, "claim after the master-key rotation")
    assert c.open(claim2, secret) == b"provider-key"

    # Customer purge request: purge, receipt verified offline.
    _, _, globex_claim = _key(c, "globex")
    c.seal(globex_claim, "globex", "web", b"globex-key")
    r = ops.run("purge-tenant", "globex")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: the receipt's signature verifies" in r.stdout

    # Leaked client certificate: before, the billing identity may append; deny it in the
    # policy, restart, and it is refused.
    r = ops.run("check-identity-denied", "billing")
    assert r.returncode == 1, r.stdout + r.stderr  # the check can fail: billing is allowed now
    denied_policy = ops.work / "policy.toml"
    r = ops.run(
        "deny-identity", str(ops.policy), str(denied_policy), "spiffe://zumik.local/svc/billing"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    ops.policy = denied_policy
    c.close()
    c = ops.start()
    r = ops.run("check-identity-denied", "billing")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refused: billing" in r.stdout
    c.close()


def _functions(text: str) -> dict[str, str]:
    return {
        m.group(1): m.group(0)
        for m in re.finditer(r"^([a-z_]+)\(\) \{\n.*?^\}$", text, flags=re.MULTILINE | re.DOTALL)
    }


def test_the_runbooks_quote_the_script_verbatim() -> None:
    script = _functions(SCRIPT.read_text(encoding="utf-8"))
    quoted: dict[str, str] = {}
    for page in sorted((REPO / "docs/operations").glob("*.md")):
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL):
            for name, body in _functions(block).items():
                assert body == script.get(name), f"{page.name}: {name} differs from runbooks.sh"
                quoted[name] = page.name
    # Every step of the script is in some runbook (the helpers included).
    steps = subprocess.run(
        ["bash", str(SCRIPT), "list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(quoted) == sorted(steps), set(steps) ^ set(quoted)
