"""The health-only listener: Kubernetes' native gRPC probes, without a process per probe.

The kubelet's ``grpc:`` probe speaks plaintext gRPC and cannot present a client certificate,
while the main port demands one on every connection. This second listener serves exactly one
method, ``grpc.health.v1.Health/Check``, answered by the same health servicer as the main port
(so SERVING, NOT_SERVING during an outage and while draining are identical). Nothing else is
registered on it: no ``Watch`` (an idle stream per connection could tie up its two threads),
no reflection, no service of ours. It is bound where ``ZUMIK_HEALTH_LISTEN`` says (the pod IP
in the deployment: the kubelet dials the pod IP; no Service or NetworkPolicy admits other
pods), accepts at most a handful of concurrent calls and tiny messages, writes no access-log
line, and counts each probe in ``zumik.health.probes``.

What a caller learns here is what any pod can learn from whether the pod is in the Service's
endpoints: serving or not. No tenant, key or secret is reachable through it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2

HEALTH_SERVICE = "grpc.health.v1.Health"
#: Health service name that answers SERVING while the process runs, whatever storage does (NOT
#: SERVING only once draining): what liveness and startup probes ask, so that a database outage
#: makes pods unready without restarting them. Readiness asks the whole server ("").
LIVENESS_SERVICE = "zumik.liveness"
MAX_CONCURRENT_PROBES = 4
_MAX_MESSAGE_BYTES = 1024


class HealthListener:
    """A plaintext gRPC server with ``Health/Check`` only."""

    def __init__(
        self,
        listen: str,
        servicer: health.HealthServicer,
        on_probe: Callable[[str], None] = lambda status: None,
    ) -> None:
        """Bind (not start) the listener.

        Args:
            listen: ``host:port`` (port 0 picks a free one; see :attr:`port`).
            servicer: The main server's health servicer.
            on_probe: Called with the answered status name of each probe (for the metrics).

        Raises:
            RuntimeError: the address cannot be bound.
        """

        def check(
            request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
        ) -> health_pb2.HealthCheckResponse:
            response = servicer.Check(request, context)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            on_probe(status)
            return response

        handler = grpc.method_handlers_generic_handler(
            HEALTH_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    check,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                )
            },
        )
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="zumik-health"),
            handlers=[handler],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_metadata_size", 4096),
                ("grpc.max_connection_idle_ms", 30_000),
                ("grpc.max_connection_age_ms", 60_000),
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_PROBES,
        )
        server = self._server
        try:
            # Plaintext on purpose (module docstring): health status only.
            port = server.add_insecure_port(listen)  # transport-check: allow Health/Check only
        except RuntimeError:
            port = 0
        self.port = port
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {listen} (in use or not an address)")

    def start(self) -> None:
        """Start answering probes."""
        self._server.start()

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop (probes in flight get ``grace`` seconds)."""
        self._server.stop(grace).wait()
