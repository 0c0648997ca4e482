"""SealService over gRPC: thin conversions around :mod:`zumik_secrets.app.sealed_secrets`.

The resource name comes parsed and checked from the call context (the interceptor checked that
it belongs to the claim's tenant and project, once); a name of another tenant was answered
exactly as a missing resource before the servicer ran.
"""

from __future__ import annotations

import grpc
from zumik.secrets.v1 import common_pb2 as _common
from zumik.secrets.v1 import seal_service_pb2 as _pb
from zumik.secrets.v1 import seal_service_pb2_grpc as _grpc

from zumik_secrets.api.call_context import current_call
from zumik_secrets.api.convert import timestamp
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.sealed_secrets import SealedSecrets
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.names import ProjectName, SecretName
from zumik_secrets.core.sealing import PURPOSE_FINGERPRINT, PURPOSE_SEAL
from zumik_secrets.storage.records import DataKeyRecord, SealedSecretRecord

_PURPOSES_IN: dict[int, str] = {
    _common.DATA_KEY_PURPOSE_SEAL: PURPOSE_SEAL,
    _common.DATA_KEY_PURPOSE_FINGERPRINT: PURPOSE_FINGERPRINT,
}
_PURPOSES_OUT: dict[str, _common.DataKeyPurpose.ValueType] = {
    PURPOSE_SEAL: _common.DATA_KEY_PURPOSE_SEAL,
    PURPOSE_FINGERPRINT: _common.DATA_KEY_PURPOSE_FINGERPRINT,
}
_STATES_OUT = {
    "primary": _common.DATA_KEY_STATE_PRIMARY,
    "enabled": _common.DATA_KEY_STATE_ENABLED,
    "destroyed": _common.DATA_KEY_STATE_DESTROYED,
}


def _actor() -> Actor:
    return current_call().actor


def _secret_name() -> SecretName:
    return current_call().resource_as(SecretName, "name")


def _project() -> ProjectName:
    return current_call().resource_as(ProjectName, "parent")


def _purpose(value: int, *, required: bool = False) -> str:
    if value == _common.DATA_KEY_PURPOSE_UNSPECIFIED and not required:
        return PURPOSE_SEAL
    purpose = _PURPOSES_IN.get(value)
    if purpose is None:
        message = "must be DATA_KEY_PURPOSE_SEAL or DATA_KEY_PURPOSE_FINGERPRINT"
        raise InvalidArgument(
            f"purpose {message}",
            reason="INVALID_PURPOSE",
            metadata={"field": "purpose"},
            violations=[FieldViolation("purpose", message)],
        )
    return purpose


def secret_proto(rec: SealedSecretRecord) -> _pb.Secret:
    """Metadata of a sealed secret (never its ciphertext)."""
    return _pb.Secret(
        name=str(SecretName(rec.tenant_id, rec.project_id, rec.secret_id)),
        display_name=rec.display_name,
        metadata=rec.metadata,
        version=rec.version,
        data_key_version=rec.data_key_version,
        size_bytes=rec.size_bytes,
        create_time=timestamp(rec.created_at),
        update_time=timestamp(rec.updated_at),
    )


def data_key_proto(rec: DataKeyRecord) -> _common.DataKeyVersion:
    """One data-key version (never its key material)."""
    return _common.DataKeyVersion(
        parent=str(ProjectName(rec.tenant_id, rec.project_id)),
        purpose=_PURPOSES_OUT.get(rec.purpose, _common.DATA_KEY_PURPOSE_UNSPECIFIED),
        version=rec.version,
        state=_STATES_OUT.get(rec.state, _common.DATA_KEY_STATE_UNSPECIFIED),
        create_time=timestamp(rec.created_at),
        destroy_time=timestamp(rec.destroyed_at),
        wrapped_by=rec.wrapped_by,
    )


