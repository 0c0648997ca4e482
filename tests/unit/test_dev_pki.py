"""The development PKI: files, permissions, SPIFFE IDs, chains and idempotence."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from zumik_secrets.cli.dev_pki import (
    DEFAULT_OPERATORS,
    DEFAULT_ROLES,
    CertPair,
    DevPki,
    DevPkiError,
    generate_ca_only,
    generate_dev_pki,
    issue_client_cert,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _all_files(pki: DevPki) -> list[Path]:
    files = [pki.ca_cert, pki.ca_key, pki.server.cert, pki.server.key]
    for pair in pki.clients.values():
        files += [pair.cert, pair.key]
    return files


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_writes_every_file(dev_pki: DevPki) -> None:
    assert set(dev_pki.clients) == set(DEFAULT_ROLES)
    for path in _all_files(dev_pki):
        assert path.is_file(), path
        assert path.parent == dev_pki.directory
    names = {p.name for p in dev_pki.directory.iterdir()}
    expected = {"ca.crt", "ca.key", "server.crt", "server.key"}
    expected |= {f"{r}.{ext}" for r in DEFAULT_ROLES for ext in ("crt", "key")}
    expected |= {f"{r}.{ext}" for r in DEFAULT_OPERATORS for ext in ("crt", "key")}
    assert set(dev_pki.operators) == set(DEFAULT_OPERATORS)
    assert names == expected  # no leftover temporary files


def test_private_keys_are_0600_and_directory_0700(dev_pki: DevPki) -> None:
    assert _mode(dev_pki.directory) == 0o700
    keys = [dev_pki.ca_key, dev_pki.server.key] + [p.key for p in dev_pki.clients.values()]
    for key in keys:
        assert _mode(key) == 0o600, key


def test_ca_is_a_path_length_zero_ca(dev_pki: DevPki) -> None:
    ca = _cert(dev_pki.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    ca.verify_directly_issued_by(ca)


@pytest.mark.parametrize("role", DEFAULT_ROLES)
def test_role_cert_has_exactly_one_uri_san_and_chains(dev_pki: DevPki, role: str) -> None:
    cert = _cert(dev_pki.client(role).cert)
    san = _san(cert)
    # exactly one SAN entry overall, and it is the SPIFFE URI: grpc sets peer_spiffe_id only then
    assert len(list(san)) == 1
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://zumik.local/svc/{role}"
    ]
    assert dev_pki.spiffe_id(role) == f"spiffe://zumik.local/svc/{role}"
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    cert.verify_directly_issued_by(_cert(dev_pki.ca_cert))
    _assert_key_matches(dev_pki.client(role))


def test_server_cert_sans_and_eku(dev_pki: DevPki) -> None:
    cert = _cert(dev_pki.server.cert)
    san = _san(cert)
    dns = san.get_values_for_type(x509.DNSName)
    assert dns[0] == "localhost"
    # The Services of deploy/k8s, short and with namespace, .svc and .svc.cluster.local forms.
    for name in (
        "zumik-secrets",
        "zumik-secrets-headless",
        "zumik-secrets.zumik-secrets.svc",
        "zumik-secrets-headless.zumik-secrets.svc.cluster.local",
        "zumik-secrets-headless.zumik-secrets-dev.svc",
    ):
        assert name in dns
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zumik.local/svc/zumik-secrets"
    ]
    # clientAuth too: the in-container health probe presents the server's own certificate.
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(_cert(dev_pki.ca_cert))
    _assert_key_matches(dev_pki.server)


def _assert_key_matches(pair: CertPair) -> None:
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == _cert(pair.cert).public_key()


def test_second_call_changes_nothing(tmp_path: Path) -> None:
    first = generate_dev_pki(tmp_path / "pki", roles=("console",))
    before = _snapshot(first.directory)
    second = generate_dev_pki(tmp_path / "pki", roles=("console",))
    assert second == first
    assert _snapshot(first.directory) == before


def test_second_call_adds_missing_roles_from_the_same_ca(tmp_path: Path) -> None:
    first = generate_dev_pki(tmp_path / "pki", roles=("console",))
    before = _snapshot(first.directory)
    second = generate_dev_pki(tmp_path / "pki", roles=("console", "gateway"))
    after = _snapshot(first.directory)
    assert {k: v for k, v in after.items() if k in before} == before
    _cert(second.client("gateway").cert).verify_directly_issued_by(_cert(second.ca_cert))


def test_overwrite_makes_a_new_ca(tmp_path: Path) -> None:
    first = generate_dev_pki(tmp_path / "pki", roles=("console",))
    old_ca = first.ca_cert.read_bytes()
    generate_dev_pki(tmp_path / "pki", roles=("console",), overwrite=True)
    assert first.ca_cert.read_bytes() != old_ca
    _cert(first.client("console").cert).verify_directly_issued_by(_cert(first.ca_cert))


def test_existing_pki_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    generate_dev_pki(tmp_path / "pki", roles=("console",))
    with pytest.raises(DevPkiError, match=r"spiffe://other\.example/svc/zumik-secrets"):
        generate_dev_pki(tmp_path / "pki", roles=("console",), trust_domain="other.example")


def test_half_present_pair_is_refused(tmp_path: Path) -> None:
    pki = generate_dev_pki(tmp_path / "pki", roles=("console",))
    pki.client("console").key.unlink()
    with pytest.raises(DevPkiError, match=r"console\.key does not;"):
        generate_dev_pki(tmp_path / "pki", roles=("console",))


def test_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    generate_dev_pki(directory, roles=())
    assert _mode(directory) == 0o700


@pytest.mark.parametrize("bad", ["../evil", "Upper", "", "a/b", "server", "ca"])
def test_bad_role_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DevPkiError):
        generate_dev_pki(tmp_path / "pki", roles=(bad,))
    assert not (tmp_path / "pki").exists()


def test_issue_client_cert_for_an_extra_identity(dev_pki: DevPki, stranger_cert: CertPair) -> None:
    cert = _cert(stranger_cert.cert)
    assert _san(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zumik.local/svc/stranger"
    ]
    assert len(list(_san(cert))) == 1
    cert.verify_directly_issued_by(_cert(dev_pki.ca_cert))
    assert _mode(stranger_cert.key) == 0o600
    assert stranger_cert.cert.parent != dev_pki.directory


def test_issue_client_cert_refuses_to_overwrite(tmp_path: Path) -> None:
    pki = generate_dev_pki(tmp_path / "pki", roles=("console",))
    with pytest.raises(DevPkiError, match="exists already"):
        issue_client_cert(pki.directory, "console", "spiffe://zumik.local/svc/console")
    pair = issue_client_cert(
        pki.directory, "console", "spiffe://zumik.local/svc/console", overwrite=True
    )
    _assert_key_matches(pair)


@pytest.mark.parametrize(
    "bad_id",
    ["https://zumik.local/svc/x", "spiffe://zumik.local", "spiffe://Zumik/x", "spiffe://z/../x"],
)
def test_issue_client_cert_validates_the_spiffe_id(tmp_path: Path, bad_id: str) -> None:
    pki = generate_dev_pki(tmp_path / "pki", roles=())
    with pytest.raises(DevPkiError):
        issue_client_cert(pki.directory, "x", bad_id)


def test_rogue_ca_is_a_different_ca(dev_pki: DevPki, rogue_pki: DevPki) -> None:
    rogue_console = _cert(rogue_pki.client("console").cert)
    assert _san(rogue_console).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zumik.local/svc/console"
    ]
    # Same issuer name (same trust domain) on purpose: only the signature tells them apart.
    with pytest.raises(InvalidSignature):
        rogue_console.verify_directly_issued_by(_cert(dev_pki.ca_cert))


def test_generate_ca_only(tmp_path: Path) -> None:
    ca = generate_ca_only(tmp_path / "rogue")
    cert = _cert(ca.cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _mode(ca.key) == 0o600
    with pytest.raises(DevPkiError, match="exists already"):
        generate_ca_only(tmp_path / "rogue")
    leaf = issue_client_cert(tmp_path / "rogue", "console", "spiffe://zumik.local/svc/console")
    _cert(leaf.cert).verify_directly_issued_by(cert)


@pytest.mark.parametrize("name", DEFAULT_OPERATORS)
def test_operator_cert_has_the_operator_spiffe_id(dev_pki: DevPki, name: str) -> None:
    cert = _cert(dev_pki.client(name).cert)
    san = _san(cert)
    assert len(list(san)) == 1
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://zumik.local/operator/{name}"
    ]
    assert dev_pki.spiffe_id(name) == f"spiffe://zumik.local/operator/{name}"
    cert.verify_directly_issued_by(_cert(dev_pki.ca_cert))


def test_outdated_server_cert_is_reissued_from_the_same_ca(tmp_path: Path) -> None:
    from zumik_secrets.cli.dev_pki import generate_dev_pki

    old = generate_dev_pki(tmp_path / "pki", server_sans=("localhost",))
    ca_before = old.ca_cert.read_bytes()
    assert "zumik-secrets" not in _san(_cert(old.server.cert)).get_values_for_type(x509.DNSName)
    new = generate_dev_pki(tmp_path / "pki")  # the default names: reissued, CA kept
    assert new.ca_cert.read_bytes() == ca_before
    assert "zumik-secrets" in _san(_cert(new.server.cert)).get_values_for_type(x509.DNSName)
    _cert(new.server.cert).verify_directly_issued_by(_cert(new.ca_cert))
    _assert_key_matches(new.server)
    unchanged = new.server.cert.read_bytes()
    generate_dev_pki(tmp_path / "pki")
    assert new.server.cert.read_bytes() == unchanged  # up to date: kept
