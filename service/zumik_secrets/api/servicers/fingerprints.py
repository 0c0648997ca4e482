"""FingerprintService over gRPC: thin conversions around :mod:`zumik_secrets.app.fingerprints`
and :mod:`zumik_secrets.app.handles`.

The resource name comes parsed and checked from the verified call context (the interceptor
checked its tenant and project once). Handles belong to the project of the claim that minted
them: a project claim resolves only its own project's handles; another project's handle is
answered exactly as a missing one.
"""

from __future__ import annotations

import grpc
from zumik.secrets.v1 import fingerprint_service_pb2 as _pb
from zumik.secrets.v1 import fingerprint_service_pb2_grpc as _grpc

from zumik_secrets.api.call_context import current_call
from zumik_secrets.api.convert import read_duration, timestamp
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.fingerprints import MAX_OVERLAP, Fingerprints, MatchResult
from zumik_secrets.app.handles import Handles
from zumik_secrets.core.names import HandleName, ProjectName, TenantName
from zumik_secrets.storage.records import HandleRecord

_RESULTS = {
    MatchResult.MATCH: _pb.MATCH_RESULT_MATCH,
    MatchResult.NO_MATCH: _pb.MATCH_RESULT_NO_MATCH,
    MatchResult.KEY_DESTROYED: _pb.MATCH_RESULT_KEY_DESTROYED,
}


def _actor() -> Actor:
    return current_call().actor


def _project() -> ProjectName:
    return current_call().resource_as(ProjectName, "parent")


def handle_proto(rec: HandleRecord) -> _pb.Handle:
    """A handle and its reference."""
    return _pb.Handle(
        name=str(HandleName(rec.tenant_id, rec.handle)),
        handle=rec.handle,
        kind=rec.kind,
        reference=rec.reference,
        create_time=timestamp(rec.created_at),
    )


class FingerprintServicer(_grpc.FingerprintServiceServicer):
    """FingerprintService over the fingerprint and handle use cases."""

    def __init__(self, fingerprints: Fingerprints, handles: Handles) -> None:
        """Serve ``fingerprints`` and ``handles``."""
        self._fingerprints = fingerprints
        self._handles = handles

    def Fingerprint(
        self, request: _pb.FingerprintRequest, context: grpc.ServicerContext
    ) -> _pb.FingerprintResponse:
        """Fingerprint a batch of values."""
        # One copy of the values out of the message: the container makes a new bytes object on
        # every access, and the use case reads them twice (limits, then HMAC).
        result = self._fingerprints.fingerprint(_project(), request.namespace, list(request.values))
        return _pb.FingerprintResponse(
            fingerprints=result.fingerprints,
            previous_fingerprints=result.previous_fingerprints,
            key_version=result.key_version,
        )

    def MatchFingerprint(
        self, request: _pb.MatchFingerprintRequest, context: grpc.ServicerContext
    ) -> _pb.MatchFingerprintResponse:
        """Check a value against a fingerprint."""
        result = self._fingerprints.match(
            _project(), request.namespace, request.value, request.fingerprint
        )
        return _pb.MatchFingerprintResponse(result=_RESULTS[result])

    def RotateFingerprintKey(
        self, request: _pb.RotateFingerprintKeyRequest, context: grpc.ServicerContext
    ) -> _pb.RotateFingerprintKeyResponse:
        """Make a new fingerprint key version primary."""
        parent = _project()
        overlap = read_duration(request.overlap, "overlap", maximum=MAX_OVERLAP)
        result = self._fingerprints.rotate(parent, overlap, _actor())
        return _pb.RotateFingerprintKeyResponse(
            key_version=result.key_version,
            previous_key_version=result.previous_key_version,
            linkage_break_time=timestamp(result.linkage_break_time),
        )

    def MintHandle(
        self, request: _pb.MintHandleRequest, context: grpc.ServicerContext
    ) -> _pb.MintHandleResponse:
        """Mint a random handle for a reference."""
        call = current_call()
        rec = self._handles.mint(
            call.resource_as(TenantName, "parent"),
            request.kind,
            request.reference,
            call.actor,
            project=(call.project_id or "") if call.claim is not None else "",
        )
        return _pb.MintHandleResponse(handle=handle_proto(rec))

    def ResolveHandle(
        self, request: _pb.ResolveHandleRequest, context: grpc.ServicerContext
    ) -> _pb.ResolveHandleResponse:
        """Resolve a handle to its reference."""
        call = current_call()
        rec = self._handles.resolve(
            call.resource_as(HandleName, "name"),
            project=call.project_id if call.claim is not None else None,
        )
        return _pb.ResolveHandleResponse(handle=handle_proto(rec))
