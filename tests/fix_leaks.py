"""Secret-leak sweep: a pytest plugin that fails the session if any secret a test made leaks.

Loaded from ``tests/conftest.py`` (``pytest_plugins``), so it runs on every test of ``make test``.

What counts as a secret (the *registry*):

* every value of a field the contracts mark ``(sensitive) = true`` in any request or response
  seen by a client channel of :class:`tests.fix_server.RunningServer` (raw API keys, session
  tokens, claims, plaintexts, customer tokens), captured by :class:`CaptureInterceptor`;
* claims minted by tests, master-keyring key material written by the server fixtures, and
  anything a test adds with ``leak_registry.add(value, origin)`` (or :data:`REGISTRY`);
* for an API key, also its 32-character secret part and every 12-character window of it (so a
  truncated key in a log still counts).

Values shorter than 12 characters or with fewer than 6 distinct characters are not registered:
they would match by chance (``000000000000`` is inside every test handle). A value a test also
sent in a *non*-sensitive field is dropped from the sweep (the test made it public itself),
unless it was registered with ``planted=True``: a secret-shaped value a test deliberately puts
in a non-sensitive field (the rich-mode sweep, tests/security/test_rich_mode_sweep.py), which
the service must refuse or redact and never store or echo.

Where it looks (the *haystacks*), at the end of the session:

* every log record of the session, formatted as the server formats it (JSON, redaction on):
  a root handler installed at configure time, root level INFO;
* text that tests hand over with :func:`add_haystack` (stderr of subprocess servers);
* every span, through a session-wide tracer provider (:data:`SPAN_EXPORTER` tees into
  :data:`TEST_SPAN_EXPORTER`, which tests may clear);
* every metric of every test server (:func:`record_metrics`, called when a server of
  tests/fix_server.py closes): each data point's labels, and each exemplar's filtered labels
  and trace/span ids; plus the text its Prometheus scrape endpoint served (:func:`scrape`);
* the code, details and trailing metadata of every failed call seen by a captured channel;
* every SQLite file (``*.db``, ``*-wal``) under the session's temp directory, raw bytes; every
  PostgreSQL test database (each table, each column) before a test's ``store_url`` or
  ``fresh_pg_url`` is truncated or dropped.

A hit fails the run (exit status 1) with where it was found and a SHA-256 prefix of the secret,
never the secret itself. Under pytest-xdist each worker sweeps what it saw and hands the findings
to the controller through ``workeroutput``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MIN_LENGTH = 12
MIN_DISTINCT = 6
WINDOW = 12
_API_KEY_RE = re.compile(r"zk_[a-z]{2,8}_[0-9A-Za-z]{22}_([0-9A-Za-z]{32})[0-9A-Za-z]{6}")
_ALNUM_RUN = re.compile(rb"[0-9A-Za-z]{12,}")


def fingerprint(value: bytes) -> str:
    """What a report prints instead of a secret: 12 hex chars of its SHA-256."""
    return hashlib.sha256(value).hexdigest()[:12]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def _worth_registering(value: bytes) -> bool:
    return len(value) >= MIN_LENGTH and len(set(value)) >= MIN_DISTINCT


@dataclass
class LeakRegistry:
    """The secrets of this session (bytes -> where they came from)."""

    secrets: dict[bytes, str] = field(default_factory=dict)
    windows: dict[bytes, str] = field(default_factory=dict)  # 12-byte windows of key secrets
    public: set[bytes] = field(default_factory=set)
    planted: set[bytes] = field(default_factory=set)  # swept even when sent in public fields
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, value: str | bytes, origin: str = "test", *, planted: bool = False) -> None:
        """Register a secret a test made (ignored when too short to match reliably).

        ``planted``: the test sends it in non-sensitive fields on purpose; it stays swept.
        """
        raw = _as_bytes(value)
        if not _worth_registering(raw):
            return
        with self._lock:
            self.secrets.setdefault(raw, origin)
            if planted:
                self.planted.add(raw)
            match = _API_KEY_RE.search(raw.decode("utf-8", "replace"))
            if match:
                secret = match.group(1).encode()
                self.secrets.setdefault(secret, f"{origin} (secret part)")
                for i in range(len(secret) - WINDOW + 1):
                    window = secret[i : i + WINDOW]
                    if len(set(window)) >= MIN_DISTINCT:
                        self.windows.setdefault(window, f"{origin} (12-char piece)")

    def add_public(self, value: str | bytes) -> None:
        """A value a test sent in a non-sensitive field: it may appear anywhere."""
        raw = _as_bytes(value)
        if _worth_registering(raw):
            with self._lock:
                self.public.add(raw)

    def add_keyring(self, text: str, origin: str = "master keyring") -> None:
        """Register every key of a keyring JSON text (base64url text and raw bytes)."""
        import base64
        import json

        for entry in json.loads(text).get("keys", []):
            key = str(entry.get("key", ""))
            self.add(key, origin)
            with contextlib.suppress(ValueError):
                self.add(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)), origin)

    def needles(self) -> tuple[dict[bytes, str], dict[bytes, str], int]:
        """(secrets, windows, how many were dropped as public) for the sweep."""
        with self._lock:
            secrets = {
                k: v for k, v in self.secrets.items() if k not in self.public or k in self.planted
            }
            windows = {
                k: v
                for k, v in self.windows.items()
                if not any(k in p for p in self.public if len(p) >= WINDOW)
            }
            return secrets, windows, len(self.secrets) - len(secrets)


REGISTRY = LeakRegistry()


# ------------------------------------------------------------------------------ haystacks


@dataclass
class _Haystacks:
    """Text and files to sweep, collected during the session."""

    texts: list[tuple[str, bytes]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    client_errors: list[bytes] = field(default_factory=list)
    spans: list[bytes] = field(default_factory=list)
    logs: list[bytes] = field(default_factory=list)
    metrics: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)


_HAY = _Haystacks()


def add_haystack(where: str, text: str | bytes) -> None:
    """Hand text over to the sweep (e.g. a subprocess server's stderr), labelled ``where``."""
    with _HAY._lock:
        _HAY.texts.append((where, _as_bytes(text)))


def add_haystack_file(path: Path) -> None:
    """Sweep this file at the end of the session (if it still exists)."""
    with _HAY._lock:
        _HAY.files.append(path)


class _KeepEverything(logging.Handler):
    """Keeps every record, formatted as the server writes it (JSON lines, redaction applied)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        from zumik_secrets.server.log_setup import JsonFormatter

        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted: keep its parts
            line = f"{record.msg!r} {record.args!r}"
        with _HAY._lock:
            _HAY.logs.append(line.encode("utf-8", "surrogatepass"))


class _TeeSpanExporter(SpanExporter):
    """Keeps a text form of every span for the sweep and forwards spans to tests' exporter."""

    def __init__(self, forward: InMemorySpanExporter) -> None:
        self.forward = forward

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            parts = [span.name, repr(dict(span.attributes or {})), span.status.description or ""]
            parts.extend(f"{e.name} {dict(e.attributes or {})!r}" for e in span.events)
            with _HAY._lock:
                _HAY.spans.append(" ".join(parts).encode("utf-8", "surrogatepass"))
        return self.forward.export(spans)

    def shutdown(self) -> None:
        self.forward.shutdown()


def record_metrics(reader: Any, where: str) -> None:
    """Keep the labels and exemplars of every data point ``reader`` (an SDK
    ``InMemoryMetricReader``) collects now, for the sweep."""
    data = reader.get_metrics_data()
    parts: list[str] = [where]
    for resource_metrics in getattr(data, "resource_metrics", None) or ():
        parts.append(repr(dict(resource_metrics.resource.attributes)))
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                parts.append(metric.name)
                for point in metric.data.data_points:
                    parts.append(repr(dict(point.attributes or {})))
                    for exemplar in getattr(point, "exemplars", None) or ():
                        parts.append(
                            f"exemplar {dict(exemplar.filtered_attributes or {})!r} "
                            f"{exemplar.trace_id} {exemplar.span_id} {exemplar.value}"
                        )
    with _HAY._lock:
        _HAY.metrics.append("\n".join(parts).encode("utf-8", "surrogatepass"))


def scrape(port: int) -> bytes:
    """The text a Prometheus scrape endpoint on loopback serves now (empty if none answers)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return bytes(response.read())
    except OSError:
        return b""


#: Tests that look at spans use this one (and may clear it); the sweep keeps its own copy.
TEST_SPAN_EXPORTER = InMemorySpanExporter()
SPAN_EXPORTER = _TeeSpanExporter(TEST_SPAN_EXPORTER)


_PROVIDER: list[TracerProvider] = []


def install_tracer_provider() -> bool:
    """Install the session-wide tracer provider once; False if another one was there first."""
    if not _PROVIDER:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(SPAN_EXPORTER))
        trace.set_tracer_provider(provider)
        _PROVIDER.append(provider)
    return trace.get_tracer_provider() is _PROVIDER[0]


# ------------------------------------------------------------------------------ client capture


def _is_repeated(fd: _descriptor.FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == _descriptor.FieldDescriptor.LABEL_REPEATED  # type: ignore[attr-defined]


def record_message(message: Any, where: str) -> None:
    """Register the sensitive values of a message (and note its public strings)."""
    if not isinstance(message, Message):
        return
    from zumik_secrets.api.contracts import is_sensitive

    for fd, value in message.ListFields():
        if fd.type == _descriptor.FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str | bytes):
                        REGISTRY.add_public(key)
                    if isinstance(item, Message):
                        record_message(item, where)
                    elif isinstance(item, str | bytes):
                        REGISTRY.add_public(item)
                continue
            for item in value if _is_repeated(fd) else [value]:
                record_message(item, where)
            continue
        if fd.type not in (fd.TYPE_STRING, fd.TYPE_BYTES):
            continue
        sensitive = is_sensitive(fd)
        for item in value if _is_repeated(fd) else [value]:
            if sensitive:
                REGISTRY.add(item, f"{fd.full_name} ({where})")
            elif where == "request":
                REGISTRY.add_public(item)


def record_error(error: grpc.RpcError) -> None:
    """Keep what a client saw of a failed call: code, details, trailing metadata."""
    parts: list[bytes] = []
    try:
        parts.append(str(error.code()).encode())  # type: ignore[attr-defined]
        parts.append(_as_bytes(error.details() or ""))  # type: ignore[attr-defined]
        for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
            parts.append(_as_bytes(key) + b"=" + _as_bytes(value))
    except Exception:  # noqa: BLE001 - a half-built error object: keep what we have
        parts.append(_as_bytes(repr(error)))
    with _HAY._lock:
        _HAY.client_errors.append(b" ".join(parts))


def _record_outcome(outcome: Any) -> None:
    error = outcome.exception()
    if error is None:
        record_message(outcome.result(), "response")
    elif isinstance(error, grpc.RpcError):
        record_error(error)


class _StreamCapture:
    """Wraps a server-streaming call: records each message and a final error."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._call)
        except grpc.RpcError as error:
            record_error(error)
            raise
        record_message(item, "response")
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class CaptureInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Client interceptor for test channels: feeds requests, responses and errors to the sweep."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        record_message(request, "request")
        outcome = continuation(details, request)
        # A callback, not result(): a test's .future() call must stay asynchronous.
        outcome.add_done_callback(_record_outcome)
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        record_message(request, "request")
        return _StreamCapture(continuation(details, request))


def capture(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with :class:`CaptureInterceptor` installed."""
    return grpc.intercept_channel(channel, CaptureInterceptor())


# ------------------------------------------------------------------------------ databases


def scan_postgres(url: str, where: str) -> None:
    """Copy every value of every table of a PostgreSQL database into the haystacks."""
    import psycopg

    chunks: list[bytes] = []
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            tables = [
                str(row[0])
                for row in conn.execute(
                    "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
                    "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                    "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
                )
            ]
            for table in tables:
                for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608 - names from the catalog
                    for value in row:
                        if isinstance(value, bytes | bytearray | memoryview):
                            chunks.append(bytes(value))
                        elif value is not None:
                            chunks.append(str(value).encode("utf-8", "surrogatepass"))
    except psycopg.Error as exc:
        add_haystack(f"{where} (unreadable: {type(exc).__name__})", b"")
        return
    add_haystack(where, b"\x00".join(chunks))


# ------------------------------------------------------------------------------ the sweep


@dataclass(frozen=True)
class Finding:
    where: str
    origin: str
    digest: str

    def line(self) -> str:
        return f"secret sha256:{self.digest} ({self.origin}) found in {self.where}"


def _search(
    where: str, hay: bytes, secrets: dict[bytes, str], windows: dict[bytes, str]
) -> Iterator[Finding]:
    if not hay:
        return
    for secret, origin in secrets.items():
        if secret in hay:
            yield Finding(where, origin, fingerprint(secret))
    if windows:
        seen: set[bytes] = set()
        for run in _ALNUM_RUN.finditer(hay):
            text = run.group()
            for i in range(len(text) - WINDOW + 1):
                piece = text[i : i + WINDOW]
                if piece in windows and piece not in seen:
                    seen.add(piece)
                    yield Finding(where, windows[piece], fingerprint(piece))


def _db_files(root: Path) -> Iterable[Path]:
    for pattern in ("*.db", "*.db-wal", "*.sqlite3", "*.sqlite3-wal"):
        yield from root.rglob(pattern)


def sweep(tmp_root: Path | None) -> tuple[list[Finding], dict[str, int]]:
    """Search every haystack for every registered secret."""
    started = time.monotonic()
    secrets, windows, dropped = REGISTRY.needles()
    findings: list[Finding] = []
    stats = {
        "secrets": len(secrets),
        "key_pieces": len(windows),
        "dropped_public": dropped,
        "log_records": len(_HAY.logs),
        "spans": len(_HAY.spans),
        "metric_sets": len(_HAY.metrics),
        "client_errors": len(_HAY.client_errors),
        "texts": len(_HAY.texts),
        "db_files": 0,
        "bytes": 0,
    }

    def run(where: str, hay: bytes) -> None:
        stats["bytes"] += len(hay)
        findings.extend(_search(where, hay, secrets, windows))

    run("log records", b"\n".join(_HAY.logs))
    run("spans", b"\n".join(_HAY.spans))
    run("metric labels and exemplars", b"\n".join(_HAY.metrics))
    run("errors seen by clients", b"\n".join(_HAY.client_errors))
    for where, text in _HAY.texts:
        run(where, text)
    files = list(_HAY.files)
    if tmp_root is not None and tmp_root.exists():
        files.extend(_db_files(tmp_root))
    for path in sorted(set(files)):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        stats["db_files"] += 1
        run(str(path), data)
    unique = {(f.where, f.digest): f for f in findings}
    stats["milliseconds"] = int((time.monotonic() - started) * 1000)
    return list(unique.values()), stats


# ------------------------------------------------------------------------------ pytest hooks

_REPORT: dict[str, Any] = {"findings": [], "stats": {}, "workers": 0}
_LOG_HANDLER: _KeepEverything | None = None


@pytest.fixture(scope="session")
def leak_registry() -> LeakRegistry:
    """The session's secret registry: ``leak_registry.add(value, origin)``."""
    return REGISTRY


def pytest_configure(config: pytest.Config) -> None:
    global _LOG_HANDLER
    if _LOG_HANDLER is None:
        _LOG_HANDLER = _KeepEverything()
        root = logging.getLogger()
        root.addHandler(_LOG_HANDLER)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            # The access log and audit lines are INFO: without this they would never be formed.
            root.setLevel(logging.INFO)
    install_tracer_provider()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    """Sweep each PostgreSQL test database before it is truncated or dropped."""
    outcome = yield
    if fixturedef.argname not in {"store_url", "fresh_pg_url", "pg_url"}:
        return
    try:
        url = outcome.get_result()
    except BaseException:  # noqa: BLE001 - the fixture failed; nothing to sweep
        return
    if isinstance(url, str) and url.startswith("postgresql"):
        where = f"postgresql database of {request.node.nodeid} ({fixturedef.argname})"
        fixturedef.addfinalizer(lambda: scan_postgres(url, where))


def _tmp_root(config: pytest.Config) -> Path | None:
    factory: Callable[[], Path] | None = getattr(
        getattr(config, "_tmp_path_factory", None), "getbasetemp", None
    )
    try:
        return factory() if factory is not None else None
    except (OSError, ValueError):
        return None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    findings, stats = sweep(_tmp_root(config))
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller reports
        config.workeroutput["leak_findings"] = [(f.where, f.origin, f.digest) for f in findings]
        config.workeroutput["leak_stats"] = stats
        return
    _merge(findings, stats)
    if _REPORT["findings"]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _merge(findings: list[Finding], stats: dict[str, int]) -> None:
    _REPORT["findings"].extend(findings)
    for key, value in stats.items():
        _REPORT["stats"][key] = _REPORT["stats"].get(key, 0) + value


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: collect a worker's sweep."""
    output = getattr(node, "workeroutput", {}) or {}
    found = [Finding(*item) for item in output.get("leak_findings", [])]
    _REPORT["workers"] += 1
    _merge(found, output.get("leak_stats", {}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    stats = _REPORT["stats"]
    findings: list[Finding] = _REPORT["findings"]
    terminalreporter.write_sep("-", "secret-leak sweep")
    terminalreporter.write_line(
        "swept {bytes} bytes ({log_records} log records, {spans} spans, {metric_sets} servers'"
        " metrics, {client_errors} client "
        "errors, {texts} handed-over texts, {db_files} database files) for {secrets} secrets and "
        "{key_pieces} API-key pieces ({dropped_public} dropped: also sent as public values) "
        "in {milliseconds} ms of sweeping (summed over xdist workers)".format(
            **{
                k: stats.get(k, 0)
                for k in (
                    "bytes",
                    "log_records",
                    "spans",
                    "metric_sets",
                    "client_errors",
                    "texts",
                    "db_files",
                    "secrets",
                    "key_pieces",
                    "dropped_public",
                    "milliseconds",
                )
            }
        )
    )
    if findings:
        terminalreporter.write_line(f"LEAK SWEEP FAILED: {len(findings)} finding(s)", red=True)
        for finding in sorted(findings, key=lambda f: (f.where, f.digest)):
            terminalreporter.write_line("  " + finding.line(), red=True)
    else:
        terminalreporter.write_line("leak sweep: no secret found anywhere")
