"""Child spans for database statements (installed with tracing, see :mod:`.otel_env`).

A span is made only inside a recording span (a traced call): background work (the audit
writer, the change-feed poller) would otherwise start a root span every few milliseconds. The
span carries the backend, the operation and the statement text as written in the adapters,
with placeholders; parameter values never reach it (every value is a bound parameter).
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace

from zumik_secrets.storage.observe import set_statement_observer

_TRACER = trace.get_tracer("zumik_secrets.storage")
_OPERATION = re.compile(r"\s*(?:WITH\b.*?\)\s*)?([A-Za-z]+)", re.DOTALL)
MAX_STATEMENT_CHARS = 2000


def _operation(sql: str) -> str:
    match = _OPERATION.match(sql[:200])
    return match.group(1).upper() if match else "SQL"


def statement_span(backend: str, sql: Any) -> AbstractContextManager[Any] | None:
    """The span of one statement, or None outside a traced call."""
    if not trace.get_current_span().is_recording():
        return None
    text = sql if isinstance(sql, str) else str(sql)
    operation = _operation(text)
    return _TRACER.start_as_current_span(
        f"{operation} {backend}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "db.system.name": backend,
            "db.operation.name": operation,
            "db.query.text": text[:MAX_STATEMENT_CHARS],
        },
    )


def install_statement_spans() -> None:
    """Make every statement of every store in this process a child span of its call."""
    set_statement_observer(statement_span)
