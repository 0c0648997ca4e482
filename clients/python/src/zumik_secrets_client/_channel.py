"""Open an mTLS channel with the client defaults: claims, deadlines, retries, typed errors.

``connect()`` stacks, from the network up: a channel per certificate generation (rebuilt when
the certificate files change, see ``_reload``), configured with a service config generated from
the contracts (per-method deadlines, retries for idempotent methods only, load balancing), and
one client interceptor that attaches the claim through call credentials and raises the typed
errors of ``zumik_secrets_client.errors``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from zumik_secrets_client import _retry, errors
from zumik_secrets_client._reload import CertificateFiles, TlsMaterial
from zumik_secrets_client.credentials import (
    CLAIM_METADATA_KEY as CLAIM_METADATA_KEY,
)
from zumik_secrets_client.credentials import (
    ClaimProvider,
    _Slot,
    claim_call_credentials,
    provider_error,
    refused_claim,
    static_claim,
)

_T = TypeVar("_T")

if TYPE_CHECKING:
    # grpc-stubs makes the interceptor bases generic; the runtime classes are not subscriptable.
    from grpc import Metadata as _Metadata

    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
    _Future = grpc.Future[Any]
else:
    _Future = grpc.Future
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


@dataclasses.dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 keepalive pings, to notice a dead connection (or keep one through an idle NAT).

    The server accepts pings at most every 10 s while calls run, and (grpcio's default) every
    5 minutes on an idle connection unless its operator allows more: keep ``time`` at or above
    what the server permits, or it closes the connection with ``too_many_pings``.

    Attributes:
        time: seconds between pings.
        timeout: seconds to wait for a ping's answer before the connection counts as dead.
        permit_without_calls: also ping while no call is running.
    """

    time: float = 300.0
    timeout: float = 20.0
    permit_without_calls: bool = False

    def __post_init__(self) -> None:
        if not (self.time > 0 and self.timeout > 0):
            raise ValueError("keepalive time and timeout must be positive numbers of seconds")

    def options(self) -> list[tuple[str, int]]:
        """The grpc channel options for these settings."""
        return [
            ("grpc.keepalive_time_ms", round(self.time * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
        ]


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Everything both the sync and the aio ``connect()`` derive from their arguments."""

    options: list[tuple[str, Any]]
    provider: ClaimProvider | None
    longest_deadline: float
    #: Per-method deadlines (None: none) and the one of methods outside the contracts.
    timeouts: Mapping[str, float | None]
    default_timeout: float | None


def channel_settings(
    *,
    claim: str | ClaimProvider | None,
    default_timeout: float | None,
    stream_timeout: float | None,
    deadlines: Mapping[str, float | None] | None,
    server_name: str | None,
    options: Sequence[tuple[str, Any]],
    load_balancing: str | None,
    keepalive: Keepalive | None,
) -> ChannelSettings:
    """Check the arguments of ``connect()`` and build the channel options from them."""
    provider: ClaimProvider | None
    provider = claim if claim is None or callable(claim) else static_claim(claim)
    for name, value in (("default_timeout", default_timeout), ("stream_timeout", stream_timeout)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds or None")
    timeouts = _retry.method_timeouts(default_timeout, stream_timeout, deadlines)
    config = _retry.service_config(
        _retry.idempotent_methods(),
        timeouts=timeouts,
        default_timeout=default_timeout,
        load_balancing=load_balancing,
    )
    merged: dict[str, Any] = {
        "grpc.enable_retries": 1,
        "grpc.service_config": config,
        # Our config is authoritative: never take one from the name resolver (DNS TXT records).
        "grpc.service_config_disable_resolution": 1,
    }
    if server_name is not None:
        merged["grpc.ssl_target_name_override"] = server_name
    if keepalive is not None:
        merged.update(keepalive.options())
    merged.update(dict(options))  # the caller's options win
    known = [t for t in (*timeouts.values(), default_timeout) if t is not None]
    # No call outlives this (the config bounds every deadline); an hour if the caller lifted one.
    longest = max(known, default=0.0) if None not in timeouts.values() else 3600.0
    return ChannelSettings(list(merged.items()), provider, longest + 1.0, timeouts, default_timeout)


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def attach_claim(
    provider: ClaimProvider | None,
    method: str | bytes,
    metadata: Any,
    credentials: grpc.CallCredentials | None,
) -> tuple[Any, grpc.CallCredentials | None, _Slot | None]:
    """Add the claim unless the method needs none or the call carries its own.

    A fixed claim (``static_claim``, or a string given to ``connect``) goes straight into the
    metadata; a provider is asked per call (per attempt) through call credentials, which grpc
    runs on a thread of its own for each call.

    Returns:
        The call's metadata, credentials, and the slot where a provider's exception lands.
    """
    if provider is None or _method_name(method) in _retry.claimless_methods():
        return metadata, credentials, None
    if any(key == CLAIM_METADATA_KEY for key, _ in (metadata or ())):
        return metadata, credentials, None
    if getattr(provider, "zumik_static", False):
        return (*(metadata or ()), (CLAIM_METADATA_KEY, provider())), credentials, None
    slot = _Slot(provider)
    claim_credentials = claim_call_credentials(provider, slot=slot)
    if credentials is not None:
        claim_credentials = grpc.composite_call_credentials(credentials, claim_credentials)
    return metadata, claim_credentials, slot


def _quiet(error: BaseException) -> BaseException:
    """Raise ``error`` without grpc's own exception as context (a provider's cause stays)."""
    error.__suppress_context__ = True
    return error


def convert_error(error: grpc.RpcError, slot: _Slot | None, typed: bool) -> BaseException:
    """The exception to raise for a failed call: the provider's own, typed, or grpc's."""
    typed_error = errors.from_rpc_error(error)
    if slot is not None and slot.error is not None:
        return _quiet(provider_error(slot, typed_error))
    if slot is not None:
        refused_claim(slot.provider, typed_error)
    return _quiet(typed_error) if typed else error


class _TypedOutcome(grpc.Call, _Future):
    """A unary call's outcome whose ``result()``/``exception()`` give the typed error."""

    def __init__(self, inner: Any, convert: Callable[[grpc.RpcError], BaseException]) -> None:
        self._inner = inner
        self._convert = convert

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._inner.result(timeout)
        except grpc.RpcError as exc:
            raise _quiet(self._convert(exc))  # noqa: B904 - _quiet hides grpc's error

    def exception(self, timeout: float | None = None) -> BaseException | None:  # type: ignore[override]
        exc: BaseException | None = self._inner.exception(timeout)
        return self._convert(exc) if isinstance(exc, grpc.RpcError) else exc

    def traceback(self, timeout: float | None = None) -> Any:
        return self._inner.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._inner.add_done_callback(lambda _inner: fn(self))

    def cancel(self) -> bool:
        return bool(self._inner.cancel())

    def cancelled(self) -> bool:
        return bool(self._inner.cancelled())

    def running(self) -> bool:
        return bool(self._inner.running())

    def done(self) -> bool:
        return bool(self._inner.done())

    def is_active(self) -> bool:
        return bool(self._inner.is_active())

    def time_remaining(self) -> float | None:  # type: ignore[override]
        remaining: float | None = self._inner.time_remaining()
        return remaining

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._inner.add_callback(callback))

    def initial_metadata(self) -> Any:
        return self._inner.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._inner.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self._inner.code()
        return code

    def details(self) -> str:
        details: str = self._inner.details()
        return details