class SealServicer(_grpc.SealServiceServicer):
    """SealService over the sealed-secrets use cases."""

    def __init__(self, secrets: SealedSecrets) -> None:
        """Serve ``secrets``."""
        self._secrets = secrets

    def Seal(self, request: _pb.SealRequest, context: grpc.ServicerContext) -> _pb.SealResponse:
        """Seal a plaintext; return the handle and metadata."""
        parent = _project()
        rec = self._secrets.seal(
            parent, request.display_name, request.plaintext, dict(request.metadata), _actor()
        )
        return _pb.SealResponse(secret=secret_proto(rec))

    def Open(self, request: _pb.OpenRequest, context: grpc.ServicerContext) -> _pb.OpenResponse:
        """Return the plaintext (audited durably before it leaves)."""
        name = _secret_name()
        plaintext, version = self._secrets.open(name, _actor())
        response = _pb.OpenResponse(name=request.name, plaintext=plaintext, version=version)
        del plaintext
        return response

    def GetSecret(
        self, request: _pb.GetSecretRequest, context: grpc.ServicerContext
    ) -> _pb.GetSecretResponse:
        """A secret's metadata."""
        return _pb.GetSecretResponse(secret=secret_proto(self._secrets.get(_secret_name())))

    def ListSecrets(
        self, request: _pb.ListSecretsRequest, context: grpc.ServicerContext
    ) -> _pb.ListSecretsResponse:
        """One page of a project's secrets."""
        page, token = self._secrets.list_secrets(
            _project(), size=request.page_size, token=request.page_token
        )
        return _pb.ListSecretsResponse(
            secrets=[secret_proto(r) for r in page], next_page_token=token
        )

    def UpdateSecret(
        self, request: _pb.UpdateSecretRequest, context: grpc.ServicerContext
    ) -> _pb.UpdateSecretResponse:
        """Seal a new version of the plaintext."""
        rec = self._secrets.update(_secret_name(), request.plaintext, _actor())
        return _pb.UpdateSecretResponse(secret=secret_proto(rec))

    def DeleteSecret(
        self, request: _pb.DeleteSecretRequest, context: grpc.ServicerContext
    ) -> _pb.DeleteSecretResponse:
        """Delete a secret, optionally rotating the seal key afterwards."""
        rotated = self._secrets.delete(_secret_name(), request.rotate_data_key, _actor())
        return _pb.DeleteSecretResponse(
            name=request.name, data_key=data_key_proto(rotated) if rotated else None
        )

    def RotateDataKey(
        self, request: _pb.RotateDataKeyRequest, context: grpc.ServicerContext
    ) -> _pb.RotateDataKeyResponse:
        """Make a new data-key version primary."""
        rec = self._secrets.rotate_data_key(_project(), _purpose(request.purpose), _actor())
        return _pb.RotateDataKeyResponse(data_key=data_key_proto(rec))

    def ListDataKeyVersions(
        self, request: _pb.ListDataKeyVersionsRequest, context: grpc.ServicerContext
    ) -> _pb.ListDataKeyVersionsResponse:
        """One page of data-key versions."""
        page, token = self._secrets.list_data_keys(
            _project(),
            _purpose(request.purpose),
            size=request.page_size,
            token=request.page_token,
        )
        return _pb.ListDataKeyVersionsResponse(
            data_keys=[data_key_proto(r) for r in page], next_page_token=token
        )

    def RewrapSecrets(
        self, request: _pb.RewrapSecretsRequest, context: grpc.ServicerContext
    ) -> _pb.RewrapSecretsResponse:
        """Re-encrypt a batch of secrets under the primary seal key."""
        result = self._secrets.rewrap(
            _project(),
            batch=request.batch_size,
            token=request.page_token,
            actor=_actor(),
        )
        return _pb.RewrapSecretsResponse(
            rewrapped_count=result.rewrapped,
            remaining_count=result.remaining,
            next_page_token=result.next_page_token,
            target_version=result.target_version,
        )

    def DestroyDataKeyVersion(
        self, request: _pb.DestroyDataKeyVersionRequest, context: grpc.ServicerContext
    ) -> _pb.DestroyDataKeyVersionResponse:
        """Crypto-shred one non-primary data-key version."""
        result = self._secrets.destroy_data_key(
            _project(),
            _purpose(request.purpose, required=True),
            request.version,
            request.confirm_version,
            _actor(),
        )
        return _pb.DestroyDataKeyVersionResponse(
            data_key=data_key_proto(result.data_key),
            unrecoverable_secret_count=result.unrecoverable_secrets,
        )
