"""KeyService: API keys, sessions and tenant-claim signing keys."""

from __future__ import annotations

import grpc
from zumik.secrets.v1 import key_service_pb2 as _pb
from zumik.secrets.v1 import key_service_pb2_grpc as _grpc

from zumik_secrets.api.contracts import SERVICE_DESCRIPTORS
from zumik_secrets.api.servicers.signing_keys import signing_key_proto
from zumik_secrets.api.servicers.unimplemented import fill_unimplemented
from zumik_secrets.app.signing_keys import ISSUER, SigningKeys


class KeyServicer(_grpc.KeyServiceServicer):
    """KeyService over gRPC."""

    def __init__(self, claim_keys: SigningKeys) -> None:
        """Serve the given use cases."""
        self._claim_keys = claim_keys

    def ListSigningKeys(
        self, request: _pb.ListSigningKeysRequest, context: grpc.ServicerContext
    ) -> _pb.ListSigningKeysResponse:
        """Publish the public halves of the keys that verify claims now, newest first."""
        records = [rec for rec in self._claim_keys.records() if rec.state in ("active", "retiring")]
        signer = self._claim_keys.signer
        return _pb.ListSigningKeysResponse(
            keys=[signing_key_proto(rec) for rec in reversed(records)],
            audience=signer.audience,
            issuer=ISSUER,
        )

    def RotateSigningKey(
        self, request: _pb.RotateSigningKeyRequest, context: grpc.ServicerContext
    ) -> _pb.RotateSigningKeyResponse:
        """Start signing with a new key; the previous one verifies until its claims expire."""
        new, previous = self._claim_keys.rotate()
        return _pb.RotateSigningKeyResponse(
            key=signing_key_proto(new),
            previous_key=signing_key_proto(previous) if previous is not None else None,
        )


fill_unimplemented(KeyServicer, SERVICE_DESCRIPTORS[0])
