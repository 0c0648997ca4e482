"""OpenBao / Vault Transit as a :class:`~zumik_secrets.app.key_wrappers.KeyWrapper`.

Only the standard library: ``http.client`` over TLS with an ``ssl`` context that trusts the
configured CA (or the system roots), one connection per call, no proxies and no redirects.

Every call has an **overall** deadline: ``timeout``, or less when the caller's gRPC deadline is
nearer (:func:`zumik_secrets.app.deadlines.budget`). It bounds connecting, sending and the whole
answer: each socket operation gets only the time left, so a server that drips one byte at a time
cannot stretch a call past it (a per-read timeout alone let it run for ever). A
:class:`~zumik_secrets.app.outbound_limits.CircuitBreaker` per server fails calls at once while
the server keeps failing. The TLS handshake runs non-blocking against the same deadline.

The token travels only in the ``X-Vault-Token`` header and never appears in an error, a log line
or ``repr``.

Calls: ``POST /v1/{mount}/encrypt/{key}`` and ``/decrypt/{key}`` with base64 ``plaintext`` and
``associated_data`` (Transit's AEAD keys, such as the default ``aes256-gcm96``, authenticate it;
no derivation ``context`` is needed). The wrapped blob is Transit's ``vault:v<n>:...`` text.

Answers map to our errors: 400 with an authentication failure -> ``DecryptionFailed`` (the blob
or associated data was altered); any other 400, 403 or 404 -> ``FailedPrecondition``
``CUSTOMER_KEY_UNAVAILABLE`` (key disabled, deleted, or permission revoked); connection
failures, timeouts, 429 and 5xx -> ``Unavailable`` ``CUSTOMER_KEY_UNREACHABLE``.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import select
import socket
import ssl
import time
from typing import Any
from urllib.parse import quote, urlsplit

from opentelemetry import trace

from zumik_secrets.app.deadlines import budget
from zumik_secrets.app.key_wrappers import (
    KIND_CUSTOMER,
    customer_key_unavailable,
    customer_key_unreachable,
)
from zumik_secrets.app.metrics import recorder
from zumik_secrets.app.outbound_limits import Breakers, CircuitBreaker, CircuitOpen
from zumik_secrets.core.errors import (
    DecryptionFailed,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    ZumikError,
)

MAX_RESPONSE_BYTES = 1 << 20
_MOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}){0,3}")
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,1024}")
_TRACER = trace.get_tracer("zumik_secrets.customer_keys")


class _DeadlineSocket:
    """A connected socket whose every operation gets only the time left before ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("customer key call deadline")
        self._sock.settimeout(left)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(bufsize, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        self._sock.sendall(data, flags)

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        # http.client reads the answer through this file; SocketIO calls our recv_into. As
        # socket.makefile does, count the file as a user of the socket, so that closing the
        # connection (an HTTP/1.0 answer closes it at once) waits for the file to be closed.
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("customer key call deadline")
    return left


def _bad(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} {problem}",
        reason="INVALID_CUSTOMER_KEY",
        metadata={"field": field},
        violations=[FieldViolation(field, problem)],
    )


