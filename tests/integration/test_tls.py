"""Mutual TLS over a real grpcio server on 127.0.0.1:0.

Proves that the server demands a client certificate from our CA, exposes the caller's SPIFFE ID,
refuses TLS 1.1 while accepting 1.2 and 1.3, and serves a rotated certificate to new connections
without a restart.
"""

from __future__ import annotations

import os

# Handshake failures are logged at INFO by grpc-core; the failing cases below are expected.
# Must be set before grpc is first imported (tests/conftest.py is the better place for it).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography import x509

from zumik_secrets.cli.dev_pki import CertPair, DevPki, issue_server_cert
from zumik_secrets.server.tls import (
    TlsConfigError,
    channel_credentials,
    server_credentials,
)

pytestmark = pytest.mark.integration

PING = "/test.Echo/Ping"
DEADLINE_S = 5.0


@dataclass
class _Echo:
    """A tiny server that echoes bytes and records each caller's auth context."""

    port: int = 0
    auth_contexts: list[dict[str, list[bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        # grpc-stubs types the values as bytes; grpcio really returns a list of bytes per key.
        auth = cast(Mapping[str, Iterable[bytes]], context.auth_context())
        with self.lock:
            self.auth_contexts.append({k: list(v) for k, v in auth.items()})
        return request


@contextmanager
def _serve(creds: grpc.ServerCredentials) -> Iterator[_Echo]:
    echo = _Echo()
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(echo.ping)}
    )
    server.add_generic_rpc_handlers((handler,))
    echo.port = server.add_secure_port("127.0.0.1:0", creds)
    assert echo.port != 0
    server.start()
    try:
        yield echo
    finally:
        server.stop(grace=None)


@pytest.fixture
def echo_server(dev_pki: DevPki) -> Iterator[_Echo]:
    with _serve(server_credentials(dev_pki.server.cert, dev_pki.server.key, dev_pki.ca_cert)) as e:
        yield e


def _ping(port: int, creds: grpc.ChannelCredentials) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        reply: bytes = channel.unary_unary(PING, None, None)(b"hello", timeout=DEADLINE_S)
        return reply


def _client_creds(pki: DevPki, pair: CertPair) -> grpc.ChannelCredentials:
    return channel_credentials(pki.ca_cert, pair.cert, pair.key)


# --- (a) a dev client certificate is accepted and identified ------------------------------------


@pytest.mark.parametrize("reload", [True, False])
def test_client_with_dev_cert_is_identified(dev_pki: DevPki, reload: bool) -> None:
    creds = server_credentials(
        dev_pki.server.cert, dev_pki.server.key, dev_pki.ca_cert, reload=reload
    )
    with _serve(creds) as echo:
        assert _ping(echo.port, _client_creds(dev_pki, dev_pki.client("console"))) == b"hello"
    (auth,) = echo.auth_contexts
    assert auth["peer_spiffe_id"] == [b"spiffe://zumik.local/svc/console"]
    assert auth["transport_security_type"] == [b"ssl"]
    assert auth["ssl_tls_version"][0] in (b"TLSv1.2", b"TLSv1.3")


def test_each_role_is_seen_as_itself(dev_pki: DevPki, echo_server: _Echo) -> None:
    for role in dev_pki.clients:
        _ping(echo_server.port, _client_creds(dev_pki, dev_pki.client(role)))
    seen = [a["peer_spiffe_id"] for a in echo_server.auth_contexts]
    assert seen == [[dev_pki.spiffe_id(r).encode()] for r in dev_pki.clients]


def test_stranger_passes_tls_with_its_own_identity(
    dev_pki: DevPki, stranger_cert: CertPair, echo_server: _Echo
) -> None:
    # TLS only proves the CA; refusing unlisted identities is the authorization layer's job.
    _ping(echo_server.port, _client_creds(dev_pki, stranger_cert))
    assert echo_server.auth_contexts[-1]["peer_spiffe_id"] == [b"spiffe://zumik.local/svc/stranger"]


# --- (b), (c) callers without a certificate from our CA never reach a handler -------------------


def _assert_refused(port: int, creds: grpc.ChannelCredentials) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        _ping(port, creds)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Refused in the handshake, not by running out the deadline.
    assert time.monotonic() - started < DEADLINE_S - 1


def test_client_without_certificate_is_refused(dev_pki: DevPki, echo_server: _Echo) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=dev_pki.ca_cert.read_bytes())
    _assert_refused(echo_server.port, creds)
    assert echo_server.auth_contexts == []


def test_client_from_rogue_ca_is_refused(
    dev_pki: DevPki, rogue_pki: DevPki, echo_server: _Echo
) -> None:
    rogue_console = rogue_pki.client("console")
    # Trusts the real server, presents a look-alike console certificate from another CA.
    creds = channel_credentials(dev_pki.ca_cert, rogue_console.cert, rogue_console.key)
    _assert_refused(echo_server.port, creds)
    assert echo_server.auth_contexts == []


def test_client_refuses_server_of_another_ca(dev_pki: DevPki, rogue_pki: DevPki) -> None:
    rogue = server_credentials(rogue_pki.server.cert, rogue_pki.server.key, rogue_pki.ca_cert)
    with _serve(rogue) as echo:
        _assert_refused(echo.port, _client_creds(dev_pki, dev_pki.client("console")))
    assert echo.auth_contexts == []


# --- (d) TLS 1.2 is the floor --------------------------------------------------------------------


