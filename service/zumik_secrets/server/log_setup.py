"""JSON log lines, with a redaction filter as the last line of defence.

Nothing in the service logs secrets on purpose; the filter still rewrites anything in a log
record that looks like one of our secret formats (API key, session token, JWT-shaped claim,
keyring key material) so a future mistake does not reach the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

#: Patterns of our secret formats. Matches are replaced by ``[REDACTED]``.
SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"zk_[a-z]{2,8}_[0-9A-Za-z]{22}_[0-9A-Za-z]{20,}"),  # API key
    re.compile(r"zs_[A-Za-z0-9_-]{40,}"),  # session token
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWS
    re.compile(r'"key"\s*:\s*"[A-Za-z0-9_-]{40,}"'),  # keyring JSON entry
)

_REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Replace every secret-looking substring of ``text``."""
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(_REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a redacted JSON line."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(_redact_value(out), default=str, ensure_ascii=False))


class RedactionFilter(logging.Filter):
    """Rewrites secret-looking text in a record's message and arguments, whatever the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place; never drops a record."""
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            if isinstance(record.args, dict):
                record.args = {k: _redact_value(v) for k, v in record.args.items()}
            else:
                record.args = tuple(_redact_value(a) for a in record.args)
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as redacted JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
