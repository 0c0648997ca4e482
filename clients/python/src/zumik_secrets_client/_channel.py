"""Open an mTLS channel with the client defaults: claim metadata, deadline, retries."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc

from zumik_secrets_client import _retry

#: Metadata key that carries the caller's signed tenant claim.
CLAIM_METADATA_KEY: Final = "zumik-claim"

_T = TypeVar("_T")

if TYPE_CHECKING:
    # grpc-stubs makes the interceptor bases generic; the runtime classes are not subscriptable.
    from grpc import Metadata as _Metadata

    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor
    _StreamUnary = grpc.StreamUnaryClientInterceptor
    _StreamStream = grpc.StreamStreamClientInterceptor


@dataclasses.dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    """Concrete call details; grpc only defines the abstract attribute set."""

    method: str
    timeout: float | None
    # Holds the claim: kept out of repr so it never reaches a log line.
    metadata: _Metadata | None = dataclasses.field(repr=False)
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class DefaultsInterceptor(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Client interceptor adding the claim metadata and a default deadline to every call.

    A call that already carries ``zumik-claim`` metadata keeps its own; a call that passes a
    timeout keeps it.
    """

    __slots__ = ("_claim", "_default_timeout")

    def __init__(self, *, claim: str | None, default_timeout: float | None) -> None:
        """Create the interceptor.

        Args:
            claim: signed tenant claim sent as ``zumik-claim`` metadata, or None to send none.
            default_timeout: seconds allowed to a call that passes no timeout; None for no
                default.

        Raises:
            ValueError: if the claim is empty or not printable ASCII, or the timeout is not
                positive.
        """
        if claim is not None and not (claim and claim.isascii() and claim.isprintable()):
            # The value is deliberately not echoed: it is a credential.
            raise ValueError("claim must be non-empty printable ASCII")
        if default_timeout is not None and not default_timeout > 0:
            raise ValueError("default_timeout must be a positive number of seconds")
        self._claim = claim
        self._default_timeout = default_timeout

    def __repr__(self) -> str:
        claim = "<set>" if self._claim is not None else None
        return f"DefaultsInterceptor(claim={claim}, default_timeout={self._default_timeout})"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = tuple(details.metadata or ())
        if self._claim is not None and not any(k == CLAIM_METADATA_KEY for k, _ in metadata):
            metadata = (*metadata, (CLAIM_METADATA_KEY, self._claim))
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        return _CallDetails(
            method=details.method,
            timeout=timeout,
            metadata=metadata or None,
            credentials=details.credentials,
            wait_for_ready=getattr(details, "wait_for_ready", None),
            compression=getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Forward a unary-unary call with the defaults applied."""
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Forward a unary-stream call with the defaults applied."""
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Forward a stream-unary call with the defaults applied."""
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Forward a stream-stream call with the defaults applied."""
        return continuation(self._details(client_call_details), request_iterator)


def connect(
    target: str,
    *,
    ca_file: str | os.PathLike[str],
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    claim: str | None = None,
    default_timeout: float = 5.0,
    server_name: str | None = None,
) -> grpc.Channel:
    """Open a mutually authenticated TLS channel to a Zumik Secrets server.

    Args:
        target: ``host:port`` (or any gRPC target) of the server.
        ca_file: PEM bundle of the CA(s) that sign the server's certificate.
        cert_file: PEM client certificate (chain) presented to the server.
        key_file: PEM private key of the client certificate.
        claim: signed tenant claim attached to every call as ``zumik-claim`` metadata.
        default_timeout: deadline in seconds for calls that pass no timeout.
        server_name: name to verify the server certificate against, when it differs from the
            host in ``target`` (for example when dialing an IP address).

    Returns:
        A channel to build the ``zumik.secrets.v1`` stubs on; close it (or use it as a context
        manager) when done. Idempotent methods (see ``idempotent_methods()``) are retried on
        ``UNAVAILABLE`` within their deadline; no other method is retried.

    Raises:
        OSError: if one of the PEM files cannot be read.
        ValueError: if ``claim`` or ``default_timeout`` is invalid.
    """
    interceptor = DefaultsInterceptor(claim=claim, default_timeout=default_timeout)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes(),
        private_key=Path(key_file).read_bytes(),
        certificate_chain=Path(cert_file).read_bytes(),
    )
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _retry.service_config(_retry.idempotent_methods())),
        # Our config is authoritative: never take one from the name resolver (DNS TXT records).
        ("grpc.service_config_disable_resolution", 1),
    ]
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    channel = grpc.secure_channel(target, credentials, options=options)
    return grpc.intercept_channel(channel, interceptor)
