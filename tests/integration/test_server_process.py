"""The real `zumik-secrets` process: dev setup, grpcurl over mTLS, drain on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zumik_secrets.cli.main", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")])
    env["GRPC_VERBOSITY"] = "ERROR"
    env.update(extra)
    return env


@dataclass
class DevProcess:
    proc: subprocess.Popen[str]
    target: str
    workdir: Path

    def grpcurl(
        self, *args: str, role: str | None = "console", flags: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run grpcurl as ``role`` (None: no client certificate): flags, target, then args."""
        pki = self.workdir / "var/dev/pki"
        tls = ["-cacert", str(pki / "ca.crt")]
        if role is not None:
            tls += ["-cert", str(pki / f"{role}.crt"), "-key", str(pki / f"{role}.key")]
        return subprocess.run(
            [GRPCURL, "-max-time", "10", *tls, *flags, self.target, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture(scope="module")
def dev_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    workdir = tmp_path_factory.mktemp("devrun")
    setup = _cli("dev-setup", cwd=workdir)
    assert setup.returncode == 0, setup.stderr
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zumik_secrets.cli.main", "serve"],
        cwd=workdir,
        env=_env(ZUMIK_DEV="1", ZUMIK_LISTEN=f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = DevProcess(proc, f"127.0.0.1:{port}", workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        if "SERVING" in running.grpcurl("grpc.health.v1.Health/Check").stdout:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("server did not become SERVING")
    yield running
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_dev_setup_is_idempotent_and_keys_are_private(dev_process: DevProcess) -> None:
    again = _cli("dev-setup", cwd=dev_process.workdir)
    assert again.returncode == 0, again.stderr
    for key in (dev_process.workdir / "var/dev").rglob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, key
    assert (dev_process.workdir / "var/dev/keyring.json").stat().st_mode & 0o077 == 0


def test_grpcurl_lists_every_service(dev_process: DevProcess) -> None:
    out = dev_process.grpcurl("list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {
        "zumik.secrets.v1.KeyService",
        "zumik.secrets.v1.SealService",
        "zumik.secrets.v1.FingerprintService",
        "zumik.secrets.v1.AuditService",
        "zumik.secrets.v1.TenantService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_grpcurl_describe_and_health(dev_process: DevProcess) -> None:
    out = dev_process.grpcurl("describe", "zumik.secrets.v1.KeyService")
    assert out.returncode == 0, out.stderr
    assert "rpc VerifyApiKey" in out.stdout
    health = dev_process.grpcurl("grpc.health.v1.Health/Check")
    assert '"status": "SERVING"' in health.stdout


def test_grpcurl_without_client_certificate_fails(dev_process: DevProcess) -> None:
    out = dev_process.grpcurl("list", role=None)
    assert out.returncode != 0
    assert "zumik.secrets.v1" not in out.stdout


def test_grpcurl_as_unlisted_identity_is_permission_denied(
    dev_process: DevProcess, tmp_path: Path
) -> None:
    from zumik_secrets.cli.dev_pki import issue_client_cert

    pki = dev_process.workdir / "var/dev/pki"
    pair = issue_client_cert(pki, "stranger", "spiffe://zumik.local/svc/stranger", out_dir=tmp_path)

    def as_stranger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                GRPCURL,
                "-max-time",
                "10",
                "-cacert",
                str(pki / "ca.crt"),
                "-cert",
                str(pair.cert),
                "-key",
                str(pair.key),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    # Reflection is not open to identities the policy does not name...
    listed = as_stranger(dev_process.target, "list")
    assert listed.returncode != 0
    assert "PermissionDenied" in listed.stderr
    # ...and with the contracts at hand, the method itself answers PERMISSION_DENIED.
    out = as_stranger(
        "-import-path",
        str(REPO / "proto"),
        "-proto",
        "zumik/secrets/v1/key_service.proto",
        dev_process.target,
        "zumik.secrets.v1.KeyService/ListSigningKeys",
    )
    assert out.returncode == 64 + 7, out.stderr  # grpcurl exits 64 + the gRPC code
    assert "PermissionDenied" in out.stderr


def test_second_server_on_the_same_port_fails_loudly(dev_process: DevProcess) -> None:
    out = _cli(
        "serve",
        cwd=dev_process.workdir,
        timeout=30,
        env=_env(ZUMIK_DEV="1", ZUMIK_LISTEN=dev_process.target),
    )
    assert out.returncode != 0
    assert "cannot listen" in out.stderr


def test_serve_without_configuration_fails_closed(tmp_path: Path) -> None:
    out = _cli("serve", cwd=tmp_path, timeout=30)
    assert out.returncode == 2
    assert "not configured" in out.stderr


def _leading_comment(proto: Path, declaration: str) -> list[str]:
    """The comment lines right above ``declaration`` (e.g. ``rpc Seal(``) in a .proto file."""
    lines = proto.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(declaration))
    comment: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip())
    assert comment, f"no comment above {declaration} in {proto.name}"
    return comment


def test_grpcurl_describe_shows_the_contract_comments(dev_process: DevProcess) -> None:
    v1 = REPO / "proto/zumik/secrets/v1"
    for symbol, proto, declaration in (
        ("zumik.secrets.v1.SealService.Seal", "seal_service.proto", "rpc Seal("),
        ("zumik.secrets.v1.SealService", "seal_service.proto", "service SealService"),
        ("zumik.secrets.v1.Secret", "seal_service.proto", "message Secret {"),
        ("zumik.secrets.v1.ErrorReason", "error_reason.proto", "enum ErrorReason"),
        ("zumik.secrets.v1.AuditService.QueryEvents", "audit_service.proto", "rpc QueryEvents("),
    ):
        out = dev_process.grpcurl("describe", symbol)
        assert out.returncode == 0, out.stderr
        shown = [line.strip() for line in out.stdout.splitlines()]
        for line in _leading_comment(v1 / proto, declaration):
            assert line in shown, f"{symbol}: {line!r} missing from grpcurl describe"


def test_grpcurl_shows_an_error_reason(dev_process: DevProcess) -> None:
    # Seal without a tenant claim: UNAUTHENTICATED (16), so grpcurl exits with 64 + 16.
    out = dev_process.grpcurl(
        "zumik.secrets.v1.SealService/Seal",
        flags=("-d", '{"parent": "tenants/acme/projects/web"}'),
    )
    assert out.returncode == 64 + 16, (out.stdout, out.stderr)
    text = out.stdout + out.stderr
    assert "Code: Unauthenticated" in text
    assert '"reason":"CLAIM_MISSING"' in text
    assert '"domain":"secrets.zumik.dev"' in text


# Keep last: it stops the module's server.
def test_sigterm_drains_and_exits_cleanly(dev_process: DevProcess) -> None:
    dev_process.proc.send_signal(signal.SIGTERM)
    assert dev_process.proc.wait(timeout=20) == 0
    stderr = dev_process.proc.stderr.read() if dev_process.proc.stderr else ""
    assert '"msg": "draining"' in stderr
    assert '"msg": "stopped"' in stderr
