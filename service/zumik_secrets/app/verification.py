"""What API-key and session verification share: result codes, scope checks, the failure limiter.

A failed verification is an ordinary answer (a :class:`VerifyResult`), never an exception, so a
gateway can branch on it. Failures are charged to token buckets per calling identity and per
credential id; when a bucket is empty the caller gets RESOURCE_EXHAUSTED (reason
``VERIFY_RATE_LIMITED``, with a retry delay) instead of the answer, so the service cannot be
used as a fast oracle. Valid verifications are never charged nor limited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry, AuditRecorder, CleanFields, clean_fields, record
from zumik_secrets.app.rate_limit import BucketSpec, FailureLimiter
from zumik_secrets.core.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    ZumikError,
)
from zumik_secrets.core.names import validate_scope

REASON_RATE_LIMITED = "VERIFY_RATE_LIMITED"
MAX_REQUIRED_SCOPES = 32

DEFAULT_IDENTITY_FAILURES = BucketSpec(rate=50.0, burst=100.0)
"""Failed verifications a calling identity may cause: 50 per second, bursts of 100."""
DEFAULT_CREDENTIAL_FAILURES = BucketSpec(rate=5.0, burst=10.0)
"""Failed verifications one credential id may cause: 5 per second, bursts of 10."""


class VerifyResult(StrEnum):
    """Outcome of a verification (mirrors the wire enum ``VerifyResult``)."""

    VALID = "VALID"
    MALFORMED = "MALFORMED"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"


CHARGED_RESULTS = frozenset(
    {VerifyResult.MALFORMED, VerifyResult.NOT_FOUND, VerifyResult.EXPIRED, VerifyResult.REVOKED}
)
"""Results charged to the failure buckets (a missing scope is a route's choice, not a probe)."""


_RENDERED_LIMIT = 4096
_Rendered = tuple[str, str | None, str, VerifyResult, str]
_rendered: dict[_Rendered, tuple[str, str, Mapping[str, str], CleanFields]] = {}
"""Verification events rendered once per (action, tenant, stored credential's name, result,
limiter reason): everything but the caller's identity, subject and trace, which each event
fills in. Only targets the service built from a stored record are kept (bounded by the
credentials that exist, and at most ``_RENDERED_LIMIT``; emptied when full); a target taken from
the presented credential (not found, malformed) is rendered and scanned per event."""


def record_verification(
    recorder: AuditRecorder,
    actor: Actor,
    action: str,
    tenant_id: str | None,
    target: str,
    result: VerifyResult,
    *,
    guard: FailureGuard | None = None,
    credential_id: str | None = None,
    stored: bool = False,
) -> None:
    """Record a verification's (non-durable) event: ``success`` for a valid credential,
    ``failure`` otherwise.

    Args:
        recorder, actor, action, tenant_id, target, result: The event.
        guard: Charges a failure of :data:`CHARGED_RESULTS` (kind: ``action``'s first part)
            to the caller and ``credential_id``; when it refuses, the event is ``denied`` with
            the limiter's reason.
        credential_id: The presented credential's id, when it had one.
        stored: ``target`` is the name of a stored credential (built by the service, not taken
            from the request): the event's fixed parts are rendered and cleaned once.

    Raises:
        ResourceExhausted: reason ``VERIFY_RATE_LIMITED`` (from ``guard``).
    """
    if guard is not None and result in CHARGED_RESULTS:
        try:
            guard.charge(action.partition(".")[0], actor.identity, credential_id)
        except ZumikError as refused:
            _record(recorder, actor, (action, tenant_id, target, result, refused.reason), stored)
            raise
    _record(recorder, actor, (action, tenant_id, target, result, ""), stored)


def _record(recorder: AuditRecorder, actor: Actor, key: _Rendered, stored: bool) -> None:
    action, tenant_id, target, result, limited = key
    fixed = _rendered.get(key) if stored else None
    if fixed is None:
        outcome = "denied" if limited else "success" if result is VerifyResult.VALID else "failure"
        reason = limited or result.value
        attrs: Mapping[str, str] = MappingProxyType({"result": result.value})
        fixed = (outcome, reason, attrs, clean_fields(target, reason, attrs))
        if stored:
            if len(_rendered) >= _RENDERED_LIMIT:
                _rendered.clear()
            _rendered[key] = fixed
    outcome, reason, attributes, clean = fixed
    entry = AuditEntry(
        tenant_id,
        actor.identity,
        actor.subject,
        action,
        target,
        outcome,
        reason,
        actor.trace_id,
        attributes,
        clean,
    )
    record(recorder, entry, durable=False)


def field_required(field: str) -> InvalidArgument:
    """The error for an empty required request field (reason ``FIELD_REQUIRED``)."""
    return InvalidArgument(
        f"{field} is required",
        reason="FIELD_REQUIRED",
        metadata={"field": field},
        violations=[FieldViolation(field, "is required")],
    )


def validate_scopes(
    values: Sequence[str], field: str, *, maximum: int, required: bool
) -> tuple[str, ...]:
    """Validate a list of scopes; returns them de-duplicated, in first-seen order.

    Raises:
        InvalidArgument: reason ``FIELD_REQUIRED`` (empty but required), ``TOO_MANY_SCOPES``
            or ``INVALID_SCOPE``.
    """
    if required and not values:
        raise field_required(field)
    if len(values) > maximum:
        raise InvalidArgument(
            f"{field} holds at most {maximum} scopes",
            reason="TOO_MANY_SCOPES",
            metadata={"field": field, "maximum": str(maximum)},
            violations=[FieldViolation(field, f"at most {maximum} scopes")],
        )
    out = [validate_scope(v, field=f"{field}[{i}]") for i, v in enumerate(values)]
    return tuple(dict.fromkeys(out))


class FailureGuard:
    """Charges failed verifications to per-identity and per-credential buckets."""

    def __init__(
        self,
        identity: BucketSpec = DEFAULT_IDENTITY_FAILURES,
        credential: BucketSpec = DEFAULT_CREDENTIAL_FAILURES,
    ) -> None:
        """Create the guard with the given bucket sizes."""
        self.identities = FailureLimiter(identity)
        self.credentials = FailureLimiter(credential)

    def charge(self, kind: str, identity: str, credential_id: str | None) -> None:
        """Charge one failure of ``kind`` (``api_key`` or ``session``).

        Raises:
            ResourceExhausted: reason ``VERIFY_RATE_LIMITED`` with the retry delay, when the
                identity's or the credential's bucket is empty.
        """
        wait = self.identities.charge(f"{kind}|{identity}")
        if credential_id is not None:
            wait = max(wait, self.credentials.charge(f"{kind}|{credential_id}"))
        if wait > 0.0:
            raise ResourceExhausted(
                "too many failed verifications; retry later",
                retry_after_seconds=round(wait, 3),
                reason=REASON_RATE_LIMITED,
                metadata={"limit": "failed_verifications"},
            )
