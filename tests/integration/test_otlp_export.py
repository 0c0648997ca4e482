"""A real `zumik-secrets serve` process exports to a real OTLP receiver on loopback.

The receivers are tiny: a gRPC server implementing OTLP's trace and metrics collector services
(opentelemetry-proto's own service definitions) and an HTTP one for ``http/protobuf``. The
server is configured only through the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import http.server
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from zumik.secrets.v1 import (
    key_service_pb2,
    key_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)

from tests import fix_leaks
from zumik_secrets.server.tls import channel_credentials

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    """What a receiver got."""

    spans: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def span_list(self) -> list[tuple[Any, Any]]:
        """(resource, span) pairs."""
        with self.lock:
            return [
                (rs.resource, span)
                for request in self.spans
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]

    def metric_names(self) -> set[str]:
        with self.lock:
            return {
                m.name
                for request in self.metrics
                for rm in request.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }

    def metric_resources(self) -> list[Any]:
        with self.lock:
            return [rm.resource for r in self.metrics for rm in r.resource_metrics]


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.lock:
            self.received.spans.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.lock:
            self.received.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC collector stub on loopback: (endpoint, what it received)."""
    received = Received()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(received), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(received), server)
    port = server.add_insecure_port("127.0.0.1:0")  # transport-check: allow test receiver
    server.start()
    yield f"http://127.0.0.1:{port}", received
    server.stop(0)


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) receiver stub on loopback: (base URL, what it received)."""
    received = Received()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with received.lock:
                if self.path == "/v1/traces":
                    received.spans.append(
                        trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    )
                elif self.path == "/v1/metrics":
                    received.metrics.append(
                        metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    )
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    target: str
    health: str
    pki: Path

    def channel(self, role: str) -> grpc.Channel:
        creds = channel_credentials(
            self.pki / "ca.crt", self.pki / f"{role}.crt", self.pki / f"{role}.key"
        )
        return grpc.secure_channel(self.target, creds)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("otlp")
    done = subprocess.run(
        [sys.executable, "-m", "zumik_secrets.cli.main", "dev-setup"],
        cwd=path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fix_leaks.REGISTRY.add_keyring((path / "var/dev/keyring.json").read_text())
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZUMIK_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")])
    env["GRPC_VERBOSITY"] = "ERROR"
    env.update(extra)
    return env


@pytest.fixture
def serve(workdir: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(**otel: str) -> Proc:
        port, health = _free_port(), _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "zumik_secrets.cli.main", "serve"],
            cwd=workdir,
            env=_env(
                ZUMIK_DEV="1",
                ZUMIK_LISTEN=f"127.0.0.1:{port}",
                ZUMIK_HEALTH_LISTEN=f"127.0.0.1:{health}",
                ZUMIK_DATABASE_URL=f"sqlite:///{workdir}/var/otlp-{port}.db",
                OTEL_BSP_SCHEDULE_DELAY="100",
                OTEL_METRIC_EXPORT_INTERVAL="300",
                **otel,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        running = Proc(proc, f"127.0.0.1:{port}", f"127.0.0.1:{health}", workdir / "var/dev/pki")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                with grpc.insecure_channel(running.health) as ch:
                    answer = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return running
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        pytest.fail("server did not become SERVING")

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            fix_leaks.add_haystack("stderr of an OTLP-exporting server", err)


def _traced_calls(proc: Proc) -> tuple[str, str]:
    """A settings change and a verification, both carrying the caller's traceparent.

    Returns:
        (trace id, the caller's span id), hex.
    """
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (("traceparent", f"00-{trace_id}-{span_id}-01"),)
    with proc.channel("control-plane") as channel:
        tenant_service_pb2_grpc.TenantServiceStub(channel).UpdateTenantSettings(
            tenant_service_pb2.UpdateTenantSettingsRequest(
                name="tenants/otlp-co/settings",
                settings=tenant_service_pb2.TenantSettings(
                    telemetry_mode=tenant_service_pb2.TELEMETRY_MODE_DEFAULT
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
            ),
            metadata=metadata,
            timeout=10,
        )
    with proc.channel("gateway") as channel:
        key_service_pb2_grpc.KeyServiceStub(channel).VerifyApiKey(
            key_service_pb2.VerifyApiKeyRequest(key="zk_not_a_key"), metadata=metadata, timeout=10
        )
    return trace_id, span_id


def _attrs(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in items:
        value = kv.value
        out[kv.key] = (
            getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
        )
    return out


def _wait(condition: Any, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _sweep(received: Received) -> None:
    fix_leaks.add_haystack(
        "spans exported over OTLP",
        b"\n".join(r.SerializeToString() for r in received.spans + received.metrics),  # type: ignore[operator]
    )


def test_grpc_export_of_spans_and_metrics(serve: Any, grpc_receiver: tuple[str, Received]) -> None:
    endpoint, received = grpc_receiver
    proc = serve(
        OTEL_SERVICE_NAME="zumik-otlp-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=ci,service.namespace=zumik",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_METRICS_EXPORTER="otlp",
    )
    trace_id, caller_span = _traced_calls(proc)

    def server_spans() -> list[Any]:
        return [
            s
            for _, s in received.span_list()
            if s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER
        ]

    _wait(lambda: len(server_spans()) >= 2)
    # Both calls counted: a periodic export may have run between the two calls.
    wanted = {
        "rpc.server.call.duration",
        "zumik.audit.batch.size",
        "zumik.verify.results",
    }
    _wait(lambda: wanted <= received.metric_names())
    _sweep(received)
    spans = received.span_list()
    # The server spans continue the caller's trace, as children of the caller's span.
    for span in server_spans():
        assert span.parent_span_id.hex() == caller_span, span.name
    names = {s.name for s in server_spans()}
    assert names == {"TenantService/UpdateTenantSettings", "KeyService/VerifyApiKey"}
    # Resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, on spans and metrics.
    for resource, _ in spans:
        attrs = _attrs(resource.attributes)
        assert attrs["service.name"] == "zumik-otlp-test"
        assert attrs["deployment.environment.name"] == "ci"
    for resource in received.metric_resources():
        assert _attrs(resource.attributes)["service.name"] == "zumik-otlp-test"
    # Children of the settings call: its database statements, among them the audit event
    # written in the change's own transaction (the outbox, issue 24: no durable wait).
    settings = next(s for s in server_spans() if s.name.startswith("TenantService"))
    children = [s for _, s in spans if s.parent_span_id == settings.span_id]
    statements = [s for s in children if "db.query.text" in _attrs(s.attributes)]
    assert statements, [s.name for s in children]
    for statement in statements:
        text = _attrs(statement.attributes)["db.query.text"]
        assert "otlp-co" not in text  # parameters are bound, never in the statement text
    assert any("audit_outbox" in _attrs(s.attributes)["db.query.text"] for s in statements)


def test_traces_exporter_none_exports_no_spans(
    serve: Any, grpc_receiver: tuple[str, Received]
) -> None:
    endpoint, received = grpc_receiver
    proc = serve(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="otlp",
    )
    _traced_calls(proc)
    # Metrics still flow to the same receiver: the server did export, only no spans.
    _wait(lambda: "rpc.server.call.duration" in received.metric_names())
    time.sleep(1.0)  # several span-processor delays
    assert received.span_list() == []
    for resource in received.metric_resources():
        assert _attrs(resource.attributes)["service.name"] == "zumik-secrets"


def test_http_protobuf_with_a_traces_only_endpoint(
    serve: Any, http_receiver: tuple[str, Received]
) -> None:
    base, received = http_receiver
    proc = serve(
        OTEL_SERVICE_NAME="zumik-http",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{base}/v1/traces",
    )
    trace_id, caller_span = _traced_calls(proc)

    def server_spans() -> list[Any]:
        return [
            s
            for _, s in received.span_list()
            if s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER
        ]

    # Both calls' server spans (their children may arrive in an earlier batch).
    _wait(lambda: len(server_spans()) >= 2)
    _sweep(received)
    assert all(s.parent_span_id.hex() == caller_span for s in server_spans())
    assert all(
        _attrs(r.attributes)["service.name"] == "zumik-http" for r, _ in received.span_list()
    )
    # No metrics endpoint was configured (only the traces one): none were pushed.
    assert received.metrics == []
