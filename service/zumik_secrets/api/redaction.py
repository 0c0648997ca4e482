"""Describe a request for telemetry without ever including a sensitive field.

Which fields are sensitive is read from the contracts (`(zumik.secrets.v1.sensitive) = true`),
so adding a secret field to a message only needs that one annotation. Every other string (and
map key) a caller sent goes through the one secret detector
(:mod:`zumik_secrets.core.secret_scrub`) and is replaced by ``[REDACTED]`` when flagged, so a
secret put in the wrong field (a key as a display name, a token as a page token) is not echoed
to the access log or a span in the richer telemetry mode; resource names are kept.
"""

from __future__ import annotations

import itertools
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message

from zumik_secrets.api.contracts import is_sensitive
from zumik_secrets.core.secret_scrub import scrub_value

_MAX_STRING = 256
_MAX_ITEMS = 32
_REDACTED = "[REDACTED]"

_FD = _descriptor.FieldDescriptor


def _scalar(field: _descriptor.FieldDescriptor, value: Any) -> Any:
    if field.type == _FD.TYPE_BYTES:
        return f"<{len(value)} bytes>"
    if field.type == _FD.TYPE_ENUM and field.enum_type is not None:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if isinstance(value, str):
        # The detector sees the whole value before it is cut: a token cut in half could
        # escape it (a claim's signature segment did, issue 16).
        value = scrub_value(value)
        if len(value) > _MAX_STRING:
            return value[:_MAX_STRING] + "…"
    return value


def _key(key: Any) -> str:
    # Map keys are caller input like values: scrubbed whole (linear-time detector, bounded
    # input), then cut before the log writer or a span sees them (a 48 KB key once stalled the
    # log writer behind the quadratic redaction regex).
    text = scrub_value(str(key))
    return text[:_MAX_STRING] + "…" if len(text) > _MAX_STRING else text


def _value(field: _descriptor.FieldDescriptor, value: Any, depth: int) -> Any:
    if field.type == _FD.TYPE_MESSAGE:
        return describe_message(value, depth + 1)
    return _scalar(field, value)


def describe_message(message: Message, depth: int = 0) -> dict[str, Any]:
    """The message's set, non-sensitive fields as plain JSON-able values.

    Sensitive fields appear only as ``"[REDACTED]"`` so a reader knows they were present.
    """
    if depth > 4:
        return {"...": "truncated"}
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if is_sensitive(field):
            out[field.name] = _REDACTED
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {
                _key(k): _value(value_field, v, depth)
                for k, v in itertools.islice(value.items(), _MAX_ITEMS)
            }
        elif field.is_repeated:
            out[field.name] = [_value(field, v, depth) for v in itertools.islice(value, _MAX_ITEMS)]
        else:
            out[field.name] = _value(field, value, depth)
    return out
