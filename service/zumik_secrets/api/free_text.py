"""Refuse secrets sent in fields that are not meant for them (issue 16).

A caller that puts an API key in a display name, a token in a session's user subject or a
private key in a handle reference would have it stored in a plain column, echoed in the
richer telemetry mode, and copied into audit events. Every request passes
:func:`refuse_secret_fields` after authorization: each non-sensitive string (and map key and
value) that the one secret detector flags (:func:`zumik_secrets.core.secret_scrub.flagged`,
the same detector as the logs and the audit log) makes the call fail with INVALID_ARGUMENT,
reason ``SECRET_IN_FIELD``, naming the field and never echoing the value. Fields marked
``(sensitive)`` are where secrets belong and are not looked at.

Not checked: resource names of the grammar (attributed as they are), page tokens (the
service's own), ``MatchFingerprintRequest.fingerprint`` (an HMAC output the service issued),
the customer key's CA certificate (public; only a private-key block in it is refused), and
AppendEvent (its schema check refuses with ``SECRET_IN_EVENT``). Strings shorter than
:data:`MIN_CHECKED` cannot hold any format the detector knows and are skipped without a scan.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message

from zumik_secrets.api.contracts import is_sensitive
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.secret_scrub import flagged

REASON_SECRET_IN_FIELD = "SECRET_IN_FIELD"  # noqa: S105 - a reason code
MIN_CHECKED = 24
_MAX_DEPTH = 4

_NOT_CHECKED = frozenset(
    {
        "zumik.secrets.v1.MatchFingerprintRequest.fingerprint",
        "zumik.secrets.v1.AppendEventRequest.target",
        "zumik.secrets.v1.AppendEventRequest.attributes",
        "zumik.secrets.v1.AppendEventRequest.reason",
        "zumik.secrets.v1.AppendEventRequest.action",
    }
)
_PRIVATE_KEY_ONLY = frozenset({"zumik.secrets.v1.ConfigureCustomerKeyRequest.ca_certificate_pem"})

_FD = _descriptor.FieldDescriptor


@functools.cache
def _skipped(field: _descriptor.FieldDescriptor) -> bool:
    """Whether ``field`` never carries caller text worth checking."""
    return (
        is_sensitive(field)
        or field.full_name in _NOT_CHECKED
        or field.name == "page_token"
        or field.type not in (_FD.TYPE_STRING, _FD.TYPE_MESSAGE)
    )


def _strings(message: Message, prefix: str, depth: int) -> Iterator[tuple[str, str, str]]:
    """``(path, full field name, value)`` of every caller string in ``message``."""
    if depth > _MAX_DEPTH:
        return
    # ListFields (set fields only, in C) keeps this cheap on the hot paths: most requests
    # set two or three fields.
    for field, value in message.ListFields():
        if _skipped(field):
            continue
        path = f"{prefix}{field.name}"
        if field.type == _FD.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                value_field = entry.fields_by_name["value"]
                for key, item in value.items():
                    if isinstance(key, str):
                        yield f"{path}[key]", field.full_name, key
                    if value_field.type == _FD.TYPE_STRING and not is_sensitive(value_field):
                        yield f"{path}[{key}]", field.full_name, item
                    elif isinstance(item, Message):
                        yield from _strings(item, f"{path}[{key}].", depth + 1)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    yield from _strings(item, f"{path}[{index}].", depth + 1)
            else:
                yield from _strings(value, f"{path}.", depth + 1)
        elif field.is_repeated:
            for index, item in enumerate(value):
                if len(item) >= MIN_CHECKED:
                    yield f"{path}[{index}]", field.full_name, item
        elif len(value) >= MIN_CHECKED:
            yield path, field.full_name, value


def _refuse(path: str) -> InvalidArgument:
    return InvalidArgument(
        f"{path} looks like a secret (key, token, claim, private key or random string); "
        "send secrets only in the fields meant for them",
        reason=REASON_SECRET_IN_FIELD,
        metadata={"field": path},
        violations=[FieldViolation(path, "looks like a secret")],
    )


def refuse_secret_fields(request: Message) -> None:
    """Check every non-sensitive caller string of ``request`` with the secret detector.

    Raises:
        InvalidArgument: reason ``SECRET_IN_FIELD`` naming the first flagged field.
    """
    for path, full_name, value in _strings(request, "", 0):
        if len(value) < MIN_CHECKED:
            continue
        if full_name in _PRIVATE_KEY_ONLY:
            if "PRIVATE KEY" in value:
                raise _refuse(path)
            continue
        if flagged(value):
            raise _refuse(path)
