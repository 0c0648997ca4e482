"""Domain errors to gRPC statuses: the one table, and the rich-status builder.

Every error a caller sees is built here: a status code from ``_CODES``, a short message, and
`google.rpc.Status` details with exactly one ``ErrorInfo`` (AIP-193) plus ``BadRequest`` field
violations or ``RetryInfo`` where they apply.

The reasons a caller may see are the values of the contract's ``zumik.secrets.v1.ErrorReason``
(``proto/zumik/secrets/v1/error_reason.proto``): ``DECLARED_REASONS`` is read from it, a reason
outside it is logged (tests/unit/test_error_reasons.py makes sure the code sends none).
"""

from __future__ import annotations

import logging
import math
import re

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from zumik.secrets.v1 import error_reason_pb2

from zumik_secrets.core import errors
from zumik_secrets.core.secret_scrub import scrub_text, scrub_value

_LOG = logging.getLogger("zumik.api.status")

#: The ErrorInfo domain of every error this service raises.
ERROR_DOMAIN = "secrets.zumik.dev"

#: Every ErrorInfo reason the contract declares: ErrorReason value names without the prefix.
DECLARED_REASONS: frozenset[str] = frozenset(
    name.removeprefix("ERROR_REASON_")
    for name, _ in error_reason_pb2.ErrorReason.items()
    if name != "ERROR_REASON_UNSPECIFIED"
)
_UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

_CODES: dict[type[errors.ZumikError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def status_code_for(error: errors.ZumikError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (walks the class hierarchy)."""
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: errors.ZumikError) -> grpc.Status:
    """Build the rich status for a domain error.

    A reason the contract does not declare is still sent (clients fall back on the code) but
    logged, so that it gets added to ErrorReason.
    """
    if error.reason not in DECLARED_REASONS:
        shown = error.reason if _UPPER_SNAKE.fullmatch(error.reason) else "(not UPPER_SNAKE)"
        _LOG.warning("error reason %s is not a value of zumik.secrets.v1.ErrorReason", shown)
    code = status_code_for(error)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason,
                domain=ERROR_DOMAIN,
                metadata={k: scrub_value(v) for k, v in error.metadata.items()},
            )
        )
    ]
    if error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=scrub_value(v.field), description=scrub_text(v.description)
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, errors.ResourceExhausted | errors.Unavailable):
        seconds = max(0.0, error.retry_after_seconds)
        whole = math.floor(seconds)
        details.append(
            _pack(
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(
                        seconds=whole, nanos=int((seconds - whole) * 1e9)
                    )
                )
            )
        )
    # Messages never echo input by design; the detector is the last line of defence (the
    # same one as the logs and the audit log), resource names kept.
    proto = status_pb2.Status(
        code=code.value[0], message=scrub_text(error.message), details=details
    )
    return rpc_status.to_status(proto)


def internal_status(correlation_id: str) -> grpc.Status:
    """The status for an unexpected failure: no detail beyond an id to find the log line."""
    proto = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; quote correlation id {correlation_id} to the operator",
        details=[
            _pack(
                error_details_pb2.ErrorInfo(
                    reason="INTERNAL",
                    domain=ERROR_DOMAIN,
                    metadata={"correlation_id": correlation_id},
                )
            )
        ],
    )
    return rpc_status.to_status(proto)
