"""Reading the rich status of a failed call in tests."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The single ErrorInfo of a failed call (asserts there is exactly one)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"  # type: ignore[attr-defined]
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"expected one ErrorInfo, got {len(infos)}"
    return infos[0]


def status_bytes(err: grpc.RpcError) -> bytes:
    """The serialized google.rpc.Status of a failed call (to compare two answers exactly)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    return status.SerializeToString(deterministic=True)
