"""The contracts declare what the server relies on: guards on every RPC, secrecy on every secret."""

from __future__ import annotations

import re

import pytest

from zumik_secrets.api.contracts import (
    SERVICE_DESCRIPTORS,
    all_fields,
    is_sensitive,
    method_guards,
    sensitive_fields,
)

# Field names that suggest secret material...
_SECRETISH = re.compile(r"(key|token|secret|plaintext|claim|password|credential)", re.IGNORECASE)

# ...but are not secret: each entry says why.
_NOT_SECRET = {
    "zumik.secrets.v1.VerifyApiKeyResponse.api_key": "the key's resource name, not the key",
    "zumik.secrets.v1.CreateApiKeyResponse.api_key": "metadata message, never the raw key",
    "zumik.secrets.v1.GetApiKeyResponse.api_key": "metadata message",
    "zumik.secrets.v1.RevokeApiKeyResponse.api_key": "metadata message",
    "zumik.secrets.v1.RotateApiKeyResponse.api_key": "metadata message",
    "zumik.secrets.v1.RotateApiKeyResponse.previous_api_key": "metadata message",
    "zumik.secrets.v1.ListApiKeysResponse.api_keys": "metadata messages",
    "zumik.secrets.v1.ApiKey.masked_key": "public prefix only, safe to show",
    "zumik.secrets.v1.CredentialChanged.credential_id": "a key or session handle (the claim's cid)",
    "zumik.secrets.v1.CredentialChanged.credential_type": "an enum: API key or session",
    "zumik.secrets.v1.WatchRevocationsResponse.credential": "ids and times, never a credential",
    "zumik.secrets.v1.VerifyApiKeyResponse.claim_expire_time": "a timestamp",
    "zumik.secrets.v1.VerifySessionResponse.claim_expire_time": "a timestamp",
    "zumik.secrets.v1.ListSigningKeysResponse.keys": "public keys",
    "zumik.secrets.v1.RotateSigningKeyResponse.key": "public key",
    "zumik.secrets.v1.RotateSigningKeyResponse.previous_key": "public key",
    "zumik.secrets.v1.ListCheckpointKeysResponse.keys": "public keys",
    "zumik.secrets.v1.FingerprintResponse.key_version": "a version number",
    "zumik.secrets.v1.RotateFingerprintKeyRequest.overlap": "a duration",
    "zumik.secrets.v1.RotateFingerprintKeyResponse.key_version": "a version number",
    "zumik.secrets.v1.RotateFingerprintKeyResponse.previous_key_version": "a version number",
    "zumik.secrets.v1.Secret.data_key_version": "a version number",
    "zumik.secrets.v1.DeleteSecretRequest.rotate_data_key": "a flag",
    "zumik.secrets.v1.DeleteSecretResponse.data_key": "data-key metadata, never material",
    "zumik.secrets.v1.RotateDataKeyResponse.data_key": "data-key metadata",
    "zumik.secrets.v1.DestroyDataKeyVersionResponse.data_key": "data-key metadata",
    "zumik.secrets.v1.ListDataKeyVersionsResponse.data_keys": "data-key metadata",
    "zumik.secrets.v1.ListSecretsResponse.secrets": "secret metadata, never plaintext",
    "zumik.secrets.v1.SealResponse.secret": "secret metadata",
    "zumik.secrets.v1.GetSecretResponse.secret": "secret metadata",
    "zumik.secrets.v1.UpdateSecretResponse.secret": "secret metadata",
    "zumik.secrets.v1.DestroyDataKeyVersionResponse.unrecoverable_secret_count": "a count",
    "zumik.secrets.v1.ConfigureCustomerKeyRequest.key_name": "name of a key in the customer KMS",
    "zumik.secrets.v1.TenantSettings.customer_key_configured": "a flag",
    "zumik.secrets.v1.TenantSettings.revoked_key_retention": "a duration",
}


def test_every_method_has_a_guard() -> None:
    guards = method_guards()
    names = {f"/{s.full_name}/{m.name}" for s in SERVICE_DESCRIPTORS for m in s.methods}
    assert names == set(guards)
    assert len(guards) >= 40


def test_tenant_scoped_methods_name_a_scope_and_field() -> None:
    for guard in method_guards().values():
        if guard.tenant_scoped:
            assert guard.scope, guard.full_method
            assert guard.resource_field in {"name", "parent"}, guard.full_method


@pytest.mark.parametrize("field", list(all_fields()), ids=lambda f: f.full_name)
def test_secret_looking_fields_are_marked_sensitive(field: object) -> None:
    full_name = field.full_name  # type: ignore[attr-defined]
    if not _SECRETISH.search(field.name):  # type: ignore[attr-defined]
        return
    if field.name in ("page_token", "next_page_token"):  # type: ignore[attr-defined]
        return  # AIP-158 cursors: opaque, but carry no secret
    if field.containing_type.GetOptions().map_entry and field.name == "key":  # type: ignore[attr-defined]
        return  # the key of a map entry (metadata/attribute names)
    if full_name in _NOT_SECRET:
        assert not is_sensitive(field), f"{full_name} is listed as not secret but marked sensitive"  # type: ignore[arg-type]
        return
    assert is_sensitive(field), (  # type: ignore[arg-type]
        f"{full_name} looks like it carries a secret: add [(sensitive) = true] or list it in "
        "_NOT_SECRET with the reason"
    )


def test_the_known_secret_fields_are_sensitive() -> None:
    expected = {
        "zumik.secrets.v1.CreateApiKeyResponse.raw_key",
        "zumik.secrets.v1.RotateApiKeyResponse.raw_key",
        "zumik.secrets.v1.VerifyApiKeyRequest.key",
        "zumik.secrets.v1.VerifyApiKeyResponse.claim",
        "zumik.secrets.v1.CreateSessionResponse.token",
        "zumik.secrets.v1.VerifySessionRequest.token",
        "zumik.secrets.v1.VerifySessionResponse.claim",
        "zumik.secrets.v1.RotateSessionResponse.token",
        "zumik.secrets.v1.SealRequest.plaintext",
        "zumik.secrets.v1.OpenResponse.plaintext",
        "zumik.secrets.v1.UpdateSecretRequest.plaintext",
        "zumik.secrets.v1.FingerprintRequest.values",
        "zumik.secrets.v1.MatchFingerprintRequest.value",
        "zumik.secrets.v1.ConfigureCustomerKeyRequest.token",
    }
    assert expected <= sensitive_fields()
