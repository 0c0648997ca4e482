"""Conversions of signing keys to their published (JWK-like) form."""

from __future__ import annotations

from zumik.secrets.v1 import key_service_pb2 as _pb

from zumik_secrets.api.convert import timestamp
from zumik_secrets.core.encoding import b64url_encode
from zumik_secrets.storage.records import SigningKeyRecord


def signing_key_proto(rec: SigningKeyRecord) -> _pb.SigningKey:
    """The public half of ``rec`` as a JWK (RFC 8037 OKP/Ed25519)."""
    return _pb.SigningKey(
        kid=rec.kid,
        kty="OKP",
        crv="Ed25519",
        x=b64url_encode(rec.public_key),
        alg="EdDSA",
        use="sig",
        status=rec.state,
        not_after=timestamp(rec.retire_after) if rec.state == "retiring" else None,
    )
