"""JSON log lines, with a redaction filter as the last line of defence.

Nothing in the service logs secrets on purpose; the filter still rewrites anything in a log
record that looks like one of our secret formats (API key, session token, JWT-shaped claim,
keyring key material) so a future mistake does not reach the log. Free text (the message, its
arguments and a traceback) also goes through the one secret detector the audit log uses
(:func:`zumik_secrets.core.secret_scrub.scrub_text`: hex keys, random base64/base64url tokens,
a claim's signature segment on its own, PEM private keys). Structured fields are the service's
own (method, code, tenant, trace id...) and the rich request detail, which the telemetry
scrubs value by value (:mod:`zumik_secrets.api.redaction`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

# The patterns live in the pure core so the audit log refuses exactly what this filter redacts.
from zumik_secrets.core.secret_patterns import SECRET_PATTERNS
from zumik_secrets.core.secret_patterns import redact as redact_secrets
from zumik_secrets.core.secret_scrub import scrub_text

__all__ = [
    "SECRET_PATTERNS",
    "JsonFormatter",
    "RedactionFilter",
    "configure_logging",
    "redact",
    "submit_access_line",
]


_REDACTED = "[REDACTED]"

#: Fields every line of this process carries (a supervised worker's index and pid), set once by
#: :func:`configure_logging`.
_PROCESS_FIELDS: dict[str, Any] = {}


def redact(text: str) -> str:
    """Replace every secret-looking substring of ``text`` (linear time: the core's one pass)."""
    return redact_secrets(text, _REDACTED)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(redact(value))
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


@functools.lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def _timestamp(created: float, msecs: float) -> str:
    return _second(int(created)) + f".{int(msecs):03d}Z"


def _render(out: dict[str, Any]) -> str:
    # Redacting the rendered line covers every field at once; JSON leaves our formats'
    # alphabets unescaped, and escaped keyring JSON has its own alternative above.
    return redact(json.dumps(out, default=str, ensure_ascii=False))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a redacted JSON line."""
        out: dict[str, Any] = {
            "ts": _timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub_text(record.getMessage()),
        }
        out.update(_PROCESS_FIELDS)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = scrub_text(self.formatException(record.exc_info))
        return _render(out)


class _AccessLine:
    """An access-log line queued without a :class:`logging.LogRecord` (see
    :func:`submit_access_line`); rendered exactly as :class:`JsonFormatter` renders the record
    ``logging.getLogger(logger).info(message, extra=fields)`` would be."""

    __slots__ = ("created", "fields", "logger", "message")

    def __init__(self, logger: str, message: str, fields: dict[str, Any]) -> None:
        self.created = time.time()
        self.logger = logger
        self.message = message
        self.fields = fields

    def render(self) -> str:
        ts = _timestamp(self.created, (self.created - int(self.created)) * 1000)
        fast = _render_access(ts, self.logger, self.message, self.fields)
        if fast is not None:
            return fast
        out: dict[str, Any] = {
            "ts": ts,
            "level": "INFO",
            "logger": self.logger,
            "msg": self.message,
        }
        out.update(_PROCESS_FIELDS)
        out.update(self.fields)
        return _render(out)


#: The fields of the server's access line, in its order (see ``server/telemetry.py``): the
#: first eight repeat from call to call, the last two vary.
_ACCESS_FIXED = ("service", "method", "code", "reason", "peer", "tls", "tenant", "project")
_ACCESS_KEYS = (*_ACCESS_FIXED, "duration_ms", "trace_id")
_FRAGMENT_CACHE_SIZE = 4096
_fragments: dict[tuple[Any, ...], str] = {}
"""The JSON text of the repeating part of access lines, by its values: at most
``_FRAGMENT_CACHE_SIZE`` entries (emptied when full; the values are bounded by the telemetry:
method paths, SPIFFE IDs, ids of the grammar). Only the writer thread uses it."""


def _render_access(ts: str, logger: str, message: str, fields: dict[str, Any]) -> str | None:
    """The access line as :func:`_render` would render it, from pre-rendered fragments (None
    when ``fields`` is not a plain access line: the caller renders it the general way).

    The repeating fields are JSON-encoded once per distinct set of values; the whole line is
    still redacted, exactly as the general path redacts it.
    """
    if tuple(fields) != _ACCESS_KEYS:
        return None
    duration = fields["duration_ms"]
    trace_id = fields["trace_id"]
    if (
        type(duration) is not float
        or not math.isfinite(duration)
        or type(trace_id) is not str
        or not (trace_id.isascii() and (trace_id.isalnum() or not trace_id))
    ):
        return None
    key = (logger, message, *(fields[k] for k in _ACCESS_FIXED))
    middle = _fragments.get(key)
    if middle is None:
        # json.dumps with options builds an encoder per call: done once per distinct line head.
        head: dict[str, Any] = {"level": "INFO", "logger": logger, "msg": message}
        head.update(_PROCESS_FIELDS)
        head.update(zip(_ACCESS_FIXED, key[2:], strict=True))
        middle = json.dumps(head, ensure_ascii=False)[1:-1]
        if len(_fragments) >= _FRAGMENT_CACHE_SIZE:
            _fragments.clear()
        _fragments[key] = middle
    return redact(
        f'{{"ts": "{ts}", {middle}, "duration_ms": {duration!r}, "trace_id": "{trace_id}"}}'
    )


class RedactionFilter(logging.Filter):
    """Rewrites secret-looking text in a record's message and arguments, whatever the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place; never drops a record."""
        if isinstance(record.msg, str):
            record.msg = scrub_text(redact(record.msg))
        if record.args:
            if isinstance(record.args, dict):
                record.args = {k: _redact_value(v) for k, v in record.args.items()}
            else:
                record.args = tuple(_redact_value(a) for a in record.args)
        return True


class BackgroundJsonHandler(logging.Handler):
    """Formats and writes records on one background thread, in batches.

    Every RPC logs an access line. With a plain StreamHandler each of the server's worker
    threads takes the handler lock, formats, and issues a write and a flush for its own line;
    measured under load that cost about a quarter of an empty RPC's server CPU (lock contention
    and one syscall per line). Here a worker only runs the filters (redaction of the message)
    and enqueues the record; the writer thread formats whatever is queued and writes it with one
    write and one flush per batch, so a line reaches the stream within one batch (milliseconds).
    Records still queued when the process is killed with SIGKILL are lost: the access log is
    operational, the audit log is the durable record. :meth:`close` (run by
    ``logging.shutdown`` at exit) drains the queue.
    """

    _STOP = object()

    def __init__(self, stream: Any, *, max_batch: int = 512, linger: float = 0.005) -> None:
        """Start the writer thread over ``stream`` (a text stream).

        Args:
            stream: Where the lines go.
            max_batch: Most lines written at once.
            linger: Seconds the writer waits after the first line of a batch for more to
                queue: under load it wakes at most once per ``linger`` instead of once per
                line (each wake-up took the GIL from the workers); an idle log never wakes.
        """
        super().__init__()
        self._stream = stream
        self._max_batch = max_batch
        self._linger = linger
        #: Lines that could not be written (the stream failed); nothing else reports it.
        self.lost_lines = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="zumik-log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter in the caller's thread, then enqueue (no handler lock taken)."""
        if not self.filter(record):
            return False
        self._queue.put(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Enqueue ``record`` (used when called directly)."""
        self._queue.put(record)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if self._linger and item is not self._STOP:
                time.sleep(self._linger)
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = []
            stop = False
            for record in batch:
                if record is self._STOP:
                    stop = True
                    continue
                try:
                    if type(record) is _AccessLine:
                        lines.append(record.render())
                    else:
                        lines.append(self.format(record))
                except Exception:  # noqa: BLE001 - one bad record must not stop the log
                    if isinstance(record, logging.LogRecord):
                        self.handleError(record)
                    else:
                        self.lost_lines += 1
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except Exception:  # noqa: BLE001 - stderr gone: count what could not be written
                    self.lost_lines += len(lines)
            if stop:
                return

    def submit(self, line: _AccessLine) -> None:
        """Queue a prepared access line (see :func:`submit_access_line`)."""
        self._queue.put(line)

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join(timeout=5)
        super().close()


def submit_access_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> bool:
    """Queue ``logger.info(message, extra=fields)`` without building a LogRecord, when safe.

    Every RPC writes an access line; creating a :class:`logging.LogRecord` and running it
    through the logger, the filters and the handler was a tenth of an empty RPC's server CPU.
    When the process logs exactly as :func:`configure_logging` set it up (one
    :class:`BackgroundJsonHandler` on the root logger, nothing on ``logger`` itself, INFO
    enabled), the line is queued for that handler's writer as is and rendered there to the very
    same redacted JSON. Otherwise (tests capturing records, another handler added) nothing is
    queued and the caller logs normally.

    Returns:
        True when the line was queued.
    """
    root = logging.root
    handlers = root.handlers
    if (
        len(handlers) != 1
        or type(handlers[0]) is not BackgroundJsonHandler
        or logger.handlers
        or logger.filters
        or root.filters
        or not logger.propagate
        or not logger.isEnabledFor(logging.INFO)
    ):
        return False
    handler = handlers[0]
    filters = handler.filters
    if handler.level > logging.INFO or len(filters) != 1 or type(filters[0]) is not RedactionFilter:
        return False  # only the RedactionFilter; the rendered line is redacted anyway
    handler.submit(_AccessLine(logger.name, message, fields))
    return True


def configure_logging(level: str = "INFO", process_fields: Mapping[str, Any] | None = None) -> None:
    """Send every log record to stderr as redacted JSON lines (written by a background thread).

    Args:
        level: The root level.
        process_fields: Fields added to every line (a supervised worker names itself with them).
    """
    _PROCESS_FIELDS.clear()
    _PROCESS_FIELDS.update(process_fields or {})
    _fragments.clear()  # the fragments embed the process fields
    # The JSON lines carry none of these; not collecting them saves work on every access line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BackgroundJsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
