"""Typed errors: one exception class per gRPC status code and per ErrorInfo reason.

Every failed call on a channel from ``connect()`` raises a :class:`ZumikError`. Its class says
both what kind of failure it is (the status code: :class:`NotFound`, :class:`PermissionDenied`,
...) and, when the server sent one, the stable reason (``ErrorInfo.reason``): a call refused with
``UNAUTHENTICATED`` / ``CLAIM_EXPIRED`` raises an instance of both :class:`Unauthenticated` and
``errors.ClaimExpired``, so either ``except`` clause catches it.

The reasons are not copied by hand: they are the values of the contracts' ``ErrorReason`` enum
(``proto/zumik/secrets/v1/error_reason.proto``, value ``ERROR_REASON_<REASON>`` for the wire
string ``<REASON>``), read from the generated module when this module is imported. Each reason
``SOME_REASON`` gets the class ``errors.SomeReason`` (``errors.reason_class("SOME_REASON")``);
a reason spelled like a status code (``NOT_FOUND``, ``UNAVAILABLE``, ...) is that code's class.
``python -m zumik_secrets_client`` prints the table.

Every error is also a ``grpc.RpcError`` with the usual ``code()``, ``details()`` and
``trailing_metadata()``, so code written against plain grpcio keeps working.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Final

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from zumik.secrets.v1 import error_reason_pb2

__all__ = [
    "ERROR_DOMAIN",
    "REASONS",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ClaimProviderError",
    "CredentialRejected",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ReasonError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "ZumikError",
    "class_for",
    "from_rpc_error",
    "reason_class",
    "reason_table",
]

#: The ErrorInfo domain of the errors the Zumik Secrets server raises.
ERROR_DOMAIN: Final = "secrets.zumik.dev"

_ENUM_PREFIX: Final = "ERROR_REASON_"


@dataclasses.dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field (from ``google.rpc.BadRequest``): its path and what is wrong."""

    field: str
    description: str


class ZumikError(grpc.RpcError):
    """A failed call: status code, message, and the server's ErrorInfo, RetryInfo, BadRequest.

    Attributes:
        message: the status message (short, never holds a secret).
        reason: the stable UPPER_SNAKE ``ErrorInfo.reason``, or None if the server sent none
            (for example a deadline that expired in the client).
        domain: the ``ErrorInfo.domain`` (``secrets.zumik.dev`` for the server's own errors).
        metadata: the ``ErrorInfo.metadata`` (names, limits; never secret values).
        retry_after: seconds to wait before trying again (``RetryInfo.retry_delay``), or None.
        field_violations: the ``BadRequest`` field violations, for bad input.
    """

    #: The status code of the class; None on the bases that span several codes.
    status_code: ClassVar[grpc.StatusCode | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        trailing_metadata: Any = None,
        debug_error_string: str | None = None,
    ) -> None:
        """Create the error; ``from_rpc_error()`` is how a failed call becomes one."""
        super().__init__(message)
        resolved = code if code is not None else self.status_code
        self._code: grpc.StatusCode = resolved if resolved is not None else grpc.StatusCode.UNKNOWN
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        self.retry_after = retry_after
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self._trailing_metadata = trailing_metadata
        self._debug_error_string = debug_error_string

    # The grpc.Call surface of a failed call, as grpcio's own RpcError offers it.
    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The status message (same as ``.message``)."""
        return self.message

    def trailing_metadata(self) -> Any:
        """The trailing metadata of the failed call, as grpc returned it (None if unknown)."""
        return self._trailing_metadata

    def initial_metadata(self) -> Any:
        """Initial metadata is not kept for failed calls: always None."""
        return None

    def debug_error_string(self) -> str | None:
        """grpc's debug string for the failure, when there was one."""
        return self._debug_error_string

    # The grpc.Future surface of a finished, failed call: grpc's interceptor machinery (and
    # interceptors stacked on a channel from connect()) treat a raised RpcError as the outcome.
    def result(self, timeout: float | None = None) -> Any:
        """Raise this error, as the outcome of a failed call does."""
        raise self

    def exception(self, timeout: float | None = None) -> ZumikError:
        """This error."""
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        """The traceback this error was raised with."""
        return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(self)`` at once: the call is over."""
        fn(self)

    def done(self) -> bool:
        """True: the call is over."""
        return True

    def running(self) -> bool:
        """False: the call is over."""
        return False

    def cancelled(self) -> bool:
        """Whether the call ended as CANCELLED."""
        return self._code is grpc.StatusCode.CANCELLED

    def cancel(self) -> bool:
        """False: a finished call cannot be cancelled."""
        return False

    def is_active(self) -> bool:
        """False: the call is over."""
        return False

    def time_remaining(self) -> float | None:
        """None: the call is over."""
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """False: the call is over (grpc's contract for a finished call)."""
        return False

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self._code.name}: {self.message}{reason}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(code={self._code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, metadata={dict(self.metadata)!r})"
        )


