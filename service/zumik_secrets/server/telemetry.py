"""Per-RPC telemetry: one OpenTelemetry server span and one JSON access-log line.

Both carry metadata only (service, method, status code, reason, peer SPIFFE ID, tenant,
project, TLS version, duration). A tenant in the richer mode (switched on by the control plane)
also gets the request's non-sensitive fields; sensitive fields never appear in any mode.
Exporters are off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry import trace

from zumik_secrets.api.redaction import describe_message
from zumik_secrets.server.log_setup import submit_access_line

ACCESS_LOG = logging.getLogger("zumik.access")
_TRACER = trace.get_tracer("zumik_secrets.server")


def configure_tracing(service_name: str = "zumik-secrets") -> None:
    """Install an SDK tracer provider with an OTLP exporter when an endpoint is configured."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


@dataclass(slots=True)
class CallRecord:
    """Metadata gathered while serving one call, emitted when it ends."""

    service: str
    method: str
    peer: str = ""
    tls_version: str = ""
    tenant_id: str = ""
    project_id: str = ""
    code: str = "OK"
    reason: str = ""
    request: Message | None = None


class Telemetry:
    """Emits the span and the access-log line of each call."""

    def __init__(self, rich_mode: Callable[[str], bool]) -> None:
        """Create the emitter.

        Args:
            rich_mode: Whether a tenant opted into the richer mode (must be cheap: cached).
        """
        self._rich_mode = rich_mode

    def start_span(self, service: str, method: str) -> trace.Span:
        """Start the server span of a call (a no-op span when tracing is off)."""
        return _TRACER.start_span(
            f"{service}/{method}",
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )

    def finish(self, span: trace.Span, record: CallRecord, duration_s: float) -> None:
        """Annotate and end the span, and write the access-log line."""
        detail: dict[str, Any] | None = None
        if record.request is not None and record.tenant_id and self._rich_mode(record.tenant_id):
            detail = describe_message(record.request)
        if span.is_recording():
            attributes: dict[str, str | int | float] = {
                "rpc.grpc.status_code": record.code,
                "zumik.peer.spiffe_id": record.peer,
                "zumik.tls.version": record.tls_version,
                "zumik.tenant_id": record.tenant_id,
                "zumik.project_id": record.project_id,
                "zumik.duration_ms": round(duration_s * 1000, 3),
            }
            if record.reason:
                attributes["zumik.reason"] = record.reason
            if detail is not None:
                attributes["zumik.request"] = json.dumps(detail, default=str, sort_keys=True)
            span.set_attributes(attributes)
            if record.code != "OK":
                span.set_status(trace.Status(trace.StatusCode.ERROR, record.reason or record.code))
        span.end()
        if ACCESS_LOG.isEnabledFor(logging.INFO):
            trace_id = span.get_span_context().trace_id
            extra: dict[str, Any] = {
                "service": record.service,
                "method": record.method,
                "code": record.code,
                "reason": record.reason,
                "peer": record.peer,
                "tls": record.tls_version,
                "tenant": record.tenant_id,
                "project": record.project_id,
                "duration_ms": round(duration_s * 1000, 3),
                "trace_id": f"{trace_id:032x}" if trace_id else "",
            }
            if detail is not None:
                extra["request"] = detail
            if not submit_access_line(ACCESS_LOG, "rpc", extra):
                ACCESS_LOG.info("rpc", extra=extra)
