"""Mutual-TLS credentials for the server and its clients.

The server always requires a client certificate signed by the configured CA; the caller's identity
is then the certificate's single URI SAN, which grpcio exposes as ``peer_spiffe_id`` in
``context.auth_context()``. grpcio (BoringSSL) refuses TLS 1.0/1.1 on its own and negotiates 1.2
or 1.3, which is the floor DESIGN.md asks for; there is no Python knob to change it.

With ``reload=True`` the server re-reads its certificate, key and client CA when the files change
on disk (cert-manager and SPIRE rotate them in place), so new connections get the new certificate
without a restart; established connections keep the one they negotiated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["TlsConfigError", "TlsFiles", "channel_credentials", "server_credentials"]

_log = logging.getLogger(__name__)

# grpc-core calls the fetcher before every new handshake; a stat per file per second is cheap
# enough to bound the work while picking up a rotation within about a second.
_RELOAD_CHECK_INTERVAL_S = 1.0

StrPath = str | os.PathLike[str]


class TlsConfigError(Exception):
    """A TLS file is missing, unreadable or not what it should be.

    The message names the file and the problem, never the file's contents.
    """


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM contents of one server certificate configuration, already checked."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes


def server_credentials(
    cert_file: StrPath,
    key_file: StrPath,
    client_ca_file: StrPath,
    *,
    reload: bool = True,
) -> grpc.ServerCredentials:
    """Build server credentials that demand a client certificate signed by ``client_ca_file``.

    Args:
        cert_file: PEM certificate chain of the server (leaf first).
        key_file: PEM private key matching the leaf.
        client_ca_file: PEM CA certificate(s) that client certificates must chain to.
        reload: Watch the three files (stat at most once a second, on new connections) and serve
            their new contents to new connections after a change. A change that does not load
            cleanly (a half-rotated pair, say) is logged and the previous certificate stays.

    Returns:
        Credentials for ``grpc.Server.add_secure_port``.

    Raises:
        TlsConfigError: A file cannot be read, does not hold PEM of the right kind, or the key does
            not match the certificate.
    """
    paths = (Path(cert_file), Path(key_file), Path(client_ca_file))
    if not reload:
        files = load_tls_files(*paths)
        return grpc.ssl_server_credentials(
            [(files.private_key, files.cert_chain)],
            root_certificates=files.client_ca,
            require_client_auth=True,
        )
    reloader = _Reloader(*paths)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        # grpc accepts None from the fetcher ("no change"); grpc-stubs types it without Optional.
        cast(Callable[[], grpc.ServerCertificateConfiguration], reloader.fetch),
        require_client_authentication=True,
    )


def channel_credentials(
    ca_file: StrPath, cert_file: StrPath, key_file: StrPath
) -> grpc.ChannelCredentials:
    """Build client credentials that present ``cert_file`` and trust servers signed by ``ca_file``.

    Args:
        ca_file: PEM CA certificate(s) the server certificate must chain to.
        cert_file: PEM client certificate (its URI SAN is the caller's SPIFFE ID).
        key_file: PEM private key matching the client certificate.

    Returns:
        Credentials for ``grpc.secure_channel``.

    Raises:
        TlsConfigError: A file cannot be read, does not hold PEM of the right kind, or the key does
            not match the certificate.
    """
    files = load_tls_files(Path(cert_file), Path(key_file), Path(ca_file))
    return grpc.ssl_channel_credentials(
        root_certificates=files.client_ca,
        private_key=files.private_key,
        certificate_chain=files.cert_chain,
    )


def load_tls_files(cert_file: Path, key_file: Path, ca_file: Path) -> TlsFiles:
    """Read and check a certificate chain, its key and a CA bundle.

    Checking here turns grpc-core's opaque handshake failures into an error naming the file.

    Raises:
        TlsConfigError: A file cannot be read, holds no PEM of the expected kind, or the key does
            not match the first certificate of the chain.
    """
    chain = _read(cert_file, "certificate")
    key_pem = _read(key_file, "private key")
    ca = _read(ca_file, "CA certificate")
    certs = _parse_certs(chain, cert_file, "certificate")
    _parse_certs(ca, ca_file, "CA certificate")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # The parser's message could echo key material: report only the file.
        raise TlsConfigError(f"{key_file} does not hold an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    leaf_public = certs[0].public_key().public_bytes(*spki)
    key_public = key.public_key().public_bytes(*spki)
    if leaf_public != key_public:
        raise TlsConfigError(f"{key_file} does not match the certificate in {cert_file}")
    return TlsFiles(cert_chain=chain, private_key=key_pem, client_ca=ca)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS {what} file {path}: {exc.strerror}") from None
    if not data.strip():
        raise TlsConfigError(f"TLS {what} file {path} is empty")
    return data


def _parse_certs(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"TLS {what} file {path} does not hold PEM certificates") from None
    return certs


_Signature = tuple[tuple[int, int, int], ...]


class _Reloader:
    """Certificate-config fetcher for ``grpc.dynamic_ssl_server_credentials``.

    grpc-core calls :meth:`fetch` from its own threads before each new handshake: return ``None``
    for "keep the current config" (cheap), or a new config after the files changed.
    """

    def __init__(self, cert_file: Path, key_file: Path, ca_file: Path) -> None:
        self._paths = (cert_file, key_file, ca_file)
        self._lock = threading.Lock()
        # Stat before reading: if a file changes in between, the next check sees a new signature
        # and loads again, rather than missing the change.
        self._signature = self._stat()
        self.initial = self._config(load_tls_files(*self._paths))
        self._next_check = time.monotonic() + _RELOAD_CHECK_INTERVAL_S

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        now = time.monotonic()
        # Handshakes race here; one of them does the check, the others keep the current config.
        if now < self._next_check or not self._lock.acquire(blocking=False):
            return None
        try:
            self._next_check = now + _RELOAD_CHECK_INTERVAL_S
            try:
                signature = self._stat()
            except TlsConfigError as exc:
                _log.warning("TLS reload skipped, keeping the current certificate: %s", exc)
                return None
            if signature == self._signature:
                return None
            try:
                files = load_tls_files(*self._paths)
            except TlsConfigError as exc:
                # Likely mid-rotation (new cert, old key): keep serving, retry on the next check.
                _log.warning("TLS reload skipped, keeping the current certificate: %s", exc)
                return None
            self._signature = signature
            _log.info("TLS certificate files changed; new connections use the new certificate")
            return self._config(files)
        finally:
            self._lock.release()

    def _stat(self) -> _Signature:
        sig: list[tuple[int, int, int]] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise TlsConfigError(f"cannot stat TLS file {path}: {exc.strerror}") from None
            sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    @staticmethod
    def _config(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(files.private_key, files.cert_chain)], root_certificates=files.client_ca
        )
