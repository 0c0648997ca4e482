"""The JSON log lines: the access-line fast path renders exactly what the logging path renders,
redacts the same way, and steps aside whenever logging is not set up as the server sets it up."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from zumik_secrets.server.log_setup import (
    BackgroundJsonHandler,
    JsonFormatter,
    RedactionFilter,
    submit_access_line,
)

API_KEY = "zk_live_" + "A1b2C3d4E5f6G7h8I9j0K1" + "_" + "s3cr3tS3CR3Ts3cr3tS3CR3Tabc"


@pytest.fixture
def server_logging() -> Iterator[tuple[io.StringIO, BackgroundJsonHandler]]:
    """Logging exactly as ``configure_logging`` sets it up, over a string buffer."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    handler = BackgroundJsonHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield stream, handler
    finally:
        handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def _only(handler: BackgroundJsonHandler) -> None:
    """Make ``handler`` the root's only handler for the test body (pytest adds its own
    capturing handler around each test phase, which rightly turns the fast path off)."""
    logging.getLogger().handlers[:] = [handler]


def _lines(stream: io.StringIO, handler: BackgroundJsonHandler) -> list[dict[str, object]]:
    handler.close()  # drains the queue
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_fast_path_renders_what_the_logging_path_renders(
    server_logging: tuple[io.StringIO, BackgroundJsonHandler],
) -> None:
    stream, handler = server_logging
    _only(handler)
    logger = logging.getLogger("zumik.access")
    fields = {"service": "SealService", "method": "Open", "code": "OK", "duration_ms": 1.25}
    assert submit_access_line(logger, "rpc", dict(fields))
    logger.info("rpc", extra=dict(fields))
    fast, slow = _lines(stream, handler)
    assert isinstance(fast.pop("ts"), str) and isinstance(slow.pop("ts"), str)
    assert fast == slow
    assert list(fast) == list(slow)  # same key order too


def test_fast_path_redacts(server_logging: tuple[io.StringIO, BackgroundJsonHandler]) -> None:
    stream, handler = server_logging
    _only(handler)
    logger = logging.getLogger("zumik.access")
    assert submit_access_line(logger, "rpc", {"peer": API_KEY, "nested": {"v": [API_KEY]}})
    lines = _lines(stream, handler)
    text = json.dumps(lines)
    assert API_KEY not in text and "[REDACTED]" in text


def test_fast_path_steps_aside_when_logging_is_set_up_otherwise(
    server_logging: tuple[io.StringIO, BackgroundJsonHandler],
) -> None:
    _, handler = server_logging
    _only(handler)
    logger = logging.getLogger("zumik.access")
    root = logging.getLogger()
    extra = logging.StreamHandler(io.StringIO())
    root.addHandler(extra)  # e.g. a test capturing records
    try:
        assert not submit_access_line(logger, "rpc", {})
    finally:
        root.removeHandler(extra)
    logger.addHandler(extra)
    try:
        assert not submit_access_line(logger, "rpc", {})
    finally:
        logger.removeHandler(extra)
    root.setLevel(logging.WARNING)
    assert not submit_access_line(logger, "rpc", {})
    root.setLevel(logging.INFO)
    assert submit_access_line(logger, "rpc", {})
    handler.filters.clear()  # no RedactionFilter: not the server's set-up
    assert not submit_access_line(logger, "rpc", {})


@pytest.mark.parametrize(
    "fields",
    [
        {
            "service": "SealService",
            "method": "Open",
            "code": "OK",
            "reason": "",
            "peer": "spiffe://zumik.local/svc/gw",
            "tls": "TLSv1.3",
            "tenant": "t1",
            "project": "p1",
            "duration_ms": 1.25,
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
        },
        {
            "service": 'Odd"Service\\',
            "method": "M\u00e9thode\n",
            "code": "PERMISSION_DENIED",
            "reason": "METHOD_NOT_ALLOWED",
            "peer": API_KEY,
            "tls": "",
            "tenant": "",
            "project": "",
            "duration_ms": 0.001,
            "trace_id": "",
        },
    ],
)
def test_access_line_fragments_render_what_the_logging_path_renders(
    server_logging: tuple[io.StringIO, BackgroundJsonHandler], fields: dict[str, object]
) -> None:
    """The access line's pre-rendered fragments give the very text of the general path
    (escaping, key order, redaction), the first time and from the fragment cache."""
    stream, handler = server_logging
    _only(handler)
    logger = logging.getLogger("zumik.access")
    for _ in range(2):
        assert submit_access_line(logger, "rpc", dict(fields))
    logger.info("rpc", extra=dict(fields))
    handler.close()
    texts = stream.getvalue().splitlines()
    assert len(texts) == 3
    bodies = {text.split(", ", 1)[1] for text in texts}  # all but the time stamp
    assert len(bodies) == 1
    assert API_KEY not in stream.getvalue()


def test_access_lines_carry_the_process_fields_of_a_supervised_worker(
    server_logging: tuple[io.StringIO, BackgroundJsonHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervised worker's index and pid are on every line, the fast access path included
    (the supervisor's tests tell workers apart by them)."""
    from zumik_secrets.server import log_setup

    monkeypatch.setattr(log_setup, "_PROCESS_FIELDS", {"worker": 1, "pid": 4242})
    monkeypatch.setattr(log_setup, "_fragments", {})
    stream, handler = server_logging
    _only(handler)
    logger = logging.getLogger("zumik.access")
    fields = {
        "service": "zumik.secrets.v1.KeyService",
        "method": "VerifyApiKey",
        "code": "OK",
        "reason": "",
        "peer": "spiffe://zumik.local/svc/gateway",
        "tls": "TLSv1.3",
        "tenant": "",
        "project": "",
        "duration_ms": 0.25,
        "trace_id": "",
    }
    assert submit_access_line(logger, "rpc", dict(fields))
    logger.info("rpc", extra=dict(fields))
    handler.close()
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert all(line["worker"] == 1 and line["pid"] == 4242 for line in lines)
    assert len({text.split(", ", 1)[1] for text in stream.getvalue().splitlines()}) == 1
