"""A throwaway development PKI: one CA, a server certificate and one client certificate per role.

Production certificates come from cert-manager's csi-driver-spiffe or SPIRE; this module issues
look-alikes locally so that ``make run`` and the tests speak the same mutual TLS as a deployment.
Every client certificate is an X.509-SVID: exactly one URI SAN,
``spiffe://<trust-domain>/svc/<role>``, which is what grpcio exposes as ``peer_spiffe_id``.

Keys are ECDSA P-256 (fast to generate), signatures SHA-256. Private keys are created 0600 from the
first byte (``os.open`` with the mode, then an atomic rename), the directory is 0700.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_OPERATORS",
    "DEFAULT_ROLES",
    "DEFAULT_SERVER_SANS",
    "DEFAULT_TRUST_DOMAIN",
    "SERVER_SERVICE_NAME",
    "CertPair",
    "DevPki",
    "DevPkiError",
    "generate_ca_only",
    "generate_dev_pki",
    "issue_client_cert",
    "issue_server_cert",
    "operator_id_for",
    "spiffe_id_for",
]

DEFAULT_TRUST_DOMAIN = "zumik.local"
DEFAULT_ROLES: tuple[str, ...] = (
    "control-plane",
    "console",
    "gateway",
    "executor",
    "billing",
    "auditor",
)
#: Operator (human) identities of the dev PKI: ``<name>.crt`` with
#: ``spiffe://<trust-domain>/operator/<name>`` (break-glass only, see the dev policy).
DEFAULT_OPERATORS: tuple[str, ...] = ("alice", "bob")
SERVER_SERVICE_NAME = "zumik-secrets"
# The names callers dial: loopback, and the Kubernetes Services (deploy/k8s) in the namespaces
# of both overlays, short and fully qualified, so the dev PKI also serves a cluster deployment.
DEFAULT_SERVER_SANS: tuple[str, ...] = (
    "localhost",
    "127.0.0.1",
    *(
        f"{svc}{suffix}"
        for svc in (SERVER_SERVICE_NAME, f"{SERVER_SERVICE_NAME}-headless")
        for suffix in (
            "",
            *(
                f".{ns}.svc{tail}"
                for ns in ("zumik-secrets", "zumik-secrets-dev")
                for tail in ("", ".cluster.local")
            ),
        )
    ),
)

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
SERVER_NAME = "server"

# File names double as role names: keep them to a safe alphabet so nothing escapes the directory.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Trust domain grammar from the SPIFFE ID spec (lower-case letters, digits, '.', '-', '_').
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")
_SPIFFE_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# Issue certificates slightly in the past so a peer whose clock lags a little still accepts them.
_BACKDATE = datetime.timedelta(minutes=5)


class DevPkiError(Exception):
    """The development PKI cannot be created or extended as asked (message names the file)."""


@dataclass(frozen=True, slots=True)
class CertPair:
    """Paths of a PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert: Path
    """The certificate (leaf only; the CA is ``ca.crt`` next to it)."""
    key: Path
    """The private key, mode 0600."""


@dataclass(frozen=True, slots=True)
class DevPki:
    """The files :func:`generate_dev_pki` wrote (or found already in place)."""

    directory: Path
    """The PKI directory (mode 0700)."""
    trust_domain: str
    """SPIFFE trust domain of every identity in it."""
    ca_cert: Path
    """The CA certificate: clients and the server trust it."""
    ca_key: Path
    """The CA private key, kept to issue more certificates later (mode 0600)."""
    server: CertPair
    """The server's certificate and key."""
    clients: Mapping[str, CertPair] = field(hash=False)
    """One certificate and key per role, keyed by role name."""
    operators: Mapping[str, CertPair] = field(default_factory=dict, hash=False)
    """One certificate and key per operator (human), keyed by name."""

    def client(self, role: str) -> CertPair:
        """Return the certificate pair of ``role``.

        Raises:
            KeyError: No certificate was issued for that role.
        """
        try:
            return self.clients[role] if role in self.clients else self.operators[role]
        except KeyError:
            raise KeyError(f"no dev client certificate for role {role!r}") from None

    def spiffe_id(self, role: str) -> str:
        """Return the SPIFFE ID that the certificate of ``role`` (or operator) carries."""
        if role in self.operators and role not in self.clients:
            return operator_id_for(self.trust_domain, role)
        return spiffe_id_for(self.trust_domain, role)


def spiffe_id_for(trust_domain: str, name: str) -> str:
    """Return ``spiffe://<trust_domain>/svc/<name>``.

    Raises:
        DevPkiError: The trust domain or the name is not valid in a SPIFFE ID.
    """
    _check_trust_domain(trust_domain)
    _check_name(name)
    return f"spiffe://{trust_domain}/svc/{name}"


