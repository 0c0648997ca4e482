"""Domain errors to gRPC statuses: the one table, and the rich-status builder.

Every error a caller sees is built here: a status code from ``_CODES``, a short message, and
`google.rpc.Status` details with exactly one ``ErrorInfo`` (AIP-193) plus ``BadRequest`` field
violations or ``RetryInfo`` where they apply.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from zumik_secrets.core import errors
from zumik_secrets.core.secret_scrub import scrub_text, scrub_value

#: The ErrorInfo domain of every error this service raises.
ERROR_DOMAIN = "secrets.zumik.dev"

_CODES: dict[type[errors.ZumikError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
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
    """Build the rich status for a domain error."""
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
    if isinstance(error, errors.ResourceExhausted):
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
