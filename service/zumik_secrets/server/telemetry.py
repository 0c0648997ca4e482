"""Per-RPC telemetry: one OpenTelemetry server span and one JSON access-log line.

Both carry metadata only (service, method, status code, reason, peer SPIFFE ID, tenant,
project, TLS version, duration). A tenant in the richer mode (switched on by the control plane)
also gets the request's non-sensitive fields; sensitive fields never appear in any mode.
Exporters follow the standard ``OTEL_*`` variables (:mod:`zumik_secrets.server.otel_env`); an
incoming W3C ``traceparent`` (gRPC metadata) becomes the server span's parent while tracing is
on. The same end of call feeds the call metrics (:mod:`zumik_secrets.server.metrics`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from zumik_secrets.api.redaction import describe_message
from zumik_secrets.server.log_setup import submit_access_line
from zumik_secrets.server.metrics import OTHER, OtelMetrics
from zumik_secrets.server.otel_env import configure_tracing

__all__ = ["ACCESS_LOG", "CallRecord", "Telemetry", "configure_access_log", "configure_tracing"]

ACCESS_LOG = logging.getLogger("zumik.access")
_TRACER = trace.get_tracer("zumik_secrets.server")
#: Metadata keys of the W3C trace context (OTEL_PROPAGATORS may add others, e.g. b3).
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage", "b3", "x-b3-traceid"})
_MAX_TRACE_VALUE = 512


def configure_access_log(level: str) -> None:
    """Give the access log its own level (``ZUMIK_ACCESS_LOG_LEVEL``), apart from the root's.

    ``INFO`` writes one line per call even when ``ZUMIK_LOG_LEVEL`` is WARNING; ``WARNING`` or
    ``OFF`` writes none (the call metrics still count every call).
    """
    name = level.upper()
    ACCESS_LOG.setLevel(logging.CRITICAL + 1 if name == "OFF" else name)


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
    denied: bool = False


class Telemetry:
    """Emits the span and the access-log line of each call."""

    def __init__(
        self,
        rich_mode: Callable[[str], bool],
        metrics: OtelMetrics | None = None,
        methods: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        """Create the emitter.

        Args:
            rich_mode: Whether a tenant opted into the richer mode (must be cheap: cached).
            metrics: The call metrics (None: metrics off).
            methods: Full method name by (short service name, method name) for every method
                the server serves; any other path is counted as ``_OTHER`` (a caller must not
                be able to mint label values).
        """
        self._rich_mode = rich_mode
        self._metrics = metrics
        self._methods = dict(methods or {})

    def start_span(
        self, service: str, method: str, context: grpc.ServicerContext | None = None
    ) -> trace.Span:
        """Start the server span of a call (a no-op span when tracing is off).

        While tracing is on, a W3C trace context in the call's metadata becomes the parent.
        """
        provider = trace.get_tracer_provider()
        if type(provider) is trace.ProxyTracerProvider:
            # No tracer provider was ever set (tracing off): the proxy's no-op tracer would
            # return the current non-recording span; answered here without its four calls.
            current = trace.get_current_span()
            if isinstance(current, trace.NonRecordingSpan):
                return current
        parent = None
        if context is not None and isinstance(provider, SdkTracerProvider):
            parent = _remote_parent(context)
        return _TRACER.start_span(
            f"{service}/{method}",
            context=parent,
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
        metrics = self._metrics
        if metrics is not None:
            tenant = None
            if record.tenant_id and (detail is not None or self._rich_mode(record.tenant_id)):
                tenant = record.tenant_id
            metrics.rpc_finished(
                self._methods.get((record.service, record.method), OTHER),
                record.code,
                record.reason,
                duration_s,
                denied=record.denied,
                tenant=tenant,
            )
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


def _remote_parent(context: grpc.ServicerContext) -> Any:
    """The trace context the caller sent in its metadata (None when it sent none)."""
    carrier: dict[str, str] = {}
    for item in context.invocation_metadata() or ():
        key, value = item
        if key in _TRACE_KEYS and isinstance(value, str) and len(value) <= _MAX_TRACE_VALUE:
            carrier[key] = value
    if not carrier:
        return None
    return propagate.extract(carrier)
