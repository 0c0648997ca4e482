"""Reading the rich status of a failed call in tests."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from zumik.secrets.v1 import error_reason_pb2

#: The reasons the contract declares (ErrorReason value names without ERROR_REASON_).
DECLARED_REASONS = frozenset(
    name.removeprefix("ERROR_REASON_")
    for name, _ in error_reason_pb2.ErrorReason.items()
    if name != "ERROR_REASON_UNSPECIFIED"
)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The single ErrorInfo of a failed call.

    Asserts there is exactly one, and that its reason is a value of the contract's ErrorReason
    (so every test that reads a reason from a real server also checks the enum is complete).
    """
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"  # type: ignore[attr-defined]
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"expected one ErrorInfo, got {len(infos)}"
    assert infos[0].reason in DECLARED_REASONS, (
        f"reason {infos[0].reason!r} is not in proto/zumik/secrets/v1/error_reason.proto"
    )
    return infos[0]


def status_bytes(err: grpc.RpcError) -> bytes:
    """The serialized google.rpc.Status of a failed call (to compare two answers exactly)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    return status.SerializeToString(deterministic=True)