class OpenBaoTransit:
    """One Transit key reached with one token.

    Args:
        address: ``https://host[:port]`` (no path).
        mount: Transit mount path (``transit``).
        key_name: Transit key name.
        token: Token with encrypt and decrypt permission on the key.
        ca_certificate_pem: PEM CA(s) to trust for ``address``; "" for the system roots.
        timeout: Seconds for the whole call (connect, send, the whole answer), less when the
            caller's deadline is nearer.
        allow_http: Accept ``http://`` (tests on loopback only; never in production).
        breakers: Where this server's circuit breaker is kept (None: a private one).

    Raises:
        InvalidArgument: Reason ``INVALID_CUSTOMER_KEY`` naming the bad field.
    """

    kind = KIND_CUSTOMER

    def __init__(
        self,
        address: str,
        mount: str,
        key_name: str,
        token: str,
        ca_certificate_pem: str = "",
        *,
        timeout: float = 5.0,
        allow_http: bool = False,
        breakers: Breakers | None = None,
    ) -> None:
        parts = urlsplit(address) if isinstance(address, str) and len(address) <= 512 else None
        schemes = ("https", "http") if allow_http else ("https",)
        try:
            port = parts.port if parts is not None else None
        except ValueError:
            parts = None
            port = None
        if (
            parts is None
            or parts.scheme not in schemes
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username
            or parts.password
        ):
            raise _bad("address", "must look like https://host[:port]")
        if not _MOUNT_RE.fullmatch(mount):
            raise _bad("mount", "must be a Transit mount path such as transit")
        if not _KEY_RE.fullmatch(key_name):
            raise _bad("key_name", "must be 1 to 128 letters, digits, '_', '.' or '-'")
        if not _TOKEN_RE.fullmatch(token):
            raise _bad("token", "must be 1 to 1024 printable ASCII characters")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._mount = mount
        self._key = key_name
        self._token = token
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self._https:
            try:
                if ca_certificate_pem:
                    self._context = ssl.create_default_context(cadata=ca_certificate_pem)
                else:
                    self._context = ssl.create_default_context()
            except (ssl.SSLError, ValueError):
                raise _bad("ca_certificate_pem", "is not a PEM CA certificate") from None
            self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._breaker = breakers.for_server(self.server) if breakers else CircuitBreaker()

    def __repr__(self) -> str:
        scheme = "https" if self._https else "http"
        return f"OpenBaoTransit({scheme}://{self._host}:{self._port}, {self._mount}/{self._key})"

    @property
    def server(self) -> str:
        """``scheme://host:port``: the key of this server's circuit breaker."""
        scheme = "https" if self._https else "http"
        return f"{scheme}://{self._host}:{self._port}"

    def _post(self, operation: str, body: dict[str, str]) -> dict[str, Any]:
        """One call, in a child span of the current call and timed for the metrics.

        The span names the operation only: never the tenant's key server, key name, token or
        payload (the tenant's configuration stays out of metadata-only telemetry).
        """
        started = time.monotonic()
        outcome = "ok"
        with _TRACER.start_as_current_span(
            f"zumik.customer_key.{operation}",
            kind=trace.SpanKind.CLIENT,
            attributes={"zumik.customer_key.operation": operation},
        ) as span:
            try:
                return self._guarded(operation, body)
            except ZumikError as exc:
                outcome = exc.reason
                span.set_status(trace.Status(trace.StatusCode.ERROR, exc.reason))
                raise
            except DecryptionFailed:
                outcome = "DECRYPTION_FAILED"
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
                raise
            finally:
                recorder().customer_key_call(operation, time.monotonic() - started, outcome)

    def _guarded(self, operation: str, body: dict[str, str]) -> dict[str, Any]:
        """The call behind this server's circuit breaker."""
        try:
            self._breaker.before()
        except CircuitOpen:
            raise customer_key_unreachable() from None
        try:
            data = self._exchange(operation, body)
        except Unavailable:
            self._breaker.failure()
            raise
        except BaseException:
            self._breaker.neutral()
            raise
        self._breaker.success()
        return data

    def _connect(self, deadline: float) -> socket.socket:
        """TCP connect, then (https) a TLS handshake, both within ``deadline``.

        Raises:
            OSError: refused, unreachable, timed out, TLS verification failed.
        """
        port = self._port or (443 if self._https else 80)
        raw = socket.create_connection(
            (self._host, port), timeout=max(0.001, deadline - time.monotonic())
        )
        if not self._https or self._context is None:
            return raw
        try:
            tls = self._context.wrap_socket(
                raw, server_hostname=self._host, do_handshake_on_connect=False
            )
            tls.setblocking(False)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    ready = select.select([tls], [], [], _left(deadline))[0]
                except ssl.SSLWantWriteError:
                    ready = select.select([], [tls], [], _left(deadline))[1]
                if not ready:
                    raise TimeoutError("customer key TLS handshake deadline")
            tls.setblocking(True)
            return tls
        except BaseException:
            raw.close()
            raise

    def _exchange(self, operation: str, body: dict[str, str]) -> dict[str, Any]:
        allowed = budget(self._timeout)
        if allowed <= 0:
            raise customer_key_unreachable()
        deadline = time.monotonic() + allowed
        path = f"/v1/{quote(self._mount)}/{operation}/{quote(self._key, safe='')}"
        conn = http.client.HTTPConnection(self._host, self._port, timeout=allowed)
        try:
            conn.sock = _DeadlineSocket(self._connect(deadline), deadline)
            conn.request(
                "POST",
                path,
                body=json.dumps(body).encode(),
                headers={"X-Vault-Token": self._token, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            status = response.status
            payload = response.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException):
            # Refused, reset, DNS, TLS verification and timeouts all land here.
            raise customer_key_unreachable() from None
        finally:
            conn.close()
        if len(payload) > MAX_RESPONSE_BYTES:
            raise customer_key_unreachable()
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if status == 200:
            data = doc.get("data")
            if not isinstance(data, dict):
                raise customer_key_unreachable()
            return data
        if status in (400, 403, 404):
            problems = doc.get("errors")
            text = " ".join(str(p) for p in problems) if isinstance(problems, list) else ""
            if status == 400 and "authentication failed" in text:
                raise DecryptionFailed()
            raise customer_key_unavailable()
        raise customer_key_unreachable()

    def wrap(self, plaintext_key: bytes, associated_data: bytes, /) -> bytes:
        """Encrypt with the Transit key.

        Raises:
            FailedPrecondition: Reason ``CUSTOMER_KEY_UNAVAILABLE``.
            Unavailable: Reason ``CUSTOMER_KEY_UNREACHABLE``.
        """
        data = self._post(
            "encrypt",
            {
                "plaintext": base64.b64encode(plaintext_key).decode(),
                "associated_data": base64.b64encode(associated_data).decode(),
            },
        )
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:"):
            raise customer_key_unreachable()
        return ciphertext.encode("ascii")

    def unwrap(self, blob: bytes, associated_data: bytes, /) -> bytes:
        """Decrypt with the Transit key.

        Raises:
            DecryptionFailed: The blob or associated data does not authenticate.
            FailedPrecondition: Reason ``CUSTOMER_KEY_UNAVAILABLE``.
            Unavailable: Reason ``CUSTOMER_KEY_UNREACHABLE``.
        """
        try:
            ciphertext = blob.decode("ascii")
        except UnicodeDecodeError:
            raise DecryptionFailed() from None
        data = self._post(
            "decrypt",
            {
                "ciphertext": ciphertext,
                "associated_data": base64.b64encode(associated_data).decode(),
            },
        )
        plaintext = data.get("plaintext")
        if not isinstance(plaintext, str):
            raise customer_key_unreachable()
        try:
            return base64.b64decode(plaintext, validate=True)
        except ValueError:
            raise customer_key_unreachable() from None
