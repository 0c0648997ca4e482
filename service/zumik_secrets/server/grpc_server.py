"""The gRPC server: threaded grpcio, mutual TLS only, health, reflection, graceful drain.

DESIGN.md section 7 measured the threaded server cheaper per call than grpc.aio here, so the
whole request path is synchronous.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from zumik.secrets.v1 import (
    audit_service_pb2_grpc,
    break_glass_service_pb2_grpc,
    fingerprint_service_pb2_grpc,
    key_service_pb2_grpc,
    seal_service_pb2_grpc,
    tenant_service_pb2_grpc,
)

from zumik_secrets.api.contracts import OPEN_METHODS, SERVICE_DESCRIPTORS, method_guards
from zumik_secrets.api.servicers.audit import AuditServicer
from zumik_secrets.api.servicers.break_glass import BreakGlassServicer
from zumik_secrets.api.servicers.fingerprints import FingerprintServicer
from zumik_secrets.api.servicers.keys import KeyServicer
from zumik_secrets.api.servicers.seal import SealServicer
from zumik_secrets.api.servicers.tenant import TenantServicer
from zumik_secrets.app.denial_audit import DenialAudit
from zumik_secrets.core.errors import ZumikError
from zumik_secrets.server.authorization import Authorizer
from zumik_secrets.server.break_glass import GrantGate
from zumik_secrets.server.health_listener import LIVENESS_SERVICE, HealthListener
from zumik_secrets.server.interceptor import GuardInterceptor
from zumik_secrets.server.limits import Limits, LimitSettings
from zumik_secrets.server.reflection_source import commented_pool
from zumik_secrets.server.runtime import Runtime
from zumik_secrets.server.telemetry import Telemetry
from zumik_secrets.server.tls import server_credentials

_LOG = logging.getLogger("zumik.server")

_SERVICE_NAMES = tuple(s.full_name for s in SERVICE_DESCRIPTORS)
_REFLECTION = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


def served_methods() -> dict[tuple[str, str], str]:
    """Full method name by (short service name, method name): every method a server serves
    (the only values the call metrics use as labels)."""
    methods = {
        (s.name, m.name): f"{s.full_name}/{m.name}" for s in SERVICE_DESCRIPTORS for m in s.methods
    }
    for full in (
        f"{health.SERVICE_NAME}/Check",
        f"{health.SERVICE_NAME}/Watch",
        *(f"{name}/ServerReflectionInfo" for name in _REFLECTION),
        BENCH_EMPTY_METHOD.lstrip("/"),
    ):
        service, method = full.split("/")
        methods[(service.rsplit(".", 1)[-1], method)] = full
    return methods


#: The benchmarks' ceiling (opt-in, ZUMIK_BENCH_EMPTY_RPC=1): a no-op RPC behind the same
#: interceptor. Raw bytes in and out, not in the contracts; the policy must still allow it.
BENCH_EMPTY_METHOD = "/zumik.bench.v1.BenchService/Empty"


#: Longest wait a request to the empty RPC may ask for (milliseconds).
BENCH_EMPTY_MAX_DELAY_MS = 5000


def bench_empty_handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    """The generic handler of :data:`BENCH_EMPTY_METHOD` (echoes nothing, costs nothing).

    An empty request is answered at once (the benchmarks send that). A non-empty one asks the
    call to wait: its first two bytes, big-endian, are milliseconds (at most
    :data:`BENCH_EMPTY_MAX_DELAY_MS`), so a test can hold a call in flight (the drain tests).
    """

    def empty(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request:
            time.sleep(min(int.from_bytes(request[:2], "big"), BENCH_EMPTY_MAX_DELAY_MS) / 1000)
        return b""

    service, method = BENCH_EMPTY_METHOD.lstrip("/").split("/")
    return grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(empty)}
    )


HEALTHY_PROBE_S = 1.0
"""Seconds between database probes while healthy."""
UNHEALTHY_PROBE_S = 0.25
"""Seconds between database probes while unhealthy (recovery shows within about this)."""


class ZumikServer:
    """One server process: builds the grpc server over a :class:`Runtime` and runs it."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        reuse_port: bool = False,
        on_health: Callable[[bool], None] | None = None,
    ) -> None:
        """Build (not start) the server and bind its port.

        Args:
            runtime: The opened runtime.
            reuse_port: Share the port with sibling processes (SO_REUSEPORT). Off by default so
                a stale server on the port makes start-up fail loudly.
            on_health: Called with True or False whenever the whole server's health turns
                SERVING or not (a supervised worker reports it to its supervisor).

        Raises:
            RuntimeError: the port cannot be bound.
        """
        config = runtime.config
        self.runtime = runtime
        self._on_health = on_health
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.serving = False
        #: The storage monitor's last verdict (the zumik.storage.ready metric).
        self.storage_ready = True
        if runtime.metrics.otel is not None:
            runtime.metrics.otel.sources.storage_ready = lambda: self.storage_ready
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.limits = Limits(
            LimitSettings(
                workers=config.workers,
                max_calls_per_peer=config.max_calls_per_peer,
                max_streams_per_peer=config.max_streams_per_peer,
                stream_workers=config.stream_workers,
                max_queued_calls=config.max_queued_calls,
            )
        )
        # Repeated denials fold into one event per interval (finding 4).
        self.denial_audit = DenialAudit(
            runtime.audit,
            interval=config.denial_audit_interval,
            budget=config.denial_audit_budget,
        )
        guards = method_guards()
        # The policy's decision cache holds only methods this server serves (finding 5).
        runtime.policy.limit_cache_to(
            {
                *guards,
                *OPEN_METHODS,
                BENCH_EMPTY_METHOD,
                *(f"/{name}/ServerReflectionInfo" for name in _REFLECTION),
            }
        )
        interceptor = GuardInterceptor(
            Authorizer(
                runtime.policy,
                runtime.verify_claim,
                runtime.revocations.check_scope,
                runtime.minting_bound,
            ),
            Telemetry(runtime.tenant_settings.rich_mode, runtime.metrics.otel, served_methods()),
            self.denial_audit,
            guards,
            self.limits,
            GrantGate(runtime.policy, runtime.break_glass, runtime.revocations.check_scope),
        )
        self._server = grpc.server(
            self.limits.unary_pool,
            interceptors=[interceptor],
            options=[
                # Bounded connection lifetime: idle connections close, and every connection
                # (with its streams) is asked to go away after the age, with a grace to finish.
                ("grpc.max_connection_idle_ms", int(config.max_connection_idle_seconds * 1000)),
                ("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", 30_000),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_metadata_size", 16 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        # Every servicer implements every RPC of its service: the generated bases declare them
        # abstract, so mypy refuses a servicer with a missing RPC at type-check time.
        key_service_pb2_grpc.add_KeyServiceServicer_to_server(
            KeyServicer(
                runtime.claim_keys,
                runtime.api_keys,
                runtime.sessions,
                metrics=runtime.metrics.recorder,
                revocation_feed=runtime.revocation_feed,
            ),
            self._server,
        )
        seal_service_pb2_grpc.add_SealServiceServicer_to_server(
            SealServicer(runtime.sealed_secrets),
            self._server,
        )
        fingerprint_service_pb2_grpc.add_FingerprintServiceServicer_to_server(
            FingerprintServicer(runtime.fingerprints, runtime.handles),
            self._server,
        )
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(runtime.audit_log),
            self._server,
        )
        tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(
            TenantServicer(
                runtime.tenant_settings, runtime.customer_keys, runtime.purges, runtime.retention
            ),
            self._server,
        )
        break_glass_service_pb2_grpc.add_BreakGlassServiceServicer_to_server(
            BreakGlassServicer(runtime.break_glass),
            self._server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if config.bench_empty_rpc:
            self._server.add_generic_rpc_handlers((bench_empty_handler(),))
        if config.reflection:
            # The pool serves the contracts with their source comments (grpcurl describe).
            reflection.enable_server_reflection(
                (*_SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
                self._server,
                pool=commented_pool(),  # type: ignore[arg-type]
            )
        credentials = server_credentials(
            config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file
        )
        try:
            self.port = self._server.add_secure_port(config.listen, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {config.listen} (in use or not an address)")
        self.health_listener: HealthListener | None = None
        if config.health_listen:
            otel = runtime.metrics.otel
            self.health_listener = HealthListener(
                config.health_listen,
                self.health,
                otel.health_probe if otel is not None else lambda status: None,
            )
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch_storage, daemon=True)

    def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        self.serving = status == health_pb2.HealthCheckResponse.SERVING
        self.health.set("", status)
        for name in _SERVICE_NAMES:
            self.health.set(name, status)
        if self._on_health is not None:
            self._on_health(self.serving)

    def start(self) -> None:
        """Start serving; health turns SERVING (storage and keys are ready by construction)."""
        self._server.start()
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.denial_audit.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.runtime.metrics.start(lambda: self.serving)
        if self.health_listener is not None:
            self.health_listener.start()
        self._monitor.start()

    def _watch_storage(self) -> None:
        """Probe the database: every second while healthy, every quarter second while not.

        Health turns SERVING within about half a second of the database answering again,
        whatever the outage's length (the probe opens a new connection while the database's
        breaker is open, see ``PgStore.check_ready``).
        """
        healthy = True
        while not self._stopping.wait(HEALTHY_PROBE_S if healthy else UNHEALTHY_PROBE_S):
            try:
                self.runtime.store.check_ready()
                ok = True
            except ZumikError:
                ok = False
            # A store that answers SELECT 1 but refuses audit writes must not look healthy:
            # sensitive calls would all fail closed. Probe the audit store at once rather than
            # wait for the writer's own probe.
            audit_log = self.runtime.audit_log
            ok = ok and (audit_log.healthy or audit_log.probe())
            self.storage_ready = ok
            if ok != healthy and not self._stopping.is_set():
                healthy = ok
                _LOG.warning("storage %s", "recovered" if ok else "unavailable")
                self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    def drain(self, grace: float | None = None) -> None:
        """Turn health NOT_SERVING, refuse new calls, let in-flight calls finish (up to grace)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        if self._on_health is not None:
            self._on_health(False)
        grace = self.runtime.config.drain_seconds if grace is None else grace
        stopped = self._server.stop(grace)
        # Feed streams never finish on their own: end them now rather than after the grace.
        self.runtime.revocation_feed.close()
        stopped.wait()
        self.limits.shutdown()
        self.denial_audit.close()
        if self.health_listener is not None:
            self.health_listener.stop()
        self.runtime.close()

    def wait(self) -> None:
        """Block until the server has stopped."""
        self._server.wait_for_termination()


def serve(
    runtime: Runtime,
    *,
    reuse_port: bool = False,
    on_health: Callable[[bool], None] | None = None,
) -> None:
    """Run a server until SIGTERM or SIGINT, then drain gracefully (arguments as
    :class:`ZumikServer`'s)."""
    server = ZumikServer(runtime, reuse_port=reuse_port, on_health=on_health)
    server.start()
    _LOG.info("serving", extra={"listen": runtime.config.listen, "port": server.port})

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _LOG.info("draining", extra={"signal": signal.Signals(signum).name})
        threading.Thread(target=server.drain, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.wait()
    _LOG.info("stopped")
