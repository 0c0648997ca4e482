"""One secret detector for every sink: access log, spans, error messages and audit events.

The detector is :func:`zumik_secrets.core.secret_patterns.secret_kind` (the one AppendEvent
refuses with, and the audit log redacts with); this module applies it to the shapes each sink
holds, so a value the detector flags is replaced, never echoed, wherever it would go:

* :func:`scrub_value`: one caller-supplied value (a request field shown in rich telemetry):
  replaced whole by ``[REDACTED]`` when flagged;
* :func:`scrub_text`: free text (a log message, a traceback, an error message): each token
  (a run between whitespace, quotes, brackets and separators) that the detector flags is
  replaced, and a PEM private-key block is replaced from its BEGIN line to its END line.

Resource names are attributed, never redacted: a value or token that is a whole resource name
of the grammar (:func:`zumik_secrets.core.names.is_resource_name`) is kept as it is, whatever
its ids look like (UUID, ULID, hex). Input is bounded before any regex (:data:`MAX_SCRUB`
characters; beyond that the text is cut and marked), and each step is a single left-to-right
scan, so the cost is linear in the (bounded) input plus the detector's own cost per token.
"""

from __future__ import annotations

import re

from zumik_secrets.core.names import is_resource_name
from zumik_secrets.core.secret_patterns import MIN_SECRET_RUN, secret_kind

REDACTED = "[REDACTED]"
MAX_SCRUB = 65_536
"""Longest text scanned; the rest is dropped (and marked) before any regex runs."""

# Separators that never occur inside one of our secret formats (base64/base64url/base62/hex,
# JWS dots, API-key underscores, PEM bodies are split per line anyway).
_TOKEN = re.compile(r"[^\s\"'`<>(){}\[\],;|\\]+")
# A PEM private key from its BEGIN line to its END line (or to the end of the text). No nested
# quantifiers: one lazy scan per BEGIN marker, and a marker consumes what it scanned.
_PEM_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# Shorter tokens can hold none of our formats and fall under the entropy rule's minimum.
_MIN_TOKEN = min(MIN_SECRET_RUN, 32)


def flagged(value: str) -> bool:
    """Whether the detector flags ``value`` (a whole resource name never is)."""
    if is_resource_name(value):
        return False
    return secret_kind(value[:MAX_SCRUB]) is not None


def scrub_value(value: str) -> str:
    """``value``, or ``[REDACTED]`` when the detector flags it."""
    return REDACTED if flagged(value) else value


def _token(match: re.Match[str]) -> str:
    token = match.group(0)
    if len(token) < _MIN_TOKEN or is_resource_name(token.rstrip(".:")):
        return token
    return REDACTED if secret_kind(token) is not None else token


def scrub_text(text: str) -> str:
    """Free text with every flagged token (and PEM private-key block) replaced."""
    if len(text) > MAX_SCRUB:
        text = text[:MAX_SCRUB] + "\u2026[truncated]"
    if "PRIVATE KEY" in text:
        text = _PEM_BLOCK.sub(REDACTED, text)
    return _TOKEN.sub(_token, text)
