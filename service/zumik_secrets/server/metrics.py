"""Metrics: one OpenTelemetry instrumentation, two ways out.

The server owns one SDK :class:`MeterProvider` (per server, not the process-global one, so two
servers in one test process count separately) with up to two kinds of reader:

* the Prometheus reader (``opentelemetry-exporter-prometheus``) behind the scrape endpoint of
  :class:`MetricsEndpoint`, on its own port (``ZUMIK_METRICS_LISTEN``), which serves
  ``/metrics`` and the health paths only, never an RPC;
* push exporters chosen by the standard ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``...,
  with ``OTEL_EXPORTER_OTLP_*`` for endpoint and protocol) through the SDK's own environment
  handling, as for traces (:mod:`zumik_secrets.server.otel_env`).

With neither configured, :func:`create_metrics` returns the no-op :class:`~zumik_secrets.app.
metrics.Recorder` and no provider: a call pays one attribute check.

Per-call metrics are recorded by :class:`~zumik_secrets.server.telemetry.Telemetry`; use cases
record through the :mod:`zumik_secrets.app.metrics` port; counts that change on every cache hit
are plain integers on the caches, read here only when a reader collects (observable
instruments). docs/observability.md lists every metric; a test checks the list against this
module.

Labels: method names the server serves (anything else is ``_OTHER``), status code names,
reason codes and fixed result names. Tenant ids appear on one metric only
(``zumik.tenant.rpc.calls``), only for tenants whose telemetry mode is the rich one (switched on
by the control plane), and only for the first ``ZUMIK_METRICS_TENANT_LIMIT`` such tenants a
process sees (later ones count under ``_OTHER``).
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource

from zumik_secrets.app.metrics import NOOP, Recorder

if TYPE_CHECKING:
    from zumik_secrets.app.api_keys import ApiKeyService
    from zumik_secrets.app.audit_log import AuditLog
    from zumik_secrets.app.change_watcher import ChangeWatcher
    from zumik_secrets.app.customer_keys import CustomerKeys
    from zumik_secrets.app.data_keys import DataKeys
    from zumik_secrets.app.sealed_secrets import SealedSecrets
    from zumik_secrets.app.sessions import SessionService
    from zumik_secrets.core.claims import ClaimVerifier
    from zumik_secrets.server.config import ServerConfig
    from zumik_secrets.storage.ports import Store

_LOG = logging.getLogger("zumik.server")

#: Latency buckets (seconds): most calls take well under a millisecond of server time, durable
#: ones a few milliseconds, and anything near the client's deadline (5 s) is an incident.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
OTHER = "_OTHER"
BREAKER_STATES = ("closed", "open", "half_open")
_MAX_BREAKERS = 10_000


@dataclass
class _Sources:
    """What the observable instruments read when a reader collects (set by :meth:`observe`)."""

    caches: dict[str, Callable[[], tuple[int, int, int]]] = field(default_factory=dict)
    audit_queue: Callable[[], int] = lambda: 0
    audit_dropped: Callable[[], int] = lambda: 0
    audit_healthy: Callable[[], bool] = lambda: True
    pool_stats: Callable[[], dict[str, int]] = dict
    feed_age: Callable[[], float] = lambda: 0.0
    certificates: dict[str, str] = field(default_factory=dict)
    serving: Callable[[], bool] = lambda: False
    breakers: dict[str, Callable[[], dict[str, int]]] = field(default_factory=dict)
    storage_ready: Callable[[], bool] = lambda: True


class _CertExpiry:
    """``notAfter`` of the first certificate of a PEM file, re-read when the file changes."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}

    def expiry(self, path: str) -> float | None:
        from cryptography import x509

        try:
            stat = Path(path).stat()
            key = (stat.st_mtime_ns, stat.st_size)
            cached = self._seen.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError):
            return None
        value = cert.not_valid_after_utc.timestamp()
        self._seen[path] = (key, value)
        return value


class _Tally:
    """Counts by label values, in a dict under a lock; an observable counter reads it."""

    __slots__ = ("_counts", "_keys", "_lock")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self._counts: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def add(self, values: tuple[str, ...]) -> None:
        with self._lock:
            self._counts[values] = self._counts.get(values, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._counts.items())
        for values, count in items:
            yield Observation(count, dict(zip(self._keys, values, strict=True)))


