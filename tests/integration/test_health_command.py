"""`zumik-secrets health`: the Kubernetes exec probe, over mTLS to the local server."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2

from tests.fix_server import RunningServer
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.cli.health_check import loopback_target

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _health(server: RunningServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZUMIK_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")])
    base["GRPC_VERBOSITY"] = "ERROR"
    # As in the pod: the server's settings in the environment, listening on every interface.
    pair = server.pki.client("console")
    base.update(
        ZUMIK_LISTEN=f"0.0.0.0:{server.server.port}",
        ZUMIK_TLS_CERT=str(pair.cert),
        ZUMIK_TLS_KEY=str(pair.key),
        ZUMIK_TLS_CLIENT_CA=str(server.pki.ca_cert),
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "zumik_secrets.cli.main", "health", "--timeout", "5", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serving_server_passes_readiness_and_liveness(zumik_server: RunningServer) -> None:
    ready = _health(zumik_server)
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.strip() == f"127.0.0.1:{zumik_server.server.port}: SERVING"
    live = _health(zumik_server, "--live", "--service", "zumik.secrets.v1.KeyService")
    assert live.returncode == 0, live.stderr


def test_not_serving_fails_readiness_but_passes_liveness(zumik_server: RunningServer) -> None:
    zumik_server.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        ready = _health(zumik_server)
        assert ready.returncode == 1
        assert "NOT_SERVING" in ready.stderr
        live = _health(zumik_server, "--live")
        assert live.returncode == 0, live.stderr
    finally:
        zumik_server.server.health.set("", health_pb2.HealthCheckResponse.SERVING)


def test_unverifiable_server_name_or_no_server_fails(zumik_server: RunningServer) -> None:
    wrong_name = _health(zumik_server, "--server-name", "not-in-the-certificate")
    assert wrong_name.returncode == 1
    assert "no answer (UNAVAILABLE)" in wrong_name.stderr
    nobody = _health(zumik_server, "--live", "--target", "127.0.0.1:1", "--timeout", "1")
    assert nobody.returncode == 1


def _server_auth_only_cert(pki: DevPki, out: Path) -> tuple[Path, Path]:
    """A leaf from the dev CA with the server-auth usage only (what the dev PKI issued before
    the probe needed client auth)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zumik-secrets")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.UniformResourceIdentifier(f"spiffe://{pki.trust_domain}/svc/x"),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / "server-only.crt", out / "server-only.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_certificate_without_client_auth_is_refused(
    zumik_server: RunningServer, tmp_path: Path
) -> None:
    # A certificate with only the server-auth usage is refused as a client certificate: that is
    # why the Kubernetes Certificate and the dev PKI's server certificate carry both usages.
    cert, key = _server_auth_only_cert(zumik_server.pki, tmp_path)
    result = _health(zumik_server, "--cert", str(cert), "--key", str(key))
    assert result.returncode == 1


def test_the_server_certificate_works_as_the_probe_identity(zumik_server: RunningServer) -> None:
    # The image's probe presents the pod's own (server) certificate: the dev PKI's works.
    pki = zumik_server.pki
    own = ("--cert", str(pki.server.cert), "--key", str(pki.server.key))
    result = _health(zumik_server, *own)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SERVING" in result.stdout
    # The name the Deployment's probes verify is in the dev certificate too.
    result = _health(zumik_server, *own, "--server-name", "zumik-secrets")
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_configuration_exits_2(zumik_server: RunningServer) -> None:
    result = _health(zumik_server, ZUMIK_TLS_CERT="")
    assert result.returncode == 2
    assert "ZUMIK_TLS_CERT" in result.stderr
    missing_file = _health(zumik_server, "--ca", "/nonexistent/ca.crt")
    assert missing_file.returncode == 2
    assert "/nonexistent/ca.crt" in missing_file.stderr


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50051", "127.0.0.1:50051"),
        (":50051", "127.0.0.1:50051"),
        ("10.1.2.3:50051", "10.1.2.3:50051"),
        ("localhost:7", "localhost:7"),
    ],
)
def test_loopback_target(listen: str, target: str) -> None:
    assert loopback_target(listen) == target


def test_loopback_target_needs_a_port() -> None:
    with pytest.raises(ValueError, match="no port"):
        loopback_target("localhost")