def operator_id_for(trust_domain: str, name: str) -> str:
    """Return ``spiffe://<trust_domain>/operator/<name>`` (a human operator).

    Raises:
        DevPkiError: The trust domain or the name is not valid in a SPIFFE ID.
    """
    _check_trust_domain(trust_domain)
    _check_name(name)
    return f"spiffe://{trust_domain}/operator/{name}"


def generate_dev_pki(
    out_dir: Path,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    roles: Iterable[str] = DEFAULT_ROLES,
    server_sans: Sequence[str] = DEFAULT_SERVER_SANS,
    validity_days: int = 30,
    overwrite: bool = False,
    operators: Iterable[str] = DEFAULT_OPERATORS,
) -> DevPki:
    """Write a CA, a server certificate and one client certificate per role into ``out_dir``.

    Idempotent: without ``overwrite``, files already present are kept (so ``make run`` can call this
    every time) and only missing certificates are issued from the existing CA. Kept certificates are
    checked to carry the expected SPIFFE ID and not to have expired.

    Args:
        out_dir: Directory to write to; created 0700 (an existing one is tightened to 0700).
        trust_domain: SPIFFE trust domain of every identity.
        roles: Client roles; each gets ``<role>.crt``/``<role>.key`` with exactly one URI SAN
            ``spiffe://<trust_domain>/svc/<role>``.
        server_sans: DNS names and IP addresses of the server certificate.
        validity_days: Lifetime of the CA and of every certificate issued now.
        overwrite: Replace every file with a freshly generated PKI (new CA).
        operators: Operator (human) names; each gets ``<name>.crt``/``<name>.key`` with the URI
            SAN ``spiffe://<trust_domain>/operator/<name>``.

    Returns:
        The paths of the PKI.

    Raises:
        DevPkiError: A name is invalid, the existing PKI is inconsistent (a certificate without its
            key, a wrong SPIFFE ID, an expired certificate, a missing CA key), or a file could not
            be written.
    """
    _check_trust_domain(trust_domain)
    role_list = tuple(dict.fromkeys(roles))
    for role in role_list:
        _check_name(role)
    if SERVER_NAME in role_list or "ca" in role_list:
        raise DevPkiError("role names 'server' and 'ca' are reserved for the PKI's own files")
    if validity_days < 1:
        raise DevPkiError("validity_days must be at least 1")
    directory = _prepare_dir(out_dir)

    ca = CertPair(directory / CA_CERT_NAME, directory / CA_KEY_NAME)
    if overwrite or not _pair_present(ca):
        generate_ca_only(
            directory,
            common_name=f"Zumik Secrets dev CA ({trust_domain})",
            validity_days=validity_days,
            overwrite=True,
        )
    ca_loaded: _LoadedCa | None = None

    def ca_for_issuing() -> _LoadedCa:
        nonlocal ca_loaded
        if ca_loaded is None:
            ca_loaded = _load_ca(directory)
        return ca_loaded

    server = CertPair(directory / f"{SERVER_NAME}.crt", directory / f"{SERVER_NAME}.key")
    server_id = spiffe_id_for(trust_domain, SERVER_SERVICE_NAME)
    if overwrite or not _pair_present(server) or _server_outdated(server, server_sans):
        _issue_leaf(
            ca_for_issuing(),
            server,
            common_name=SERVER_SERVICE_NAME,
            spiffe_id=server_id,
            dns_and_ips=server_sans,
            server=True,
            validity_days=validity_days,
        )
    else:
        _check_existing(server, server_id)

    clients: dict[str, CertPair] = {}
    for role in role_list:
        pair = CertPair(directory / f"{role}.crt", directory / f"{role}.key")
        role_id = spiffe_id_for(trust_domain, role)
        if overwrite or not _pair_present(pair):
            _issue_leaf(
                ca_for_issuing(),
                pair,
                common_name=role,
                spiffe_id=role_id,
                dns_and_ips=(),
                server=False,
                validity_days=validity_days,
            )
        else:
            _check_existing(pair, role_id)
        clients[role] = pair

    operator_pairs: dict[str, CertPair] = {}
    for name in dict.fromkeys(operators):
        _check_name(name)
        if name in clients or name in (SERVER_NAME, "ca"):
            raise DevPkiError(f"operator name {name!r} collides with a role or PKI file")
        pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
        operator_id = operator_id_for(trust_domain, name)
        if overwrite or not _pair_present(pair):
            _issue_leaf(
                ca_for_issuing(),
                pair,
                common_name=name,
                spiffe_id=operator_id,
                dns_and_ips=(),
                server=False,
                validity_days=validity_days,
            )
        else:
            _check_existing(pair, operator_id)
        operator_pairs[name] = pair

    return DevPki(
        directory=directory,
        trust_domain=trust_domain,
        ca_cert=ca.cert,
        ca_key=ca.key,
        server=server,
        clients=MappingProxyType(clients),
        operators=MappingProxyType(operator_pairs),
    )