class OtelMetrics(Recorder):
    """The OpenTelemetry :class:`Recorder`: every instrument of the service."""

    enabled = True

    def __init__(self, provider: MeterProvider, *, tenant_limit: int = 100) -> None:
        """Create every instrument on ``provider``.

        Args:
            provider: The server's meter provider.
            tenant_limit: Distinct tenants labelled on ``zumik.tenant.rpc.calls`` (0: none).
        """
        self.provider = provider
        self.sources = _Sources()
        self._tenant_limit = tenant_limit
        self._tenants: set[str] = set()
        self._tenant_lock = threading.Lock()
        self._breakers: dict[tuple[str, str], str] = {}
        self._cert_expiry = _CertExpiry()
        self._attrs: dict[tuple[str, str], dict[str, str]] = {}
        meter = provider.get_meter("zumik_secrets")
        # -- calls (gRPC semantic conventions: rpc.server.call.duration, seconds)
        self._rpc_duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of incoming RPCs, by method and status code",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        # Per-call counters are tallied in plain dicts and read when a reader collects: an SDK
        # counter add hashes and cleans its attributes on every call, which cost more than the
        # rest of the call's telemetry (docs/observability.md, "Hot paths").
        self._rpc_errors = _Tally(("rpc.method", "rpc.response.status_code", "zumik.reason"))
        meter.create_observable_counter(
            "zumik.rpc.errors",
            [self._rpc_errors.observe],
            unit="{call}",
            description="Calls that did not end OK, by method, status code and reason",
        )
        self._denials = _Tally(("rpc.method", "zumik.reason"))
        meter.create_observable_counter(
            "zumik.authz.denials",
            [self._denials.observe],
            unit="{call}",
            description="Calls refused by authorization, by method and reason",
        )
        self._tenant_calls = _Tally(("zumik.tenant_id", "rpc.method"))
        meter.create_observable_counter(
            "zumik.tenant.rpc.calls",
            [self._tenant_calls.observe],
            unit="{call}",
            description="Calls of tenants in the rich telemetry mode, by tenant and method",
        )
        self._probes = _Tally(("zumik.health.status",))
        meter.create_observable_counter(
            "zumik.health.probes",
            [self._probes.observe],
            unit="{call}",
            description="Health checks answered by the health-only listener, by answer",
        )
        self._verify = _Tally(("zumik.verify.kind", "zumik.verify.result"))
        meter.create_observable_counter(
            "zumik.verify.results",
            [self._verify.observe],
            unit="{call}",
            description="Credential verifications, by kind and result",
        )
        # -- audit
        self._audit_batch = meter.create_histogram(
            "zumik.audit.batch.size",
            unit="{event}",
            description="Events per audit group commit",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )
        self._audit_commit = meter.create_histogram(
            "zumik.audit.commit.duration",
            unit="s",
            description="Duration of audit group commits, by outcome",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._durable_wait = meter.create_histogram(
            "zumik.audit.durable_wait.duration",
            unit="s",
            description="Time a durable audit record waited for its commit, by outcome",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._append_failures = meter.create_counter(
            "zumik.audit.append.failures",
            unit="{event}",
            description="Audit events in commits that failed (retried or failed closed)",
        )
        meter.create_observable_gauge(
            "zumik.audit.queue.depth",
            [self._observe_audit_queue],
            unit="{event}",
            description="Audit events queued or being committed",
        )
        meter.create_observable_counter(
            "zumik.audit.dropped",
            [self._observe_audit_dropped],
            unit="{event}",
            description="Non-durable audit events given up on (queue full during an outage)",
        )
        meter.create_observable_gauge(
            "zumik.audit.healthy",
            [self._observe_audit_healthy],
            description="1 while audit commits succeed, 0 after a failed one until the next",
        )
        # -- caches
        meter.create_observable_counter(
            "zumik.cache.requests",
            [self._observe_cache_requests],
            unit="{request}",
            description="Cache look-ups, by cache and result (hit or miss)",
        )
        meter.create_observable_gauge(
            "zumik.cache.entries",
            [self._observe_cache_entries],
            unit="{entry}",
            description="Entries held, by cache",
        )
        # -- storage
        meter.create_observable_gauge(
            "zumik.storage.ready",
            [self._observe_storage_ready],
            description="1 while the store answers and takes audit writes, else 0",
        )
        meter.create_observable_gauge(
            "zumik.db.pool.connections",
            [self._observe_pool_connections],
            unit="{connection}",
            description="PostgreSQL pool connections, by state (idle, used)",
        )
        meter.create_observable_gauge(
            "zumik.db.pool.waiting",
            [self._observe_pool_waiting],
            unit="{request}",
            description="Requests waiting for a PostgreSQL pool connection",
        )
        meter.create_observable_counter(
            "zumik.db.pool.wait.time",
            [self._observe_pool_wait_time],
            unit="s",
            description="Total time requests waited for a PostgreSQL pool connection",
        )
        meter.create_observable_counter(
            "zumik.db.pool.errors",
            [self._observe_pool_errors],
            unit="{error}",
            description="PostgreSQL pool errors, by kind (timeout, connect, lost)",
        )
        # -- customer keys, breakers
        self._ck_duration = meter.create_histogram(
            "zumik.customer_key.call.duration",
            unit="s",
            description="Calls to tenants' key servers, by operation and outcome",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        meter.create_observable_gauge(
            "zumik.breaker.open",
            [self._observe_breakers],
            unit="{breaker}",
            description="Circuit breakers by kind and state",
        )
        # -- change feed, certificates, serving
        self._change_delay = meter.create_histogram(
            "zumik.changes.apply.delay",
            unit="s",
            description="Time from a change's commit to this process applying it",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        meter.create_observable_gauge(
            "zumik.changes.feed.age",
            [self._observe_feed_age],
            unit="s",
            description="Seconds since the change feed (revocations) was last read successfully",
        )
        meter.create_observable_gauge(
            "zumik.tls.certificate.expiry",
            [self._observe_certificates],
            unit="s",
            description="notAfter of the configured certificates, Unix seconds",
        )
        meter.create_observable_gauge(
            "zumik.server.serving",
            [self._observe_serving],
            description="1 while health says SERVING, else 0",
        )

    # -- per call (Telemetry) -----------------------------------------------------------------

    def _call_attrs(self, method: str, code: str) -> dict[str, str]:
        key = (method, code)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {
                "rpc.system.name": "grpc",
                "rpc.method": method,
                "rpc.response.status_code": code,
            }
            self._attrs[key] = attrs
        return attrs

    def rpc_finished(
        self,
        method: str,
        code: str,
        reason: str,
        seconds: float,
        *,
        denied: bool,
        tenant: str | None,
    ) -> None:
        """One call ended (``method``: the full name, or ``_OTHER``; ``tenant``: only when the
        tenant's telemetry mode allows it)."""
        self._rpc_duration.record(seconds, self._call_attrs(method, code))
        if code != "OK":
            self._rpc_errors.add((method, code, reason or code))
            if denied:
                self._denials.add((method, reason or code))
        if tenant:
            self._tenant_calls.add((self._tenant(tenant), method))

    def _tenant(self, tenant: str) -> str:
        if tenant in self._tenants:
            return tenant
        with self._tenant_lock:
            if len(self._tenants) < self._tenant_limit:
                self._tenants.add(tenant)
                return tenant
        return OTHER

    def health_probe(self, status: str) -> None:
        """The health-only listener answered a probe with ``status``."""
        self._probes.add((status,))

    # -- the app port ---------------------------------------------------------------------------

    def verify_result(self, kind: str, result: str) -> None:
        """See :class:`Recorder`."""
        self._verify.add((kind, result))

    def audit_batch(self, events: int, seconds: float, ok: bool) -> None:
        """See :class:`Recorder`."""
        outcome = "ok" if ok else "error"
        self._audit_batch.record(events, {"zumik.outcome": outcome})
        self._audit_commit.record(seconds, {"zumik.outcome": outcome})

    def audit_durable_wait(self, seconds: float, outcome: str) -> None:
        """See :class:`Recorder`."""
        self._durable_wait.record(seconds, {"zumik.outcome": outcome})

    def audit_append_failed(self, events: int, durable: bool) -> None:
        """See :class:`Recorder`."""
        self._append_failures.add(events, {"zumik.audit.durable": "true" if durable else "false"})

    def customer_key_call(self, operation: str, seconds: float, outcome: str) -> None:
        """See :class:`Recorder`."""
        self._ck_duration.record(
            seconds, {"zumik.customer_key.operation": operation, "zumik.outcome": outcome}
        )

    def breaker_state(self, kind: str, key: str, state: str) -> None:
        """See :class:`Recorder` (``key`` is kept to count breakers, never exported)."""
        if len(self._breakers) >= _MAX_BREAKERS and (kind, key) not in self._breakers:
            return
        self._breakers[(kind, key)] = state

    def change_applied(self, delay_seconds: float) -> None:
        """See :class:`Recorder`."""
        self._change_delay.record(max(0.0, delay_seconds))

    # -- observable callbacks -------------------------------------------------------------------

    def _observe_audit_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.sources.audit_queue())

    def _observe_audit_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.sources.audit_dropped())

    def _observe_audit_healthy(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1 if self.sources.audit_healthy() else 0)

    def _observe_cache_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, read in sorted(self.sources.caches.items()):
            hits, misses, _ = read()
            yield Observation(hits, {"zumik.cache": name, "zumik.cache.result": "hit"})
            yield Observation(misses, {"zumik.cache": name, "zumik.cache.result": "miss"})

    def _observe_cache_entries(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, read in sorted(self.sources.caches.items()):
            yield Observation(read()[2], {"zumik.cache": name})

    def _observe_storage_ready(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1 if self.sources.storage_ready() else 0)

    def _pool(self) -> dict[str, int]:
        try:
            return self.sources.pool_stats()
        except Exception:  # noqa: BLE001 - a scrape must not fail on a closing pool
            return {}

    def _observe_pool_connections(self, options: CallbackOptions) -> Iterable[Observation]:
        stats = self._pool()
        if stats:
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            yield Observation(idle, {"zumik.db.state": "idle"})
            yield Observation(max(0, size - idle), {"zumik.db.state": "used"})

    def _observe_pool_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        stats = self._pool()
        if stats:
            yield Observation(stats.get("requests_waiting", 0))

    def _observe_pool_wait_time(self, options: CallbackOptions) -> Iterable[Observation]:
        stats = self._pool()
        if stats:
            yield Observation(stats.get("requests_wait_ms", 0) / 1000)

    def _observe_pool_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        stats = self._pool()
        if stats:
            yield Observation(stats.get("requests_errors", 0), {"zumik.db.error": "timeout"})
            yield Observation(stats.get("connections_errors", 0), {"zumik.db.error": "connect"})
            yield Observation(stats.get("connections_lost", 0), {"zumik.db.error": "lost"})

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        counts: dict[tuple[str, str], int] = {}
        for (kind, _key), state in list(self._breakers.items()):
            counts[(kind, state)] = counts.get((kind, state), 0) + 1
        for kind, read in self.sources.breakers.items():
            for state, count in read().items():
                counts[(kind, state)] = counts.get((kind, state), 0) + count
        kinds = sorted({kind for kind, _ in counts} | set(self.sources.breakers))
        for kind in kinds:
            for state in BREAKER_STATES:
                yield Observation(
                    counts.get((kind, state), 0),
                    {"zumik.breaker.kind": kind, "zumik.breaker.state": state},
                )

    def _observe_feed_age(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.sources.feed_age())

    def _observe_certificates(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, path in sorted(self.sources.certificates.items()):
            expiry = self._cert_expiry.expiry(path)
            if expiry is not None:
                yield Observation(expiry, {"zumik.certificate": name})

    def _observe_serving(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1 if self.sources.serving() else 0)


class Observed(Protocol):
    """What :meth:`ServerMetrics.observe` reads (the server's ``Runtime`` is one)."""

    api_keys: ApiKeyService
    sessions: SessionService
    claim_verifier: ClaimVerifier
    data_keys: DataKeys
    sealed_secrets: SealedSecrets
    customer_keys: CustomerKeys
    audit_log: AuditLog
    store: Store
    watcher: ChangeWatcher
    config: ServerConfig


class ServerMetrics:
    """The server's metrics: the recorder, its provider and the scrape endpoint."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        registry: Any = None,
        listen: str = "",
    ) -> None:
        """Wrap what :func:`create_metrics` built."""
        self.recorder = recorder
        self.registry = registry
        self.listen = listen
        self.endpoint: MetricsEndpoint | None = None

    @property
    def otel(self) -> OtelMetrics | None:
        """The OpenTelemetry recorder, or None when metrics are off."""
        return self.recorder if isinstance(self.recorder, OtelMetrics) else None

    def observe(self, runtime: Observed) -> None:
        """Point the observable instruments at the runtime's caches, queue, pool and files."""
        otel = self.otel
        if otel is None:
            return
        src = otel.sources
        api_keys, sessions, verifier = runtime.api_keys, runtime.sessions, runtime.claim_verifier
        src.caches["api_key"] = lambda: (
            api_keys.cache_hits,
            api_keys.cache_misses,
            api_keys.cache_size(),
        )
        src.caches["session"] = lambda: (
            sessions.cache_hits,
            sessions.cache_misses,
            sessions.cache_size(),
        )
        src.caches["claim"] = lambda: (
            verifier.cache_hits,
            verifier.cache_misses,
            verifier.cache_size(),
        )
        data_key_cache = runtime.data_keys.cache
        src.caches["data_key"] = lambda: (
            data_key_cache.hits,
            data_key_cache.misses,
            len(data_key_cache),
        )
        src.caches["sealed_row"] = runtime.sealed_secrets.row_cache_stats
        # Issue 15's breakers, one per customer key server (counted by state, never named).
        src.breakers["customer_key"] = runtime.customer_keys.breakers.states
        audit = runtime.audit_log
        audit.metrics = otel
        src.audit_queue = lambda: audit.queue_depth
        src.audit_dropped = lambda: audit.dropped
        src.audit_healthy = lambda: audit.healthy
        stats = getattr(runtime.store, "pool_stats", None)
        if callable(stats):
            src.pool_stats = stats
        watcher = runtime.watcher
        watcher.metrics = otel
        src.feed_age = lambda: time.monotonic() - watcher.last_success
        config = runtime.config
        src.certificates = {"server": config.tls_cert_file, "client_ca": config.tls_client_ca_file}

    def start(self, serving: Callable[[], bool]) -> None:
        """Start the scrape endpoint (if configured); ``serving`` answers its health path."""
        otel = self.otel
        if otel is not None:
            otel.sources.serving = serving
        if self.listen and self.registry is not None:
            self.endpoint = MetricsEndpoint(self.listen, self.registry, serving)
            self.endpoint.start()

    def shutdown(self) -> None:
        """Stop the endpoint and flush push exporters."""
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        otel = self.otel
        if otel is not None:
            try:
                otel.provider.shutdown()
            except Exception:  # noqa: BLE001 - an exporter failing at exit must not stop it
                _LOG.warning("metrics shutdown failed", exc_info=True)


def create_metrics(
    config: ServerConfig,
    *,
    extra_readers: Sequence[MetricReader] = (),
    resource: Resource | None = None,
) -> ServerMetrics:
    """Build the metrics of one server from its settings and the ``OTEL_*`` variables.

    Raises:
        RuntimeError: ``OTEL_METRICS_EXPORTER`` names an exporter that is not installed.
    """
    from zumik_secrets.server.otel_env import metric_readers_from_env

    readers: list[MetricReader] = [*extra_readers, *metric_readers_from_env()]
    registry = None
    if config.metrics_listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry, scope_info_enabled=False))
    if not readers:
        return ServerMetrics(NOOP)
    from zumik_secrets.server.otel_env import resource_from_env

    provider = MeterProvider(metric_readers=readers, resource=resource or resource_from_env())
    recorder = OtelMetrics(provider, tenant_limit=config.metrics_tenant_limit)
    return ServerMetrics(recorder, registry=registry, listen=config.metrics_listen)


# ------------------------------------------------------------------------------ the endpoint


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port).

    Raises:
        ValueError: no numeric port.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {listen!r}")
    return host.strip("[]"), int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /metrics, /healthz (SERVING: 200, else 503), /livez; 404 for anything else."""

    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """Answer a scrape or a health check."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.server.serving()
            self._send(200 if ok else 503, b"SERVING\n" if ok else b"NOT_SERVING\n")
        elif path == "/livez":
            self._send(200, b"ok\n")
        else:
            self._send(404, b"not found\n")

    def do_HEAD(self) -> None:
        """Like GET, without the body (any path but the known ones: 404)."""
        self.do_GET()

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes write no log line."""


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    registry: Any
    serving: Callable[[], bool]


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class MetricsEndpoint:
    """The scrape endpoint: plain HTTP on its own port, metrics and health only."""

    def __init__(self, listen: str, registry: Any, serving: Callable[[], bool]) -> None:
        """Bind (not serve yet).

        Raises:
            ValueError: ``listen`` is not ``host:port``.
            OSError: the port cannot be bound.
        """
        host, port = split_listen(listen)
        server_class = _HttpServer6 if ":" in host else _HttpServer
        self._server = server_class((host, port), _Handler)
        self._server.registry = registry
        self._server.serving = serving
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="zumik-metrics", daemon=True
        )

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
