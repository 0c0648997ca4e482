"""The domain error tree.

Every failure the service reports to a caller is one of these classes. Each carries a stable
UPPER_SNAKE ``reason`` (the ErrorInfo reason on the wire), a short human message that never holds
a secret, optional string ``metadata`` for the variable parts, and optional field violations.
The mapping from class to gRPC status code lives in one table in ``zumik_secrets.api.status``;
this module knows nothing about gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field: its path (``parent``, ``values[3]``) and what is wrong with it."""

    field: str
    description: str


class ZumikError(Exception):
    """Base class of every error the service reports to a caller.

    Args:
        message: Short, English, actionable, and free of secrets.
        reason: Stable UPPER_SNAKE code for machines (ErrorInfo.reason).
        metadata: Variable parts of the error (names, limits); never secret values.
        violations: For bad input, which fields were wrong and why.
    """

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)


class InvalidArgument(ZumikError):
    """The request is malformed whatever the state of the system."""

    default_reason = "INVALID_ARGUMENT"


class NotFound(ZumikError):
    """The resource does not exist, or belongs to another tenant (indistinguishable on purpose)."""

    default_reason = "NOT_FOUND"


class AlreadyExists(ZumikError):
    """The resource the caller tried to create exists already."""

    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ZumikError):
    """The request is well-formed but the system is not in a state to honour it."""

    default_reason = "FAILED_PRECONDITION"


class Unauthenticated(ZumikError):
    """The caller's credentials (tenant claim) are missing or invalid."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ZumikError):
    """The caller is known but not allowed to do this."""

    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(ZumikError):
    """A rate limit or quota was hit; ``retry_after_seconds`` says when to try again."""

    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float = 1.0,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(ZumikError):
    """A dependency (storage, audit, customer KMS) is down; the caller may retry.

    ``retry_after_seconds`` is sent as a ``RetryInfo`` hint.
    """

    default_reason = "UNAVAILABLE"
    retry_after_seconds: float = 1.0


class Aborted(ZumikError):
    """The operation was cut short and must be restarted from a higher level (a stream whose
    subscriber fell behind must subscribe again and resynchronise)."""

    default_reason = "ABORTED"


class Unimplemented(ZumikError):
    """The RPC exists in the contract but its behaviour has not been built yet."""

    default_reason = "NOT_IMPLEMENTED"


class DecryptionFailed(Exception):
    """A ciphertext or wrapped key did not authenticate. Deliberately says nothing more."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


def resource_not_found(name: str) -> NotFound:
    """The one NOT_FOUND error for a named resource.

    A resource that does not exist and one that belongs to another tenant must be
    indistinguishable (no existence oracle), so every such answer is built here, from the name
    the caller sent and nothing else.
    """
    return NotFound(f"{name} was not found", reason="NOT_FOUND", metadata={"resource": name})
