"""The one detector applied to every sink (core/secret_scrub.py, api/free_text.py)."""

from __future__ import annotations

import base64
import logging
import secrets

import pytest
from zumik.secrets.v1 import key_service_pb2, seal_service_pb2, tenant_service_pb2

from zumik_secrets.api.free_text import refuse_secret_fields
from zumik_secrets.api.redaction import describe_message
from zumik_secrets.api.status import to_status
from zumik_secrets.core.errors import InvalidArgument, NotFound
from zumik_secrets.core.secret_scrub import MAX_SCRUB, REDACTED, scrub_text, scrub_value
from zumik_secrets.server.log_setup import JsonFormatter


def _token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()


def _signature_segment() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()


NAMES = [
    "tenants/3f2a9c1e-8b7d-4e2f-9a1b-0c5d6e7f8a9b/projects/0123456789abcdef0123456789abcdef",
    "tenants/01hq3k5v7x9zb2c4d6f8g0j1m3/projects/web/secrets/sec_0123456789ABCDEFabcdef",
    "tenants/0123456789abcdef0123456789abcdef/settings",
]


@pytest.mark.parametrize("name", NAMES)
def test_resource_names_are_kept(name: str) -> None:
    assert scrub_value(name) == name
    assert scrub_text(f"{name} not found") == f"{name} not found"
    assert scrub_text(f"resource {name}: gone.") == f"resource {name}: gone."


SHAPES = {
    "hex": lambda: secrets.token_hex(32),
    "base64url": _token,
    "jws-signature": _signature_segment,
    "session-token": lambda: (
        "zs_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_flagged_values_and_tokens_are_replaced(shape: str) -> None:
    secret = SHAPES[shape]()
    assert scrub_value(secret) == REDACTED
    text = scrub_text(f"refused value={secret} for 'x' ({secret})")
    assert secret not in text and REDACTED in text


def test_pem_private_key_blocks_are_replaced_whole() -> None:
    body = base64.b64encode(secrets.token_bytes(300)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    pem = f"-----BEGIN EC PRIVATE KEY-----\n{lines}\n-----END EC PRIVATE KEY-----"
    out = scrub_text(f"before {pem} after")
    assert out == f"before {REDACTED} after"
    cut = scrub_text(f"before -----BEGIN PRIVATE KEY-----\n{lines[:100]}")
    assert lines[:40] not in cut


def test_long_text_is_bounded_before_scanning() -> None:
    out = scrub_text("a " * MAX_SCRUB)
    assert len(out) < MAX_SCRUB + 32 and out.endswith("[truncated]")


def test_log_lines_never_echo_a_flagged_message_or_traceback() -> None:
    secret = _signature_segment()
    try:
        raise ValueError(f"bad claim {secret}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "saw %s", (secret,), None)
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert secret not in line and REDACTED in line


def test_error_messages_never_echo_a_flagged_value() -> None:
    secret = secrets.token_hex(32)
    status = to_status(InvalidArgument(f"bad {secret}", reason="X", metadata={"v": secret}))
    assert secret not in status.details
    assert all(secret not in str(v) for _, v in status.trailing_metadata)
    name = NAMES[1]
    assert name in to_status(NotFound(f"{name} not found", reason="NOT_FOUND")).details


def test_rich_description_replaces_flagged_values_before_cutting() -> None:
    secret = "x " * 120 + _token()  # the token straddles the 256-character cut
    request = seal_service_pb2.SealRequest(
        parent=NAMES[0], display_name=secret, plaintext=b"p", metadata={_token(): "v"}
    )
    out = describe_message(request)
    assert out["display_name"] == REDACTED and out["parent"] == NAMES[0]
    assert out["plaintext"] == REDACTED and list(out["metadata"]) == [REDACTED]


@pytest.mark.parametrize(
    "request_",
    [
        key_service_pb2.CreateApiKeyRequest(parent=NAMES[0], display_name=secrets.token_hex(32)),
        key_service_pb2.CreateSessionRequest(parent=NAMES[0], user_subject=_token()),
        seal_service_pb2.SealRequest(parent=NAMES[0], metadata={"k": _token()}),
        seal_service_pb2.SealRequest(parent=NAMES[0], metadata={_token(): "v"}),
        tenant_service_pb2.UpdateTenantSettingsRequest(
            name=NAMES[2], settings=tenant_service_pb2.TenantSettings(name=_token())
        ),
        tenant_service_pb2.ConfigureCustomerKeyRequest(
            name=NAMES[2], ca_certificate_pem="-----BEGIN PRIVATE KEY-----\nAAAA\n"
        ),
    ],
)
def test_secrets_in_fields_not_meant_for_them_are_refused(request_: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        refuse_secret_fields(request_)  # type: ignore[arg-type]
    assert info.value.reason == "SECRET_IN_FIELD"
    assert info.value.metadata["field"]
    assert "looks like a secret" in info.value.message


@pytest.mark.parametrize(
    "request_",
    [
        key_service_pb2.CreateApiKeyRequest(parent=NAMES[0], display_name="prod OpenAI key 2026"),
        key_service_pb2.VerifyApiKeyRequest(key="zk_live_" + "A" * 60),  # a sensitive field
        key_service_pb2.ListApiKeysRequest(parent=NAMES[0], page_token=_token()),
        key_service_pb2.CreateSessionRequest(
            parent=NAMES[0], user_subject="auth0|5f7c8ec7c33c6c004bbafe82"
        ),
    ],
)
def test_ordinary_values_pass(request_: object) -> None:
    refuse_secret_fields(request_)  # type: ignore[arg-type]
