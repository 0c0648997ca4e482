"""What counts as a secret in an audit event or a log line (core/secret_patterns.py)."""

from __future__ import annotations

import base64
import random

import pytest

from zumik_secrets.core import encoding
from zumik_secrets.core.secret_patterns import looks_like_secret, secret_kind

_KEY = "zk_live_" + "A" * 21 + "b_" + "Xy9" * 11 + "Q1w2e3"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (_KEY, "api_key"),
        ("zs_Qm9vT2tLcV9yX3VfNFk3Vm1hV0pHc1pUeDJ0S1p4Qw", "session_token"),
        ("Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJrZXlfMTIzIn0.c2lnbmF0dXJlc2lnbmF0dXJl", "jws"),
        ('{"key": "' + "k" * 43 + '"}', "keyring_key"),
        ("-----BEGIN PRIVATE KEY-----\nMIIB...", "pem_private_key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "pem_private_key"),
        ("-----BEGIN RSA PRIVATE KEY-----", "pem_private_key"),
        ("token 4bf92f3577b34da6a3ce929d0e0e4736 end", "hex"),
        ("aws wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "high_entropy"),
        ("sk_xnmSamMVJI51BaOp21jFaV4nALpn6z4VU2-vlfSjKJQ", "high_entropy"),
    ],
)
def test_secret_shapes_are_recognised(value: str, kind: str) -> None:
    assert secret_kind(value) == kind


def test_a_random_token_with_a_handle_shaped_piece_is_caught() -> None:
    # A real token_urlsafe(32) output that once slipped through: its first 27 characters look
    # like a handle (`feko_` + 22 alphanumerics) but are glued to the rest by `-`.
    assert secret_kind("feko_xguCVk4gcoOWBVKwFJdNKz-fAvlanVhVQfapbg") == "high_entropy"
    assert secret_kind("xguCVk4gcoOWBVKwFJdNKz-feko_fAvlanVhVQfapbgAbCdEfGhIjK_") is not None
    # A resource name ending in a real handle stays harmless.
    assert secret_kind("tenants/acme/projects/web/secrets/sec_0123456789ABCDEFabcdef") is None


def test_random_strings_of_secret_size_are_caught() -> None:
    # 43-character base64url (32 random bytes), 44-character base64, 64 hex, base62: every one
    # of a fixed sample. The inputs are seeded: the entropy rule misses about one random 32-byte
    # base64url string in 300,000 (its character counts come out uneven by chance, under
    # MIN_ENTROPY_BITS), so unseeded draws would make this test fail now and then.
    rng = random.Random(20261129)
    for _ in range(500):
        raw = rng.randbytes(32)
        assert looks_like_secret(base64.urlsafe_b64encode(raw).decode().rstrip("="))
        assert looks_like_secret(base64.b64encode(raw).decode())
        assert looks_like_secret(raw.hex())
        assert looks_like_secret(encoding.base62_encode(raw))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "pro",
        "enterprise-annual",
        "tenants/acme-corporation/projects/production-eu/apiKeys/key_7fGh2kLmN0pQrStUvWxYz1",
        "tenants/acme/handles/hdl_0123456789abcdefABCDEF",
        "subscription_cancelled_by_customer_request",
        "spiffe://zumik.local/svc/control-plane",
        "zumik.secrets.v1.FingerprintService/RotateFingerprintKey",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "Invoice INV-2024-000123 paid via card ending 4242",
        "cus_NffrFeUfNV2Hib9T4bK5LmQ3xYz",
        "0" * 40,
        "2025-01-31T12:00:00.000123Z",
        "EUR 1,234.56",
        "zk_live_" + "A" * 22 + "…",  # a masked prefix is safe to show
    ],
)
def test_ordinary_values_pass(value: str) -> None:
    assert secret_kind(value) is None