class ReasonError(ZumikError):
    """Base of the per-reason classes; ``REASON`` is the wire string the class stands for."""

    REASON: ClassVar[str] = ""


# ---------------------------------------------------------------- one class per status code


class Cancelled(ZumikError):
    """CANCELLED: the call was cancelled (usually by the caller)."""

    status_code = grpc.StatusCode.CANCELLED


class Unknown(ZumikError):
    """UNKNOWN: an error without a known status (for example a broken proxy)."""

    status_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ZumikError):
    """INVALID_ARGUMENT: the request is malformed; see ``field_violations``."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(ZumikError):
    """DEADLINE_EXCEEDED: the call's deadline passed before an answer arrived."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ZumikError):
    """NOT_FOUND: no such resource, or it belongs to another tenant (the same answer)."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ZumikError):
    """ALREADY_EXISTS: the resource to create exists already."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ZumikError):
    """PERMISSION_DENIED: the caller's identity or claim may not do this."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ZumikError):
    """RESOURCE_EXHAUSTED: a rate limit or quota; wait ``retry_after`` seconds."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ZumikError):
    """FAILED_PRECONDITION: well-formed, but the system is not in a state to honour it."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ZumikError):
    """ABORTED: a concurrency conflict; retry the whole read-modify-write."""

    status_code = grpc.StatusCode.ABORTED


class OutOfRange(ZumikError):
    """OUT_OF_RANGE: a position or range past the valid one."""

    status_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(ZumikError):
    """UNIMPLEMENTED: the server does not implement this method."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ZumikError):
    """INTERNAL: a server bug; ``metadata["correlation_id"]`` finds its log line."""

    status_code = grpc.StatusCode.INTERNAL


class Unavailable(ZumikError):
    """UNAVAILABLE: the server or one of its dependencies is down; try again later."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ZumikError):
    """DATA_LOSS: unrecoverable data loss or corruption."""

    status_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ZumikError):
    """UNAUTHENTICATED: the tenant claim is missing, expired or invalid."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


_CODE_CLASSES: Final[Mapping[grpc.StatusCode, type[ZumikError]]] = MappingProxyType(
    {
        cls.status_code: cls
        for cls in (
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        )
        if cls.status_code is not None
    }
)

# ---------------------------------------------------------------- client-side errors


class CredentialRejected(Unauthenticated):
    """A claim provider's API key or session did not verify (revoked, expired, unknown, ...).

    ``verify_result`` is the ``VerifyResult`` name the server answered, for example
    ``VERIFY_RESULT_REVOKED``.
    """

    def __init__(self, result: str) -> None:
        """Create the error for the VerifyResult name ``result``."""
        super().__init__(
            f"the credential behind the claim provider did not verify: {result}",
            metadata={"verify_result": result},
        )
        self.verify_result = result


class ClaimProviderError(Unauthenticated):
    """A claim provider raised something other than a ZumikError; the cause is chained.

    Its message names the exception type only, never its text (which could hold a credential).
    """


# ---------------------------------------------------------------- one class per reason


def _class_name(reason: str) -> str:
    name = "".join(part.capitalize() for part in reason.split("_"))
    if hasattr(builtins, name):  # NOT_IMPLEMENTED must not shadow NotImplemented
        name += "Error"
    return name


def _contract_reasons() -> tuple[str, ...]:
    """The reasons of the contracts' ErrorReason enum, in enum order, without UNSPECIFIED."""
    enum = error_reason_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"]
    reasons: list[str] = []
    for value in enum.values:
        if value.number == 0:
            continue
        if not value.name.startswith(_ENUM_PREFIX):
            raise RuntimeError(f"ErrorReason value {value.name} lacks the {_ENUM_PREFIX} prefix")
        reasons.append(value.name.removeprefix(_ENUM_PREFIX))
    return tuple(reasons)


#: Every reason the contracts declare (the wire strings), in enum order.
REASONS: Final[tuple[str, ...]] = _contract_reasons()

_REASON_RE: Final = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")


def _build_reason_classes() -> dict[str, type[ZumikError]]:
    by_code_name = {code.name: cls for code, cls in _CODE_CLASSES.items()}
    # The server's generic reasons spelled differently from their status code.
    by_code_name["NOT_IMPLEMENTED"] = Unimplemented
    classes: dict[str, type[ZumikError]] = {}
    for reason in REASONS:
        if not _REASON_RE.fullmatch(reason):
            raise RuntimeError(f"ErrorReason value {reason!r} is not UPPER_SNAKE")
        code_class = by_code_name.get(reason)
        if code_class is not None:
            classes[reason] = code_class
            continue
        cls = type(
            _class_name(reason),
            (ReasonError,),
            {
                "REASON": reason,
                "__module__": __name__,
                "__doc__": f"The server answered with ErrorInfo reason {reason}.",
            },
        )
        classes[reason] = cls
    return classes


