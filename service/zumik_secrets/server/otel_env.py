"""The standard ``OTEL_*`` variables, read through the OpenTelemetry SDK's own handling.

Honoured (docs/observability.md has the table):

* ``OTEL_SDK_DISABLED=true``: no tracing, no push metrics (the scrape endpoint still works);
* ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource (``Resource.create``;
  the service name defaults to ``zumik-secrets`` instead of the SDK's ``unknown_service``);
* ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp``, ``otlp_proto_grpc``,
  ``otlp_proto_http``, ``console``, a comma list, or ``none``; ``otlp`` picks grpc or
  http/protobuf from ``OTEL_EXPORTER_OTLP_{TRACES_,METRICS_,}PROTOCOL`` (the SDK's own rules);
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the per-signal ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
  ``..._METRICS_ENDPOINT``, headers, certificates, timeouts, compression: read by the
  exporters themselves;
* ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: read by the SDK's TracerProvider
  (default ``parentbased_always_on``); ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``);
  ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``.

One deliberate difference from the SDK's defaults: when ``OTEL_*_EXPORTER`` is unset, a signal
is exported only if an OTLP endpoint for it is configured (general or per-signal). The SDK
would default to OTLP on localhost:4317 and spend CPU exporting into nothing; a security
service should not send data anywhere nobody configured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource

_LOG = logging.getLogger("zumik.server")

DEFAULT_SERVICE_NAME = "zumik-secrets"
Signal = Literal["traces", "metrics"]

_EXPORTER_ENV = {"traces": "OTEL_TRACES_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER"}
_ENDPOINT_ENV = {
    "traces": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "metrics": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
}


def sdk_disabled(env: Mapping[str, str] | None = None) -> bool:
    """``OTEL_SDK_DISABLED`` is true."""
    env = os.environ if env is None else env
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def exporter_names(signal: Signal, env: Mapping[str, str] | None = None) -> list[str]:
    """The exporter entry-point names to use for ``signal`` (empty: export nothing)."""
    env = os.environ if env is None else env
    if sdk_disabled(env):
        return []
    configured = env.get(_EXPORTER_ENV[signal])
    if configured is None and not (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(_ENDPOINT_ENV[signal])
    ):
        return []
    from opentelemetry.sdk._configuration import _get_exporter_entry_point, _get_exporter_names

    if configured is None:
        # An endpoint alone means OTLP, over the protocol the OTEL_*_PROTOCOL variables name.
        return [_get_exporter_entry_point("otlp", signal)]
    # Our own scrape endpoint is the Prometheus way out; the SDK's would open a second port.
    return [n for n in _get_exporter_names(signal) if n != "prometheus"]


def resource_from_env() -> Resource:
    """``Resource.create`` (which reads ``OTEL_RESOURCE_ATTRIBUTES`` and
    ``OTEL_SERVICE_NAME``), with ``zumik-secrets`` when neither names the service."""
    resource = Resource.create()
    name = resource.attributes.get(SERVICE_NAME)
    if not name or str(name).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def configure_tracing() -> bool:
    """Install an SDK tracer provider exporting as the ``OTEL_*`` variables say.

    Nothing is installed when no trace exporter is configured (then the API's no-op tracer
    makes every span free). Database statement spans are switched on with tracing.

    Returns:
        Whether tracing is on.

    Raises:
        RuntimeError: an exporter named in ``OTEL_TRACES_EXPORTER`` is not installed, or the
            protocol is not ``grpc`` or ``http/protobuf``.
    """
    names = exporter_names("traces")
    if not names:
        return False
    from opentelemetry.sdk._configuration import _import_exporters
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    span_exporters, _, _ = _import_exporters(names, [], [])
    provider = TracerProvider(resource=resource_from_env())
    for exporter_class in span_exporters.values():
        provider.add_span_processor(BatchSpanProcessor(exporter_class()))
    trace.set_tracer_provider(provider)
    from zumik_secrets.server.db_tracing import install_statement_spans

    install_statement_spans()
    _LOG.info("tracing on", extra={"exporters": sorted(span_exporters)})
    return True


def metric_readers_from_env() -> list[MetricReader]:
    """Periodic readers for the push exporters ``OTEL_METRICS_EXPORTER`` selects.

    Raises:
        RuntimeError: an exporter is not installed or the protocol is unknown.
    """
    names = exporter_names("metrics")
    if not names:
        return []
    from opentelemetry.sdk._configuration import _import_exporters

    _, metric_exporters, _ = _import_exporters([], names, [])
    readers: list[MetricReader] = []
    for exporter_class in metric_exporters.values():
        if issubclass(exporter_class, MetricReader):
            readers.append(exporter_class())
        else:
            readers.append(PeriodicExportingMetricReader(exporter_class()))
    return readers