def generate_ca_only(
    out_dir: Path,
    *,
    common_name: str = "Zumik Secrets dev CA",
    validity_days: int = 30,
    overwrite: bool = False,
) -> CertPair:
    """Write a self-signed CA (``ca.crt``, ``ca.key``) into ``out_dir``; tests use it as a rogue CA.

    Args:
        out_dir: Directory to write to; created 0700.
        common_name: Subject CN of the CA.
        validity_days: Lifetime of the CA.
        overwrite: Replace an existing CA.

    Returns:
        The CA certificate and key paths.

    Raises:
        DevPkiError: A CA file exists already (without ``overwrite``) or could not be written.
    """
    directory = _prepare_dir(out_dir)
    pair = CertPair(directory / CA_CERT_NAME, directory / CA_KEY_NAME)
    if not overwrite and (pair.cert.exists() or pair.key.exists()):
        raise DevPkiError(f"{pair.cert} or {pair.key} exists already; pass overwrite=True")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a cert without its key would make the PKI look complete but unusable.
    _write_private_key(pair.key, key)
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def issue_client_cert(
    pki_dir: Path,
    name: str,
    spiffe_id: str,
    out_dir: Path | None = None,
    *,
    validity_days: int = 30,
    overwrite: bool = False,
) -> CertPair:
    """Issue ``<name>.crt``/``<name>.key`` from the CA in ``pki_dir`` with one URI SAN.

    Args:
        pki_dir: Directory holding ``ca.crt`` and ``ca.key``.
        name: File stem and subject CN (``[a-z0-9][a-z0-9._-]*``).
        spiffe_id: The single URI SAN, e.g. ``spiffe://zumik.local/svc/stranger``.
        out_dir: Where to write the pair (default ``pki_dir``); created 0700.
        validity_days: Lifetime, capped at the CA's own expiry.
        overwrite: Replace an existing pair of that name.

    Returns:
        The new certificate and key paths.

    Raises:
        DevPkiError: The name or SPIFFE ID is invalid, the CA cannot be read, or the pair exists
            already without ``overwrite``.
    """
    _check_name(name)
    _check_spiffe_id(spiffe_id)
    ca = _load_ca(Path(pki_dir))
    directory = _prepare_dir(out_dir if out_dir is not None else Path(pki_dir))
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    if not overwrite and (pair.cert.exists() or pair.key.exists()):
        raise DevPkiError(f"{pair.cert} or {pair.key} exists already; pass overwrite=True")
    _issue_leaf(
        ca,
        pair,
        common_name=name,
        spiffe_id=spiffe_id,
        dns_and_ips=(),
        server=False,
        validity_days=validity_days,
    )
    return pair


def issue_server_cert(
    pki_dir: Path,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    server_sans: Sequence[str] = DEFAULT_SERVER_SANS,
    out_dir: Path | None = None,
    name: str = SERVER_NAME,
    validity_days: int = 30,
    overwrite: bool = False,
) -> CertPair:
    """Issue a server certificate from the CA in ``pki_dir`` (used to test certificate rotation).

    The pair replaces existing files atomically (write then rename), as a certificate manager would.

    Args:
        pki_dir: Directory holding ``ca.crt`` and ``ca.key``.
        trust_domain: Trust domain of the server's URI SAN ``spiffe://<td>/svc/zumik-secrets``.
        server_sans: DNS names and IP addresses.
        out_dir: Where to write the pair (default ``pki_dir``).
        name: File stem (default ``server``).
        validity_days: Lifetime, capped at the CA's own expiry.
        overwrite: Replace an existing pair of that name.

    Returns:
        The new certificate and key paths.

    Raises:
        DevPkiError: A name is invalid, the CA cannot be read, or the pair exists already without
            ``overwrite``.
    """
    _check_name(name)
    spiffe_id = spiffe_id_for(trust_domain, SERVER_SERVICE_NAME)
    ca = _load_ca(Path(pki_dir))
    directory = _prepare_dir(out_dir if out_dir is not None else Path(pki_dir))
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    if not overwrite and (pair.cert.exists() or pair.key.exists()):
        raise DevPkiError(f"{pair.cert} or {pair.key} exists already; pass overwrite=True")
    _issue_leaf(
        ca,
        pair,
        common_name=SERVER_SERVICE_NAME,
        spiffe_id=spiffe_id,
        dns_and_ips=server_sans,
        server=True,
        validity_days=validity_days,
    )
    return pair


# --- internals -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LoadedCa:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise DevPkiError(f"invalid certificate name {name!r}: use [a-z0-9][a-z0-9._-]{{0,62}}")