class _TypedStream(_TypedOutcome):
    """A response stream whose iteration raises the typed error."""

    def __iter__(self) -> _TypedStream:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except grpc.RpcError as exc:
            raise _quiet(self._convert(exc))  # noqa: B904 - _quiet hides grpc's error


def call_timeout(
    timeout: float | None,
    method: str | bytes,
    timeouts: Mapping[str, float | None],
    default_timeout: float | None,
) -> float | None:
    """The deadline to send: the call's own, else the method's configured one.

    The service config holds the same deadlines, but grpc enforces those in the client only;
    setting them on the call also puts them on the wire (``grpc-timeout``), so the server
    stops working on a call its caller gave up on.
    """
    if timeout is not None:
        return timeout
    return timeouts.get(_method_name(method), default_timeout)


class ClientInterceptor(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Attaches the claim (per call, through call credentials), the method's default deadline,
    and raises typed errors."""

    __slots__ = ("_default_timeout", "_provider", "_timeouts", "_typed")

    def __init__(
        self,
        provider: ClaimProvider | None,
        *,
        typed_errors: bool = True,
        timeouts: Mapping[str, float | None] | None = None,
        default_timeout: float | None = None,
    ) -> None:
        """Create the interceptor (``provider`` None: send no claim)."""
        self._provider = provider
        self._typed = typed_errors
        self._timeouts = dict(timeouts or {})
        self._default_timeout = default_timeout

    def __repr__(self) -> str:
        return f"ClientInterceptor(claim={'<provider>' if self._provider else None})"

    def _details(self, details: grpc.ClientCallDetails) -> tuple[grpc.ClientCallDetails, Any]:
        metadata, credentials, slot = attach_claim(
            self._provider, details.method, details.metadata, details.credentials
        )
        new = _CallDetails(
            method=details.method,
            timeout=call_timeout(
                details.timeout, details.method, self._timeouts, self._default_timeout
            ),
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=getattr(details, "wait_for_ready", None),
            compression=getattr(details, "compression", None),
        )
        return new, slot

    def _converter(self, slot: _Slot | None) -> Callable[[grpc.RpcError], BaseException]:
        typed = self._typed
        return lambda exc: convert_error(exc, slot, typed)

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Run a unary-unary call."""
        details, slot = self._details(client_call_details)
        return _TypedOutcome(continuation(details, request), self._converter(slot))

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Run a unary-stream call."""
        details, slot = self._details(client_call_details)
        return _TypedStream(continuation(details, request), self._converter(slot))

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Run a stream-unary call."""
        details, slot = self._details(client_call_details)
        return _TypedOutcome(continuation(details, request_iterator), self._converter(slot))

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Run a stream-stream call."""
        details, slot = self._details(client_call_details)
        return _TypedStream(continuation(details, request_iterator), self._converter(slot))


class _Resolving:
    """A multi-callable that picks the current underlying channel on every call."""

    __slots__ = ("_args", "_kind", "_owner")

    def __init__(self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...]) -> None:
        self._owner = owner
        self._kind = kind
        self._args = args

    def _target(self) -> Any:
        return getattr(self._owner.current(), self._kind)(*self._args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().future(*args, **kwargs)


class ReloadingChannel(grpc.Channel):
    """An mTLS channel that rebuilds itself when its certificate files change.

    Each call goes to the channel built from the newest files; a replaced channel keeps
    serving the calls it has until ``retire_after`` seconds (longer than any deadline the
    service config allows), then is closed. ``subscribe`` follows the channel current at the
    time it is called.
    """

    def __init__(
        self,
        target: str,
        files: CertificateFiles,
        options: Sequence[tuple[str, Any]],
        *,
        retire_after: float,
    ) -> None:
        """Build the first underlying channel from ``files``."""
        self._target = target
        self._files = files
        self._options = list(options)
        self._retire_after = retire_after
        self._lock = threading.Lock()
        self._closed = False
        self._retired: list[tuple[grpc.Channel, threading.Timer]] = []
        self._channel = self._build(files.load())
        #: How many underlying channels were built (1 + certificate rotations seen).
        self.generation = 1

    def __repr__(self) -> str:
        return f"ReloadingChannel({self._target!r}, generation={self.generation})"

    def _build(self, material: TlsMaterial) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=material.root_certificates,
            private_key=material.private_key,
            certificate_chain=material.certificate_chain,
        )
        return grpc.secure_channel(self._target, credentials, options=self._options)

    def current(self) -> grpc.Channel:
        """The underlying channel for a new call (rebuilt first if the files changed)."""
        if self._files.changed():
            try:
                material = self._files.load()
            except OSError:
                return self._channel  # mid-rotation: keep the current files, look again later
            fresh = self._build(material)
            with self._lock:
                stale: grpc.Channel | None = None
                if self._closed:
                    stale = fresh
                else:
                    old, self._channel = self._channel, fresh
                    self.generation += 1
                    timer = threading.Timer(self._retire_after, old.close)
                    timer.daemon = True
                    self._retired.append((old, timer))
                    timer.start()
            if stale is not None:
                stale.close()
        return self._channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A unary-unary multi-callable that follows certificate reloads."""
        return _Resolving(self, "unary_unary", (method, *args, *kwargs.values()))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A unary-stream multi-callable that follows certificate reloads."""
        return _Resolving(self, "unary_stream", (method, *args, *kwargs.values()))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A stream-unary multi-callable that follows certificate reloads."""
        return _Resolving(self, "stream_unary", (method, *args, *kwargs.values()))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A stream-stream multi-callable that follows certificate reloads."""
        return _Resolving(self, "stream_stream", (method, *args, *kwargs.values()))

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Subscribe to the connectivity of the current underlying channel."""
        self.current().subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Unsubscribe from the current underlying channel."""
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        """Close the current and every replaced channel (their calls are cancelled)."""
        with self._lock:
            self._closed = True
            retired, self._retired = self._retired, []
        for old, timer in retired:
            timer.cancel()
            old.close()
        self._channel.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    target: str,
    *,
    ca_file: str | os.PathLike[str],
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    claim: str | ClaimProvider | None = None,
    default_timeout: float | None = _retry.DEFAULT_TIMEOUT,
    stream_timeout: float | None = _retry.STREAM_TIMEOUT,
    deadlines: Mapping[str, float | None] | None = None,
    server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
    load_balancing: str | None = None,
    keepalive: Keepalive | None = None,
    certificate_check_interval: float | None = 1.0,
    typed_errors: bool = True,
) -> grpc.Channel:
    """Open a mutually authenticated TLS channel to a Zumik Secrets server.

    Args:
        target: ``host:port`` (or any gRPC target, e.g. ``dns:///zumik-headless:8443``).
        ca_file: PEM bundle of the CA(s) that sign the server's certificate.
        cert_file: PEM client certificate (chain) presented to the server.
        key_file: PEM private key of the client certificate.
        claim: the tenant claim: a string, or a provider (any callable returning the current
            claim, e.g. ``ApiKeyClaimProvider``) asked on every call; sent as ``zumik-claim``
            metadata to every method that acts for a tenant. A call that passes its own
            ``zumik-claim`` metadata keeps it.
        default_timeout: deadline in seconds of unary calls that pass none (the long-running
            ones get more); None for none. These deadlines are also in the service config,
            which makes them upper bounds: a call may pass a shorter timeout, and ``deadlines``
            raises a method's.
        stream_timeout: deadline of server-streaming calls (audit export).
        deadlines: per-method deadlines, by full name (``/zumik.secrets.v1.SealService/Open``),
            overriding the two above; None lifts a method's deadline.
        server_name: name to verify the server certificate against, when it differs from the
            host in ``target`` (for example when dialing an IP address).
        options: extra grpc channel options (message sizes, ...); they win over ours.
        load_balancing: ``"round_robin"`` to spread calls over every address the target
            resolves to (with a headless Service), or ``"pick_first"``.
        keepalive: HTTP/2 keepalive settings; None keeps grpc's defaults.
        certificate_check_interval: look for changed certificate files at most this often
            (seconds, checked before a call); None turns reloading off.
        typed_errors: raise ``zumik_secrets_client.errors`` classes (True) or grpc's own.

    Returns:
        A channel to build the ``zumik.secrets.v1`` stubs on; close it (or use it as a context
        manager) when done. Idempotent methods (see ``idempotent_methods()``) are retried on
        ``UNAVAILABLE`` within their deadline; no other method is retried.

    Raises:
        OSError: if one of the PEM files cannot be read.
        ValueError: if an argument is invalid (the claim is never echoed).
    """
    settings = channel_settings(
        claim=claim,
        default_timeout=default_timeout,
        stream_timeout=stream_timeout,
        deadlines=deadlines,
        server_name=server_name,
        options=options,
        load_balancing=load_balancing,
        keepalive=keepalive,
    )
    files = CertificateFiles(
        ca_file, cert_file, key_file, check_interval=certificate_check_interval
    )
    channel = ReloadingChannel(
        target, files, settings.options, retire_after=settings.longest_deadline
    )
    interceptor = ClientInterceptor(
        settings.provider,
        typed_errors=typed_errors,
        timeouts=settings.timeouts,
        default_timeout=settings.default_timeout,
    )
    return grpc.intercept_channel(channel, interceptor)