def _s_client(port: int, pki: DevPki, version: str) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not installed")
    pair = pki.client("console")
    cmd = [
        openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2", f"-{version}",
        "-cert", str(pair.cert), "-key", str(pair.key), "-CAfile", str(pki.ca_cert),
        "-verify_return_error", "-brief", "-msg",
        # OpenSSL 3's default security level forbids TLS 1.1 client-side; lower it so that a
        # refusal can only come from the server.
        "-cipher", "DEFAULT@SECLEVEL=0",
    ]  # fmt: skip
    # A fixed argument list with no shell: nothing untrusted reaches the command line.
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",  # the server's HTTP/2 preface is binary
        timeout=20,
        check=False,
    )


def test_tls_1_1_is_refused_by_the_server(dev_pki: DevPki, echo_server: _Echo) -> None:
    result = _s_client(echo_server.port, dev_pki, "tls1_1")
    out = result.stdout + result.stderr
    # The client really offered TLS 1.1 (it did not give up locally)...
    assert ">>> TLS 1.1, Handshake" in out and "ClientHello" in out, out
    assert "no protocols available" not in out, out
    # ...and the server answered with no ServerHello: no handshake, no session.
    assert "ServerHello" not in out, out
    assert "CONNECTION ESTABLISHED" not in out, out
    assert "Protocol version: TLSv1.1" not in out, out
    assert result.returncode != 0, out


@pytest.mark.parametrize(("version", "label"), [("tls1_2", "TLSv1.2"), ("tls1_3", "TLSv1.3")])
def test_tls_1_2_and_1_3_are_accepted(
    dev_pki: DevPki, echo_server: _Echo, version: str, label: str
) -> None:
    result = _s_client(echo_server.port, dev_pki, version)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "CONNECTION ESTABLISHED" in out, out
    assert f"Protocol version: {label}\n" in out, out
    assert "Verification: OK" in out, out
    assert "Peer certificate: CN = zumik-secrets" in out, out


# --- (e) a rotated server certificate reaches new connections without a restart -----------------


def _served_serial(port: int, pki: DevPki) -> int:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    pair = pki.client("console")
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_rotated_server_certificate_reaches_new_connections(pki_copy: DevPki) -> None:
    pki = pki_copy
    old_serial = _serial(pki.server.cert)
    console = _client_creds(pki, pki.client("console"))
    with _serve(server_credentials(pki.server.cert, pki.server.key, pki.ca_cert)) as echo:
        assert _served_serial(echo.port, pki) == old_serial
        with grpc.secure_channel(f"127.0.0.1:{echo.port}", console) as old_channel:
            old_channel.unary_unary(PING, None, None)(b"before", timeout=DEADLINE_S)

            issue_server_cert(pki.directory, out_dir=pki.directory, overwrite=True)
            new_serial = _serial(pki.server.cert)
            assert new_serial != old_serial

            # The server checks the files at most once a second, on new connections.
            served = old_serial
            give_up = time.monotonic() + 5.0
            while served != new_serial and time.monotonic() < give_up:
                time.sleep(0.3)
                served = _served_serial(echo.port, pki)
            assert served == new_serial

            # New gRPC connections work with the new certificate; the old one keeps working.
            assert _ping(echo.port, console) == b"hello"
            old_channel.unary_unary(PING, None, None)(b"after", timeout=DEADLINE_S)


def test_half_rotated_pair_keeps_the_old_certificate(pki_copy: DevPki, tmp_path: Path) -> None:
    pki = pki_copy
    old_serial = _serial(pki.server.cert)
    with _serve(server_credentials(pki.server.cert, pki.server.key, pki.ca_cert)) as echo:
        # A new certificate lands before its key: the pair does not match, so keep the old one.
        spare = issue_server_cert(pki.directory, out_dir=tmp_path / "spare")
        os.replace(spare.cert, pki.server.cert)
        time.sleep(1.2)
        assert _served_serial(echo.port, pki) == old_serial
        # Then the key arrives: the next check serves the new pair.
        os.replace(spare.key, pki.server.key)
        new_serial = _serial(pki.server.cert)
        served = old_serial
        give_up = time.monotonic() + 5.0
        while served != new_serial and time.monotonic() < give_up:
            time.sleep(0.3)
            served = _served_serial(echo.port, pki)
        assert served == new_serial


# --- configuration errors name the file, never its contents -------------------------------------


def test_missing_file_is_named(dev_pki: DevPki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    for reload in (True, False):
        with pytest.raises(TlsConfigError, match=r"nope\.crt"):
            server_credentials(missing, dev_pki.server.key, dev_pki.ca_cert, reload=reload)
    with pytest.raises(TlsConfigError, match=r"nope\.crt"):
        channel_credentials(dev_pki.ca_cert, missing, dev_pki.server.key)


def test_mismatched_key_is_refused_without_leaking_it(dev_pki: DevPki) -> None:
    console_key = dev_pki.client("console").key
    with pytest.raises(TlsConfigError, match="does not match") as info:
        server_credentials(dev_pki.server.cert, console_key, dev_pki.ca_cert)
    assert "PRIVATE KEY" not in str(info.value)


def test_key_in_place_of_certificate_is_refused_without_leaking_it(dev_pki: DevPki) -> None:
    key = dev_pki.server.key
    with pytest.raises(TlsConfigError, match="does not hold PEM certificates") as info:
        server_credentials(key, key, dev_pki.ca_cert)
    assert "PRIVATE KEY" not in str(info.value)
    assert key.read_text().splitlines()[1] not in str(info.value)
