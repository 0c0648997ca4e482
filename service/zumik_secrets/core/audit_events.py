"""The schema of audit events: what AppendEvent accepts, and how service events are kept clean.

Events appended by other services (AppendEvent) are checked strictly and refused when wrong:

* ``action`` must be on :data:`APPENDABLE_ACTIONS` (the one allow-list);
* ``target`` at most 256 characters; ``reason`` empty or ``^[A-Z][A-Z0-9_]{0,63}$``;
* at most 16 attributes, keys ``^[a-z][a-z0-9_.]{0,63}$``, values at most 256 characters;
* no value (target, reason, attribute key or value) may look like a secret
  (:mod:`zumik_secrets.core.secret_patterns`): INVALID_ARGUMENT with reason
  ``SECRET_IN_EVENT`` naming the field, never echoing the value.

Events the service records itself are never refused (an audit trail that drops a denial because
a caller sent a strange resource name would be worse); :func:`sanitize` instead replaces any
secret-looking value by ``[REDACTED]`` and truncates oversized ones.

Resource names are attributed, never redacted: a value that is a whole resource name of the
grammar (:func:`zumik_secrets.core.names.is_resource_name`: built by the service or validated
against the grammar) is recorded as it is, whatever its ids look like (UUID, ULID, hex...), in
service events and as an AppendEvent target. Only free text goes through the detector; the
detector's scoring of a whole name (slashes included) as one random string redacted the target
of every event of a tenant with a UUID-shaped id (issue 16).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.names import is_resource_name
from zumik_secrets.core.secret_patterns import secret_kind

APPENDABLE_ACTIONS: frozenset[str] = frozenset(
    {
        "billing.plan_changed",
        "billing.payment_method_changed",
        "billing.invoice_paid",
        "billing.invoice_failed",
        "billing.subscription_created",
        "billing.subscription_cancelled",
        "billing.credit_granted",
        "billing.refund_issued",
    }
)
"""Event types other services may append with AppendEvent (the only allow-list)."""

MAX_ATTRIBUTES = 16
MAX_VALUE_LENGTH = 256
MAX_TARGET_LENGTH = 256
MAX_SERVICE_TARGET_LENGTH = 1024
ATTRIBUTE_KEY_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
REASON_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
REDACTED = "[REDACTED]"
REASON_SECRET_IN_EVENT = "SECRET_IN_EVENT"  # noqa: S105 - a reason code
REASON_INVALID_EVENT = "INVALID_EVENT"
MAX_FILTER_LENGTH = 2048
"""Longest action, actor or target a QueryEvents filter may name: longer than anything an event
holds (service targets are cut at :data:`MAX_SERVICE_TARGET_LENGTH`, an actor is a SPIFFE ID of
at most 2048 bytes), so a longer filter could match nothing; it is refused before it reaches a
query, a log line or the audit event of the call."""
REASON_VALUE_TOO_LARGE = "VALUE_TOO_LARGE"


def _invalid(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} {problem}",
        reason=REASON_INVALID_EVENT,
        metadata={"field": field},
        violations=[FieldViolation(field, problem)],
    )


def _secret(field: str) -> InvalidArgument:
    # Names the field only: echoing the value would put the secret in an error and a log.
    return InvalidArgument(
        f"{field} looks like a secret (key, token, claim, private key or random string); "
        "audit events must not hold secrets",
        reason=REASON_SECRET_IN_EVENT,
        metadata={"field": field},
        violations=[FieldViolation(field, "looks like a secret")],
    )


def validate_appended(action: str, target: str, reason: str, attributes: Mapping[str, str]) -> None:
    """Check an AppendEvent request's event fields.

    Raises:
        InvalidArgument: reason ``INVALID_EVENT`` (naming the field) for a schema violation,
            ``SECRET_IN_EVENT`` for a value that looks like a secret.
    """
    if action not in APPENDABLE_ACTIONS:
        raise _invalid("action", "is not an event type other services may append")
    if len(target) > MAX_TARGET_LENGTH:
        raise _invalid("target", f"is longer than {MAX_TARGET_LENGTH} characters")
    if not is_resource_name(target) and secret_kind(target) is not None:
        raise _secret("target")
    if reason and not REASON_RE.fullmatch(reason):
        raise _invalid("reason", "must be UPPER_SNAKE (at most 64 characters) or empty")
    if len(attributes) > MAX_ATTRIBUTES:
        raise _invalid("attributes", f"has more than {MAX_ATTRIBUTES} entries")
    for key in sorted(attributes):
        if not ATTRIBUTE_KEY_RE.fullmatch(key):
            raise _invalid("attributes", "keys must match ^[a-z][a-z0-9_.]{0,63}$")
        if secret_kind(key) is not None:  # 64 lower-case hex digits fit the key grammar
            raise _secret("attributes")
        value = attributes[key]
        where = f"attributes[{key}]"
        if len(value) > MAX_VALUE_LENGTH:
            raise _invalid(where, f"is longer than {MAX_VALUE_LENGTH} characters")
        if secret_kind(value) is not None:
            raise _secret(where)


def validate_filter(**fields: str) -> None:
    """Check QueryEvents' text filters (``action``, ``actor``, ``target``) for length.

    Raises:
        InvalidArgument: reason ``VALUE_TOO_LARGE`` naming the first field longer than
            :data:`MAX_FILTER_LENGTH` characters.
    """
    for field, value in fields.items():
        if len(value) > MAX_FILTER_LENGTH:
            problem = f"is longer than {MAX_FILTER_LENGTH} characters"
            raise InvalidArgument(
                f"{field} {problem}; no event holds such a value",
                reason=REASON_VALUE_TOO_LARGE,
                metadata={"field": field},
                violations=[FieldViolation(field, problem)],
            )


_HARMLESS_CACHE_SIZE = 8192
_HARMLESS_CACHE_VALUE = 512
_harmless: dict[str, None] = {}
"""Values already found to look like no secret. Service events repeat the same targets and
attribute values call after call; the scan is the costliest part of recording one. Only
harmless values are kept (a secret-looking value is never stored here), at most
``_HARMLESS_CACHE_SIZE`` of them and each at most ``_HARMLESS_CACHE_VALUE`` characters long
(bounded memory whatever callers send); the cache is emptied when full."""


_good_keys: dict[str, None] = {}
"""Attribute keys already found well-formed and unlike a secret (at most 64 characters each by
the key grammar, at most ``_HARMLESS_CACHE_SIZE`` of them; emptied when full)."""


_SCAN_MARGIN = 256
"""Characters past a field's limit that are still scanned: a secret straddling the cut is seen
whole (and redacted) instead of leaving its first part in the kept text. Nothing beyond is ever
scanned, whatever length the caller sent (the scan is linear, but bounded work per event is
the rule)."""


def _clean(value: str, limit: int) -> tuple[str, bool]:
    value = value[: limit + _SCAN_MARGIN]
    if value not in _harmless:
        # A whole resource name is kept as it is (module docstring); it is remembered like a
        # value that passed the scan, so a repeated target costs one dict look-up.
        if not is_resource_name(value) and secret_kind(value) is not None:
            return REDACTED, True
        if len(value) <= _HARMLESS_CACHE_VALUE:
            if len(_harmless) >= _HARMLESS_CACHE_SIZE:
                _harmless.clear()
            _harmless[value] = None
    if len(value) > limit:
        return value[: limit - 1] + "\u2026", False
    return value, False


def sanitize(
    target: str, reason: str, attributes: Mapping[str, str]
) -> tuple[str, str, dict[str, str]]:
    """Make a service-generated event's free-text fields safe to store.

    Secret-looking values become ``[REDACTED]`` (and the attribute ``redacted`` lists which
    fields were), oversized ones are truncated, and attributes beyond the limits are dropped.

    Returns:
        ``(target, reason, attributes)`` cleaned.
    """
    redacted: list[str] = []
    target, hit = _clean(target, MAX_SERVICE_TARGET_LENGTH)
    if hit:
        redacted.append("target")
    if reason and not REASON_RE.fullmatch(reason):
        reason, hit = _clean(reason, 64)
        if hit:
            redacted.append("reason")
    attrs: dict[str, str] = {}
    for key in sorted(attributes)[:MAX_ATTRIBUTES]:
        if key not in _good_keys:
            if not ATTRIBUTE_KEY_RE.fullmatch(key):
                continue
            if secret_kind(key) is not None:
                redacted.append("attribute key")
                continue
            if len(_good_keys) >= _HARMLESS_CACHE_SIZE:
                _good_keys.clear()
            _good_keys[key] = None
        attrs[key], hit = _clean(attributes[key], MAX_VALUE_LENGTH)
        if hit:
            redacted.append(key)
    if redacted:
        attrs["redacted"] = ",".join(redacted)
    return target, reason, attrs
