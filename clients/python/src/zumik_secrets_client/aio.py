"""The asyncio client: ``connect()`` with the same arguments and behaviour on ``grpc.aio``.

The channel attaches the claim through call credentials, applies the per-method deadlines and
retry policy of the sync client, raises the typed errors of ``zumik_secrets_client.errors``, and
rebuilds itself when the certificate files change. A claim provider may be a plain callable
(run in the default executor, so a provider that blocks to refresh never stalls the event loop)
or an async one (``async def __call__``) such as :class:`ApiKeyClaimProvider` here.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import grpc.aio
from zumik.secrets.v1 import key_service_pb2, key_service_pb2_grpc

from zumik_secrets_client import _retry, errors
from zumik_secrets_client._channel import (
    Keepalive,
    _method_name,
    call_timeout,
    channel_settings,
    convert_error,
)
from zumik_secrets_client._reload import CertificateFiles, TlsMaterial
from zumik_secrets_client.credentials import (
    CLAIM_METADATA_KEY,
    ClaimCache,
    ClaimProvider,
    _ProviderFailed,
    _Slot,
    _VerifyAnswer,
    gave_up,
    validate_claim,
)

__all__ = [
    "ApiKeyClaimProvider",
    "AsyncClaimProvider",
    "Keepalive",
    "ReloadingChannel",
    "SessionClaimProvider",
    "connect",
]

if TYPE_CHECKING:
    # grpc-stubs makes the interceptor bases generic; the runtime classes are not subscriptable.
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class AsyncClaimProvider(Protocol):
    """An async callable that returns the signed claim to send."""

    def __call__(self) -> Awaitable[str]:
        """Return (an awaitable of) the current claim."""
        ...


_AnyProvider = ClaimProvider | AsyncClaimProvider


class _AioClaimPlugin(grpc.AuthMetadataPlugin):
    """Asks a sync or async provider for the claim without blocking the event loop."""

    __slots__ = ("_loop", "_provider", "_slot")

    def __init__(
        self, provider: _AnyProvider, slot: _Slot, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._provider = provider
        self._slot = slot
        self._loop = loop

    def __repr__(self) -> str:
        return f"_AioClaimPlugin(provider={type(self._provider).__name__})"

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        provider, slot = self._provider, self._slot
        if gave_up(slot):
            callback((), _ProviderFailed(type(slot.error).__name__))
            return

        async def produce() -> None:
            try:
                if getattr(provider, "zumik_static", False):
                    result: object = provider()
                elif inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(
                    getattr(provider, "__call__", None)  # noqa: B004 - async __call__ objects
                ):
                    result = await provider()  # type: ignore[misc]
                else:
                    result = await asyncio.get_running_loop().run_in_executor(None, provider)
                    if inspect.isawaitable(result):
                        result = await result
                claim = validate_claim(result)
            except Exception as exc:  # noqa: BLE001 - every failure must reach the callback
                slot.error = exc
                callback((), _ProviderFailed(type(exc).__name__))
                return
            callback(((CLAIM_METADATA_KEY, claim),), None)

        # grpc may run plugins on a thread of its own: hand the work to the channel's loop.
        asyncio.run_coroutine_threadsafe(produce(), self._loop)


def _attach(
    provider: _AnyProvider | None,
    details: grpc.aio.ClientCallDetails,
    timeouts: Mapping[str, float | None],
    default_timeout: float | None,
) -> tuple[grpc.aio.ClientCallDetails, _Slot | None]:
    credentials = details.credentials
    metadata = details.metadata
    slot: _Slot | None = None
    method = _method_name(details.method)
    has_claim = any(key == CLAIM_METADATA_KEY for key, _ in (metadata or ()))
    wants_claim = provider is not None and method not in _retry.claimless_methods()
    if (
        provider is not None
        and wants_claim
        and not has_claim
        and getattr(provider, "zumik_static", False)
    ):
        # A fixed claim goes straight into the metadata (no plugin round trip).
        claim = validate_claim(provider())
        metadata = grpc.aio.Metadata(*(metadata or ()), (CLAIM_METADATA_KEY, claim))
    elif wants_claim and not has_claim and provider is not None:
        slot = _Slot(provider)
        plugin = _AioClaimPlugin(provider, slot, asyncio.get_running_loop())
        claim_credentials = grpc.metadata_call_credentials(plugin, name="zumik-claim")
        credentials = (
            claim_credentials
            if credentials is None
            else grpc.composite_call_credentials(credentials, claim_credentials)
        )
    new = grpc.aio.ClientCallDetails(
        details.method,
        call_timeout(details.timeout, details.method, timeouts, default_timeout),
        metadata,
        credentials,
        details.wait_for_ready,
    )
    return new, slot


class ClientInterceptor(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """The aio twin of the sync interceptor: claim, default deadline, typed errors."""

    def __init__(
        self,
        provider: _AnyProvider | None,
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
        return f"aio.ClientInterceptor(claim={'<provider>' if self._provider else None})"

    def _details(
        self, details: grpc.aio.ClientCallDetails
    ) -> tuple[grpc.aio.ClientCallDetails, _Slot | None]:
        return _attach(self._provider, details, self._timeouts, self._default_timeout)

    async def _unary(self, call: Any, slot: _Slot | None) -> Any:
        try:
            await call
        except grpc.RpcError as exc:
            raise convert_error(exc, slot, self._typed)  # noqa: B904 - context suppressed
        return call

    async def _stream(self, call: Any, slot: _Slot | None) -> AsyncIterator[Any]:
        try:
            async for response in call:
                yield response
        except grpc.RpcError as exc:
            raise convert_error(exc, slot, self._typed)  # noqa: B904 - context suppressed

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Run a unary-unary call."""
        details, slot = self._details(client_call_details)
        return await self._unary(await continuation(details, request), slot)

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Run a unary-stream call."""
        details, slot = self._details(client_call_details)
        return self._stream(await continuation(details, request), slot)

    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        """Run a stream-unary call."""
        details, slot = self._details(client_call_details)
        return await self._unary(await continuation(details, request_iterator), slot)

    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        """Run a stream-stream call."""
        details, slot = self._details(client_call_details)
        return self._stream(await continuation(details, request_iterator), slot)


class _Resolving:
    """An aio multi-callable that picks the current underlying channel on every call."""

    __slots__ = ("_args", "_kind", "_owner")

    def __init__(self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...]) -> None:
        self._owner = owner
        self._kind = kind
        self._args = args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._owner.current(), self._kind)(*self._args)(*args, **kwargs)


class ReloadingChannel(grpc.aio.Channel):
    """An aio mTLS channel that rebuilds itself when its certificate files change.

    A replaced channel is closed with a grace of ``retire_after`` seconds (longer than any
    deadline the service config allows), so its running calls finish.
    """

    def __init__(
        self,
        target: str,
        files: CertificateFiles,
        options: Sequence[tuple[str, Any]],
        interceptors: Sequence[grpc.aio.ClientInterceptor],
        *,
        retire_after: float,
    ) -> None:
        """Build the first underlying channel from ``files``."""
        self._target = target
        self._files = files
        self._options = list(options)
        self._interceptors = list(interceptors)
        self._retire_after = retire_after
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: list[grpc.aio.Channel] = []
        self._closed = False
        self._channel = self._build(files.load())
        #: How many underlying channels were built (1 + certificate rotations seen).
        self.generation = 1

    def __repr__(self) -> str:
        return f"aio.ReloadingChannel({self._target!r}, generation={self.generation})"

    def _build(self, material: TlsMaterial) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=material.root_certificates,
            private_key=material.private_key,
            certificate_chain=material.certificate_chain,
        )
        return grpc.aio.secure_channel(
            self._target, credentials, options=self._options, interceptors=self._interceptors
        )

    def current(self) -> grpc.aio.Channel:
        """The underlying channel for a new call (rebuilt first if the files changed)."""
        if not self._closed and self._files.changed():
            try:
                material = self._files.load()
            except OSError:
                return self._channel
            old, self._channel = self._channel, self._build(material)
            self.generation += 1
            self._retired.append(old)
            task = asyncio.get_running_loop().create_task(old.close(grace=self._retire_after))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
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

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The connectivity state of the current underlying channel."""
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait for the current underlying channel to leave ``last_observed_state``."""
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Wait until the current underlying channel is READY."""
        await self.current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close the current and every replaced channel."""
        self._closed = True
        for old in self._retired:
            await old.close(grace)
        self._retired.clear()
        await self._channel.close(grace)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)


def connect(
    target: str,
    *,
    ca_file: str | os.PathLike[str],
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    claim: str | ClaimProvider | AsyncClaimProvider | None = None,
    default_timeout: float | None = _retry.DEFAULT_TIMEOUT,
    stream_timeout: float | None = _retry.STREAM_TIMEOUT,
    deadlines: Mapping[str, float | None] | None = None,
    server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
    load_balancing: str | None = None,
    keepalive: Keepalive | None = None,
    certificate_check_interval: float | None = 1.0,
    typed_errors: bool = True,
) -> grpc.aio.Channel:
    """Open an aio mTLS channel; arguments and behaviour as ``zumik_secrets_client.connect``.

    Use it as ``async with connect(...) as channel:`` (or ``await channel.close()``), and
    build the ``zumik.secrets.v1`` stubs on it; their calls are awaited.
    """
    settings = channel_settings(
        claim=claim,  # type: ignore[arg-type]
        default_timeout=default_timeout,
        stream_timeout=stream_timeout,
        deadlines=deadlines,
        server_name=server_name,
        options=options,
        load_balancing=load_balancing,
        keepalive=keepalive,
    )
    interceptor = ClientInterceptor(
        settings.provider,
        typed_errors=typed_errors,
        timeouts=settings.timeouts,
        default_timeout=settings.default_timeout,
    )
    files = CertificateFiles(
        ca_file, cert_file, key_file, check_interval=certificate_check_interval
    )
    interceptors: list[Any] = [interceptor]
    return ReloadingChannel(
        target, files, settings.options, interceptors, retire_after=settings.longest_deadline
    )


# ---------------------------------------------------------------- verifying providers


class _AsyncVerifyingProvider:
    def __init__(
        self,
        *,
        refresh_fraction: float,
        timeout: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._timeout = timeout
        self._cache = ClaimCache(
            refresh_fraction=refresh_fraction, clock=clock, wall_clock=wall_clock
        )
        self._lock: asyncio.Lock | None = None

    @property
    def refreshes(self) -> int:
        """How many times the credential was verified."""
        return self._cache.refreshes

    def invalidate(self) -> None:
        """Forget the cached claim; ``connect()`` calls this when the server refuses it."""
        self._cache.invalidate()

    def __repr__(self) -> str:
        return f"aio.{type(self).__name__}(refreshes={self.refreshes})"

    async def _verify(self, timeout: float) -> _VerifyAnswer:
        raise NotImplementedError

    async def __call__(self) -> str:
        """Return a claim, verifying the credential again once half its lifetime is over.

        Raises:
            errors.CredentialRejected: the server answered with a result other than VALID.
            errors.ZumikError: the verify call failed and no still-valid claim is cached.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            claim = self._cache.fresh()
            if claim is not None:
                return claim
            try:
                answer = await self._verify(self._timeout)
            except errors.ZumikError as exc:
                return self._cache.on_failure(exc)
            return self._cache.store(answer)


