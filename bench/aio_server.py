"""A grpc.aio variant of the server, for the architecture comparison only (bench/arch.py).

It builds the real server wiring (:class:`ZumikServer` over a real :class:`Runtime`) against a
recording stand-in for ``grpc.server``, then serves the recorded handlers (the bench empty RPC,
KeyService/VerifyApiKey and every other unary method, for set-up) from a grpc.aio server. Each
call runs the very same ``GuardInterceptor`` wrapper and servicer code as the threaded server,
only on the event loop instead of a worker thread; a cold verify would block the loop on the
database (fine here: the comparison uses warm verifies). Error paths are not faithful (the sync
wrapper aborts with the sync API); the benchmark only drives successful calls.

    python -m bench.aio_server [--uvloop] [--reuse-port]   (configured by ZUMIK_* like `serve`)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any, NamedTuple
from unittest import mock

from bench import ensure_import_paths

ensure_import_paths()

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

SERVED = ("/zumik.bench.v1.BenchService/Empty", "/zumik.secrets.v1.KeyService/VerifyApiKey")
HEALTH = "/grpc.health.v1.Health/Check"


class _Metadatum(NamedTuple):
    key: str
    value: str | bytes


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[_Metadatum, ...]


class _Recorder:
    """Stands in for the grpc.server the threaded wiring builds; remembers what it was given."""

    def __init__(self) -> None:
        self.interceptors: list[Any] = []
        self.options: list[tuple[str, Any]] = []
        self.generic: list[Any] = []
        self.registered: dict[str, dict[str, Any]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> _Recorder:
        """What ``grpc.server(...)`` returns while the wiring is built."""
        self.interceptors = list(kwargs.get("interceptors") or ())
        self.options = list(kwargs.get("options") or ())
        return self

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered.setdefault(service, {}).update(handlers)

    def add_secure_port(self, address: str, credentials: Any) -> int:
        return 1

    def handler(self, method: str) -> Any:
        service, name = method.lstrip("/").split("/")
        found = self.registered.get(service, {}).get(name)
        if found is not None:
            return found
        for h in self.generic:
            found = h.service(_Details(method, ()))
            if found is not None:
                return found
        raise KeyError(method)


def _async_handler(interceptor: Any, method: str, real: Any) -> Callable[..., Any]:
    async def handle(request: Any, context: Any) -> Any:
        md = tuple(_Metadatum(k, v) for k, v in (context.invocation_metadata() or ()))
        wrapped = interceptor.intercept_service(lambda _d: real, _Details(method, md))
        return wrapped.unary_unary(request, context)

    return handle


async def _serve(reuse_port: bool) -> None:
    from zumik_secrets.server import grpc_server
    from zumik_secrets.server.config import ServerConfig
    from zumik_secrets.server.log_setup import configure_logging
    from zumik_secrets.server.runtime import Runtime
    from zumik_secrets.server.telemetry import configure_tracing
    from zumik_secrets.server.tls import server_credentials

    config = ServerConfig.load()
    configure_logging(config.log_level)
    configure_tracing()
    runtime = Runtime.open(config)
    recorder = _Recorder()
    with mock.patch.object(grpc, "server", recorder):
        grpc_server.ZumikServer(runtime, reuse_port=reuse_port)
    (interceptor,) = recorder.interceptors
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    # Every unary method the threaded wiring registered (set-up calls need CreateApiKey...),
    # plus the bench empty RPC from its generic handler.
    methods = [
        f"/{service}/{name}"
        for service, table in recorder.registered.items()
        for name, h in table.items()
        if h.unary_unary is not None
    ]
    for method in dict.fromkeys([*SERVED, *methods]):
        real = recorder.handler(method)
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            _async_handler(interceptor, method, real),
            request_deserializer=real.request_deserializer,
            response_serializer=real.response_serializer,
        )

    async def health_check(request: Any, context: Any) -> Any:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    handlers[HEALTH] = grpc.unary_unary_rpc_method_handler(
        health_check,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )

    class Generic(grpc.GenericRpcHandler):  # type: ignore[type-arg]
        def service(self, details: Any) -> Any:
            return handlers.get(details.method)

    options = [(k, v) for k, v in recorder.options if k != "grpc.so_reuseport"]
    options.append(("grpc.so_reuseport", 1 if reuse_port else 0))
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=config.max_concurrent_rpcs)
    server.add_generic_rpc_handlers((Generic(),))
    creds = server_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    server.add_secure_port(config.listen, creds)
    await server.start()
    print('{"msg": "serving"}', file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    runtime.close()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.aio_server")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(_serve(args.reuse_port))
    else:
        asyncio.run(_serve(args.reuse_port))


if __name__ == "__main__":
    main()