def _check_trust_domain(trust_domain: str) -> None:
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise DevPkiError(f"invalid SPIFFE trust domain {trust_domain!r}")


def _check_spiffe_id(spiffe_id: str) -> None:
    prefix = "spiffe://"
    if not spiffe_id.startswith(prefix):
        raise DevPkiError(f"SPIFFE ID must start with {prefix!r}: {spiffe_id!r}")
    trust_domain, _, path = spiffe_id[len(prefix) :].partition("/")
    _check_trust_domain(trust_domain)
    segments = path.split("/")
    if not path or not all(_SPIFFE_PATH_SEGMENT_RE.fullmatch(s) for s in segments):
        raise DevPkiError(f"invalid SPIFFE ID path in {spiffe_id!r}")
    if any(s in (".", "..") for s in segments):
        raise DevPkiError(f"invalid SPIFFE ID path in {spiffe_id!r}")


def _prepare_dir(out_dir: Path) -> Path:
    directory = Path(out_dir)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The directory holds private keys: tighten one that already existed with looser bits.
        if directory.stat().st_mode & 0o077:
            os.chmod(directory, 0o700)
    except OSError as exc:
        raise DevPkiError(f"cannot prepare PKI directory {directory}: {exc.strerror}") from None
    return directory


def _pair_present(pair: CertPair) -> bool:
    cert_there, key_there = pair.cert.exists(), pair.key.exists()
    if cert_there != key_there:
        present, missing = (pair.cert, pair.key) if cert_there else (pair.key, pair.cert)
        raise DevPkiError(
            f"{present} exists but {missing} does not; remove it or pass overwrite=True"
        )
    return cert_there


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DevPkiError(f"cannot read {path}: {exc.strerror}") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read_bytes(path))
    except ValueError:
        raise DevPkiError(f"{path} does not hold a PEM certificate") from None


def _load_ca(pki_dir: Path) -> _LoadedCa:
    cert = _load_cert(pki_dir / CA_CERT_NAME)
    key_path = pki_dir / CA_KEY_NAME
    try:
        key = serialization.load_pem_private_key(_read_bytes(key_path), password=None)
    except (ValueError, TypeError):
        raise DevPkiError(f"{key_path} does not hold an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DevPkiError(f"{key_path} is not an ECDSA key")
    if key.public_key().public_numbers() != _ec_public(cert, pki_dir / CA_CERT_NAME):
        raise DevPkiError(f"{key_path} does not match {pki_dir / CA_CERT_NAME}")
    return _LoadedCa(cert=cert, key=key)


def _ec_public(cert: x509.Certificate, path: Path) -> ec.EllipticCurvePublicNumbers:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise DevPkiError(f"{path} does not hold an ECDSA certificate")
    return public.public_numbers()


def _check_existing(pair: CertPair, spiffe_id: str) -> None:
    cert = _load_cert(pair.cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise DevPkiError(f"{pair.cert} has no SAN; regenerate with overwrite=True") from None
    if san.get_values_for_type(x509.UniformResourceIdentifier) != [spiffe_id]:
        raise DevPkiError(
            f"{pair.cert} does not carry {spiffe_id} (another trust domain?); "
            "regenerate with overwrite=True"
        )
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise DevPkiError(f"{pair.cert} has expired; regenerate with overwrite=True")


def _server_outdated(pair: CertPair, server_sans: Sequence[str]) -> bool:
    """Whether a kept server certificate predates client auth or lacks a wanted name (then it
    is reissued from the same CA; clients trust the CA, so nothing else changes)."""
    cert = _load_cert(pair.cert)
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in server_sans}
    return ExtendedKeyUsageOID.CLIENT_AUTH not in list(ekus) or not wanted <= have


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _general_names(spiffe_id: str, dns_and_ips: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for entry in dns_and_ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    names.append(x509.UniformResourceIdentifier(spiffe_id))
    return names


def _issue_leaf(
    ca: _LoadedCa,
    pair: CertPair,
    *,
    common_name: str,
    spiffe_id: str,
    dns_and_ips: Iterable[str],
    server: bool,
    validity_days: int,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=validity_days), ca.cert.not_valid_after_utc)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # The server certificate also allows client auth: the in-container health probe
    # (`zumik-secrets health`) presents the pod's own certificate, as in deploy/k8s.
    ekus = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if server
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(_general_names(spiffe_id, dns_and_ips)), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    _write_private_key(pair.key, key)
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file created with ``mode`` and renamed over ``path``.

    The file never exists with looser permissions than ``mode`` (no chmod after the fact), and a
    reader (a server reloading its certificate) sees either the old or the new content, never half.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise DevPkiError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DevPkiError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