_REASON_CLASSES: Final[Mapping[str, type[ZumikError]]] = MappingProxyType(_build_reason_classes())
_BY_NAME: Final[Mapping[str, type[ZumikError]]] = MappingProxyType(
    {cls.__name__: cls for cls in _REASON_CLASSES.values() if issubclass(cls, ReasonError)}
)
_COMBINED: dict[tuple[type[ZumikError], type[ZumikError]], type[ZumikError]] = {}


def __getattr__(name: str) -> type[ZumikError]:
    """``errors.ClaimExpired`` and the other per-reason classes (made from the contracts)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_BY_NAME})


def reason_class(reason: str) -> type[ZumikError]:
    """Return the class that stands for ``reason`` (for ``except`` and ``issubclass``).

    Raises:
        KeyError: if the contracts declare no such reason.
    """
    return _REASON_CLASSES[reason]


def class_for(code: grpc.StatusCode, reason: str | None) -> type[ZumikError]:
    """Return the class raised for a status code and reason: a subclass of both classes.

    A reason the contracts do not (yet) declare gives the code's class; the reason is still on
    the raised error's ``.reason``.
    """
    code_class = _CODE_CLASSES.get(code, Unknown)
    reason_cls = _REASON_CLASSES.get(reason) if reason else None
    if reason_cls is None or issubclass(code_class, reason_cls):
        return code_class
    key = (code_class, reason_cls)
    combined = _COMBINED.get(key)
    if combined is None:
        combined = type(
            reason_cls.__name__,
            (reason_cls, code_class),
            {"__module__": __name__, "__doc__": reason_cls.__doc__},
        )
        combined.__qualname__ = f"{reason_cls.__name__}[{code_class.__name__}]"
        combined = _COMBINED.setdefault(key, combined)
    return combined


# The stubs type the descriptors as a union the Any.Is() stub does not accept.
_ERROR_INFO: Any = error_details_pb2.ErrorInfo.DESCRIPTOR
_RETRY_INFO: Any = error_details_pb2.RetryInfo.DESCRIPTOR
_BAD_REQUEST: Any = error_details_pb2.BadRequest.DESCRIPTOR


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        # Code or message differ from the status proto: something rewrote the status on the
        # way; trust neither the details nor the reason.
        return None
    return status


def _debug_string(error: grpc.RpcError) -> str | None:
    """grpc's debug string of a failed call, without waiting for one a cancelled call lacks.

    A stream cancelled by its caller (``call.cancel()``) has its code, details and trailing
    metadata at once, but grpc's ``debug_error_string()`` waits until the transport reports the
    call's end, which can take as long as the connection takes to fail (15-30 s when the server
    is paused): converting the error would block the thread that cancelled or iterates it.
    """
    cancelled = getattr(error, "cancelled", None)
    if callable(cancelled) and cancelled() is True:
        return None
    debug_method = getattr(error, "debug_error_string", None)
    debug: str | None = debug_method() if callable(debug_method) else None
    return debug


def from_rpc_error(error: grpc.RpcError) -> ZumikError:
    """Turn a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``) into its class.

    A ZumikError is returned as is. The rich status (``grpc-status-details-bin``) is decoded
    with grpcio-status; its ErrorInfo, RetryInfo and BadRequest fill the attributes.
    """
    if isinstance(error, ZumikError):
        return error
    code_method = getattr(error, "code", None)
    code = code_method() if callable(code_method) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_method = getattr(error, "details", None)
    message = (details_method() if callable(details_method) else None) or ""
    trailing_method = getattr(error, "trailing_metadata", None)
    trailing = trailing_method() if callable(trailing_method) else None
    debug = _debug_string(error)

    reason = domain = None
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    violations: list[FieldViolation] = []
    status = _rich_status(error) if callable(trailing_method) else None
    if status is not None:
        for detail in status.details:
            if detail.Is(_ERROR_INFO) and reason is None:
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason or None, info.domain, dict(info.metadata)
            elif detail.Is(_RETRY_INFO):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            elif detail.Is(_BAD_REQUEST):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
    cls = class_for(code, reason)
    typed = cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        retry_after=retry_after,
        field_violations=violations,
        trailing_metadata=trailing,
        debug_error_string=debug,
    )
    return typed


def reason_table() -> str:
    """One line per contract reason: the wire string and its class."""
    rows = [f"{reason:<32} errors.{reason_class(reason).__name__}" for reason in REASONS]
    return "\n".join(rows)