class ApiKeyClaimProvider(_AsyncVerifyingProvider):
    """Claims from an API key over an aio gateway channel, refreshed at half-life.

    Arguments as ``zumik_secrets_client.ApiKeyClaimProvider``, with ``gateway`` an aio channel.
    """

    def __init__(
        self,
        gateway: grpc.aio.Channel,
        api_key: str,
        *,
        required_scopes: Sequence[str] = (),
        refresh_fraction: float = 0.5,
        timeout: float = 5.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """Create the provider; nothing is verified until the first claim is asked for."""
        super().__init__(
            refresh_fraction=refresh_fraction,
            timeout=timeout,
            clock=clock or time.monotonic,
            wall_clock=wall_clock or time.time,
        )
        self._stub = key_service_pb2_grpc.KeyServiceStub(gateway)
        self._request = key_service_pb2.VerifyApiKeyRequest(
            key=api_key, required_scopes=list(required_scopes)
        )

    async def _verify(self, timeout: float) -> _VerifyAnswer:
        try:
            reply = await self._stub.VerifyApiKey(self._request, timeout=timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        return reply.result, reply.claim, reply.claim_expire_time


class SessionClaimProvider(_AsyncVerifyingProvider):
    """Claims from a session token over an aio gateway channel, refreshed at half-life."""

    def __init__(
        self,
        gateway: grpc.aio.Channel,
        token: str,
        *,
        required_scopes: Sequence[str] = (),
        refresh_fraction: float = 0.5,
        timeout: float = 5.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """Create the provider; nothing is verified until the first claim is asked for."""
        super().__init__(
            refresh_fraction=refresh_fraction,
            timeout=timeout,
            clock=clock or time.monotonic,
            wall_clock=wall_clock or time.time,
        )
        self._stub = key_service_pb2_grpc.KeyServiceStub(gateway)
        self._request = key_service_pb2.VerifySessionRequest(
            token=token, required_scopes=list(required_scopes)
        )

    async def _verify(self, timeout: float) -> _VerifyAnswer:
        try:
            reply = await self._stub.VerifySession(self._request, timeout=timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        return reply.result, reply.claim, reply.claim_expire_time
