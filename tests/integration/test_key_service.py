"""KeyService over real mutual TLS: API keys, sessions and the claims they mint."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from zumik.secrets.v1 import common_pb2, key_service_pb2

from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from zumik_secrets.core import api_keys as key_format

pytestmark = pytest.mark.integration

A = "tenant-a"
B = "tenant-b"
PROJ = "proj"
PARENT_A = f"tenants/{A}/projects/{PROJ}"
PARENT_B = f"tenants/{B}/projects/{PROJ}"
READ_WRITE = ["keys.read", "keys.write", "sessions.read", "sessions.write"]
V = common_pb2


def _fails(fn: Callable[[], Any], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    return info.value


def _create(
    server: RunningServer, parent: str = PARENT_A, scopes: list[str] | None = None, **kw: Any
) -> key_service_pb2.CreateApiKeyResponse:
    stubs = server.stubs("control-plane")
    return stubs.keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(
            parent=parent, scopes=scopes or ["keys.read"], display_name="ci", **kw
        ),
        timeout=5,
    )


def _verify(
    server: RunningServer, key: str, required: tuple[str, ...] = ()
) -> key_service_pb2.VerifyApiKeyResponse:
    return server.stubs("gateway").keys.VerifyApiKey(
        key_service_pb2.VerifyApiKeyRequest(key=key, required_scopes=required), timeout=5
    )


def _secret_tampered(raw: str) -> str:
    """Same id and env, another secret, correct checksum: passes the format check."""
    parsed = key_format.parse_api_key(raw)
    other = ("A" if parsed.secret[0] != "A" else "B") + parsed.secret[1:]
    return key_format.format_api_key(parsed.env, parsed.key_id, other)


# -- the "must show" flow ----------------------------------------------------------------------


def test_end_to_end_claim_from_verified_key_works_for_its_tenant_only(
    zumik_server_any_backend: RunningServer,
) -> None:
    server = zumik_server_any_backend
    created = _create(server, scopes=["keys.read"])
    _create(server, parent=PARENT_B)  # tenant B has a key too
    raw = created.raw_key
    assert raw.startswith("zk_live_") and created.api_key.masked_key.endswith("\u2026")
    assert created.api_key.name.startswith(f"{PARENT_A}/apiKeys/key_")

    answer = _verify(server, raw, ("keys.read",))
    assert answer.result == V.VERIFY_RESULT_VALID
    assert (answer.tenant, answer.project) == (A, PROJ)
    assert answer.api_key == created.api_key.name
    assert list(answer.scopes) == ["keys.read"]
    assert answer.claim and answer.claim_expire_time.seconds > time.time()
    claim = server.runtime.verify_claim(answer.claim)
    assert claim.subject == created.api_key.name.rsplit("/", 1)[1]
    assert (claim.tenant_id, claim.project_id, claim.scopes) == (A, PROJ, ("keys.read",))
    assert claim.expires_at - claim.issued_at <= 300

    console = server.stubs("console", claim=answer.claim)
    got = console.keys.GetApiKey(key_service_pb2.GetApiKeyRequest(name=created.api_key.name))
    assert got.api_key.name == created.api_key.name
    assert got.api_key.masked_key == created.api_key.masked_key
    listed = console.keys.ListApiKeys(key_service_pb2.ListApiKeysRequest(parent=PARENT_A))
    assert [k.name for k in listed.api_keys] == [created.api_key.name]

    b_name = f"{PARENT_B}/apiKeys/key_0000000000000000000001"
    for call in (
        lambda: console.keys.GetApiKey(key_service_pb2.GetApiKeyRequest(name=b_name)),
        lambda: console.keys.ListApiKeys(key_service_pb2.ListApiKeysRequest(parent=PARENT_B)),
    ):
        err = _fails(call, grpc.StatusCode.NOT_FOUND)
        assert error_info(err).reason == "NOT_FOUND"
    # The claim carries the key's scopes only: writing needs keys.write.
    err = _fails(
        lambda: console.keys.RevokeApiKey(
            key_service_pb2.RevokeApiKeyRequest(name=created.api_key.name)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "MISSING_SCOPE"


def test_warm_verify_reuses_the_claim_and_touches_no_database(zumik_server: RunningServer) -> None:
    raw = _create(zumik_server).raw_key
    first = _verify(zumik_server, raw)
    store = zumik_server.runtime.store.api_keys
    calls = 0
    original = store.get_by_id

    def counting(key_id: str) -> Any:
        nonlocal calls
        calls += 1
        return original(key_id)

    store.get_by_id = counting  # type: ignore[method-assign]
    try:
        for _ in range(5):
            again = _verify(zumik_server, raw)
            assert again.claim == first.claim
    finally:
        store.get_by_id = original  # type: ignore[method-assign]
    assert calls == 0


# -- verify: every negative path ---------------------------------------------------------------


def test_malformed_and_unknown_keys_are_answers_not_errors(zumik_server: RunningServer) -> None:
    raw = _create(zumik_server).raw_key
    typo = raw[:-7] + ("a" if raw[-7] != "a" else "b") + raw[-6:]
    for bad in ("hello", raw + "x", typo, "zk_live_" + "0" * 22 + "_" + "1" * 38):
        answer = _verify(zumik_server, bad)
        assert answer.result == V.VERIFY_RESULT_MALFORMED
        assert not answer.claim and not answer.api_key and not answer.tenant
    unknown = key_format.generate_api_key("live").raw
    for bad in (unknown, _secret_tampered(raw)):
        answer = _verify(zumik_server, bad)
        assert answer.result == V.VERIFY_RESULT_NOT_FOUND
        assert not answer.claim and not answer.api_key and not answer.tenant and not answer.scopes
    # The environment is not part of the hash: a relabelled key with a valid checksum is unknown.
    parsed = key_format.parse_api_key(raw)
    relabelled = key_format.format_api_key("test", parsed.key_id, parsed.secret)
    assert _verify(zumik_server, relabelled).result == V.VERIFY_RESULT_NOT_FOUND


def test_empty_key_is_invalid_argument(zumik_server: RunningServer) -> None:
    err = _fails(lambda: _verify(zumik_server, ""), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "FIELD_REQUIRED"
    raw = _create(zumik_server).raw_key
    err = _fails(
        lambda: _verify(zumik_server, raw, ("Bad Scope",)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error_info(err).reason == "INVALID_SCOPE"


def test_revoked_key_is_revoked_and_revoke_is_idempotent(zumik_server: RunningServer) -> None:
    created = _create(zumik_server)
    assert _verify(zumik_server, created.raw_key).result == V.VERIFY_RESULT_VALID
    keys = zumik_server.stubs("control-plane").keys
    request = key_service_pb2.RevokeApiKeyRequest(name=created.api_key.name)
    first = keys.RevokeApiKey(request, timeout=5)
    second = keys.RevokeApiKey(request, timeout=5)
    assert first.api_key.state == second.api_key.state == V.CREDENTIAL_STATE_REVOKED
    assert first.api_key.revoke_time == second.api_key.revoke_time
    answer = _verify(zumik_server, created.raw_key)
    assert answer.result == V.VERIFY_RESULT_REVOKED
    assert answer.api_key == created.api_key.name and not answer.claim
    # Without the secret, a revoked key is indistinguishable from an unknown one.
    assert _verify(zumik_server, _secret_tampered(created.raw_key)).result == (
        V.VERIFY_RESULT_NOT_FOUND
    )


def test_expired_key_is_expired(zumik_server: RunningServer) -> None:
    created = _create(zumik_server, ttl=duration_pb2.Duration(seconds=1))
    assert created.api_key.expire_time.seconds > 0
    assert _verify(zumik_server, created.raw_key).result == V.VERIFY_RESULT_VALID
    time.sleep(1.1)
    answer = _verify(zumik_server, created.raw_key)
    assert answer.result == V.VERIFY_RESULT_EXPIRED and not answer.claim
    got = zumik_server.stubs("control-plane").keys.GetApiKey(
        key_service_pb2.GetApiKeyRequest(name=created.api_key.name)
    )
    assert got.api_key.state == V.CREDENTIAL_STATE_EXPIRED


def test_missing_scope_is_insufficient_scope_without_claim(zumik_server: RunningServer) -> None:
    created = _create(zumik_server, scopes=["keys.read", "llm.invoke"])
    answer = _verify(zumik_server, created.raw_key, ("llm.invoke", "admin"))
    assert answer.result == V.VERIFY_RESULT_INSUFFICIENT_SCOPE
    assert not answer.claim and answer.tenant == A
    assert _verify(zumik_server, created.raw_key, ("llm.invoke",)).result == V.VERIFY_RESULT_VALID


def test_rotate_with_grace_then_past_grace(zumik_server: RunningServer) -> None:
    keys = zumik_server.stubs("control-plane").keys
    old = _create(zumik_server, scopes=["keys.read", "x.y"])
    assert _verify(zumik_server, old.raw_key).result == V.VERIFY_RESULT_VALID
    rotated = keys.RotateApiKey(
        key_service_pb2.RotateApiKeyRequest(
            name=old.api_key.name, grace_period=duration_pb2.Duration(seconds=1)
        ),
        timeout=5,
    )
    assert rotated.api_key.rotated_from == old.api_key.name
    assert list(rotated.api_key.scopes) == ["keys.read", "x.y"]
    assert rotated.previous_api_key.name == old.api_key.name
    assert rotated.previous_api_key.expire_time.seconds > 0
    assert _verify(zumik_server, old.raw_key).result == V.VERIFY_RESULT_VALID  # within grace
    assert _verify(zumik_server, rotated.raw_key).result == V.VERIFY_RESULT_VALID
    time.sleep(1.1)
    assert _verify(zumik_server, old.raw_key).result == V.VERIFY_RESULT_EXPIRED
    assert _verify(zumik_server, rotated.raw_key).result == V.VERIFY_RESULT_VALID

    now = keys.RotateApiKey(key_service_pb2.RotateApiKeyRequest(name=rotated.api_key.name))
    assert now.previous_api_key.state == V.CREDENTIAL_STATE_REVOKED
    assert _verify(zumik_server, rotated.raw_key).result == V.VERIFY_RESULT_REVOKED
    err = _fails(
        lambda: keys.RotateApiKey(key_service_pb2.RotateApiKeyRequest(name=rotated.api_key.name)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "API_KEY_REVOKED"


def test_failed_verifications_are_rate_limited_per_key_and_identity(
    zumik_server_factory: ServerFactory,
) -> None:
    server = zumik_server_factory(
        ZUMIK_VERIFY_KEY_FAILURE_BURST=3,
        ZUMIK_VERIFY_KEY_FAILURE_RATE=0.5,
        ZUMIK_VERIFY_IDENTITY_FAILURE_BURST=8,
        ZUMIK_VERIFY_IDENTITY_FAILURE_RATE=0.5,
    )
    created = _create(server)
    wrong = _secret_tampered(created.raw_key)
    for _ in range(3):
        assert _verify(server, wrong).result == V.VERIFY_RESULT_NOT_FOUND
    err = _fails(lambda: _verify(server, wrong), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error_info(err).reason == "VERIFY_RATE_LIMITED"
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert 0 < info.retry_delay.seconds + info.retry_delay.nanos / 1e9 <= 2.0
    # The holder of the real key is never limited.
    assert _verify(server, created.raw_key).result == V.VERIFY_RESULT_VALID
    # Per identity: malformed keys (no id) drain the gateway's bucket (4 of 8 already spent).
    answered = 0
    with pytest.raises(grpc.RpcError) as info:
        for _ in range(20):
            assert _verify(server, "junk").result == V.VERIFY_RESULT_MALFORMED
            answered += 1
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(info.value).reason == "VERIFY_RATE_LIMITED"
    assert 4 <= answered <= 5
    assert _verify(server, created.raw_key).result == V.VERIFY_RESULT_VALID


# -- claims presented to the interceptor -------------------------------------------------------


def _get_with(server: RunningServer, claim: str, name: str) -> grpc.RpcError:
    stub = server.stubs("console", claim=claim).keys
    return _fails(
        lambda: stub.GetApiKey(key_service_pb2.GetApiKeyRequest(name=name), timeout=5),
        grpc.StatusCode.UNAUTHENTICATED,
    )


def test_bad_claims_are_unauthenticated_with_reason(zumik_server: RunningServer) -> None:
    created = _create(zumik_server)
    name = created.api_key.name
    good = _verify(zumik_server, created.raw_key).claim
    header, payload, signature = good.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    assert error_info(
        _get_with(zumik_server, claim=f"{header}.{flipped}.{signature}", name=name)
    ).reason in {"CLAIM_BAD_SIGNATURE", "CLAIM_MALFORMED"}
    sig = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert error_info(_get_with(zumik_server, f"{header}.{payload}.{sig}", name)).reason == (
        "CLAIM_BAD_SIGNATURE"
    )

    signer = zumik_server.runtime.claim_keys.signer
    now = int(time.time())
    expired, _ = signer.mint(A, PROJ, "key_x", ("keys.read",), now - 400, 300)
    assert error_info(_get_with(zumik_server, expired, name)).reason == "CLAIM_EXPIRED"
    future, _ = signer.mint(A, PROJ, "key_x", ("keys.read",), now + 120, 300)
    assert error_info(_get_with(zumik_server, future, name)).reason == "CLAIM_NOT_YET_VALID"
    other_aud = copy.copy(signer)
    other_aud.audience = "another-service"
    token, _ = other_aud.mint(A, PROJ, "key_x", ("keys.read",), now, 300)
    assert error_info(_get_with(zumik_server, token, name)).reason == "CLAIM_WRONG_AUDIENCE"
    unknown_kid = copy.copy(signer)
    unknown_kid.kid = "sk_0000000000000000000042"
    token, _ = unknown_kid.mint(A, PROJ, "key_x", ("keys.read",), now, 300)
    assert error_info(_get_with(zumik_server, token, name)).reason == "CLAIM_UNKNOWN_KEY"

    no_scope, _ = signer.mint(A, PROJ, "key_x", ("other.scope",), now, 300, credential_id="key_x")
    err = _fails(
        lambda: zumik_server.stubs("console", claim=no_scope).keys.GetApiKey(
            key_service_pb2.GetApiKeyRequest(name=name), timeout=5
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "MISSING_SCOPE"
    other_project, _ = signer.mint(
        A, "other", "key_x", ("keys.read",), now, 300, credential_id="key_x"
    )
    err = _fails(
        lambda: zumik_server.stubs("console", claim=other_project).keys.GetApiKey(
            key_service_pb2.GetApiKeyRequest(name=name), timeout=5
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_info(err).reason == "NOT_FOUND"


def test_claim_of_a_retired_signing_key_is_refused(zumik_server: RunningServer) -> None:
    created = _create(zumik_server)
    claim = _verify(zumik_server, created.raw_key).claim
    runtime = zumik_server.runtime
    old_kid = runtime.claim_keys.signer.kid
    runtime.claim_keys.rotate()
    # Still verifies while retiring; once retired (simulated: state set now) it does not.
    assert runtime.verify_claim(claim).key_id == old_kid
    runtime.store.signing_keys.set_state(old_kid, "retired", None)
    runtime.claim_keys.refresh()
    err = _get_with(zumik_server, claim, created.api_key.name)
    assert error_info(err).reason == "CLAIM_UNKNOWN_KEY"
    # A key verified after the rotation gets a claim from the new key.
    fresh = runtime.verify_claim(_verify(zumik_server, created.raw_key).claim)
    assert fresh.key_id == runtime.claim_keys.signer.kid != old_kid


# -- management --------------------------------------------------------------------------------


def test_create_validates_its_input(zumik_server: RunningServer) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"display_name": "x" * 129}, "INVALID_DISPLAY_NAME"),
        ({"display_name": "bad\nname"}, "INVALID_DISPLAY_NAME"),
        ({"environment": "PROD"}, "INVALID_ENVIRONMENT"),
        ({"ttl": duration_pb2.Duration(seconds=0)}, "INVALID_DURATION"),
        ({"ttl": duration_pb2.Duration(seconds=-5)}, "INVALID_DURATION"),
        ({"ttl": duration_pb2.Duration(seconds=11 * 365 * 86400)}, "INVALID_DURATION"),
        ({"scopes": []}, "FIELD_REQUIRED"),
        ({"scopes": [f"s{i}" for i in range(33)]}, "TOO_MANY_SCOPES"),
        ({"scopes": ["Not A Scope"]}, "INVALID_SCOPE"),
    ]
    keys = zumik_server.stubs("control-plane").keys
    for fields, reason in cases:
        request = key_service_pb2.CreateApiKeyRequest(parent=PARENT_A, scopes=["keys.read"])
        for k, v in fields.items():
            if k == "scopes":
                del request.scopes[:]
                request.scopes.extend(v)
            elif k == "ttl":
                request.ttl.CopyFrom(v)
            else:
                setattr(request, k, v)
        err = _fails(
            lambda r=request: keys.CreateApiKey(r, timeout=5), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error_info(err).reason == reason, fields
    test_env = keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(parent=PARENT_A, scopes=["a"], environment="test")
    )
    assert test_env.raw_key.startswith("zk_test_") and test_env.api_key.environment == "test"


def test_list_paginates_and_rejects_foreign_or_bad_tokens(zumik_server: RunningServer) -> None:
    names = [_create(zumik_server).api_key.name for _ in range(5)]
    keys = zumik_server.stubs("control-plane").keys
    keys.RevokeApiKey(key_service_pb2.RevokeApiKeyRequest(name=names[1]))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = keys.ListApiKeys(
            key_service_pb2.ListApiKeysRequest(
                parent=PARENT_A, page_size=2, page_token=token, show_revoked=True
            )
        )
        pages += 1
        seen += [k.name for k in page.api_keys]
        assert all("\u2026" in k.masked_key for k in page.api_keys)
        token = page.next_page_token
        if not token:
            break
    assert seen == names and pages == 3
    active = keys.ListApiKeys(key_service_pb2.ListApiKeysRequest(parent=PARENT_A, page_size=1000))
    assert [k.name for k in active.api_keys] == [n for i, n in enumerate(names) if i != 1]

    first = keys.ListApiKeys(
        key_service_pb2.ListApiKeysRequest(parent=PARENT_A, page_size=1, show_revoked=True)
    )
    for parent, token_value, show in (
        (PARENT_B, first.next_page_token, True),  # another tenant's parent
        (PARENT_A, first.next_page_token, False),  # another filter
        (PARENT_A, "garbage!", True),
        (PARENT_A, first.next_page_token[:-2], True),
    ):
        err = _fails(
            lambda p=parent, t=token_value, s=show: keys.ListApiKeys(
                key_service_pb2.ListApiKeysRequest(parent=p, page_token=t, show_revoked=s)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_info(err).reason == "INVALID_PAGE_TOKEN"
    err = _fails(
        lambda: keys.ListApiKeys(key_service_pb2.ListApiKeysRequest(parent=PARENT_A, page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "INVALID_PAGE_SIZE"


def test_missing_key_and_foreign_key_answer_the_same(zumik_server: RunningServer) -> None:
    b_key = _create(zumik_server, parent=PARENT_B).api_key.name
    claim = zumik_server.mint_claim(A, PROJ, ("keys.read", "keys.write"))
    stub = zumik_server.stubs("console", claim=claim).keys
    missing = f"{PARENT_A}/apiKeys/key_0000000000000000000007"
    for call in (
        lambda: stub.GetApiKey(key_service_pb2.GetApiKeyRequest(name=missing)),
        lambda: stub.RevokeApiKey(key_service_pb2.RevokeApiKeyRequest(name=missing)),
        lambda: stub.RotateApiKey(key_service_pb2.RotateApiKeyRequest(name=missing)),
    ):
        assert error_info(_fails(call, grpc.StatusCode.NOT_FOUND)).metadata["resource"] == missing
    err = _fails(
        lambda: stub.RevokeApiKey(key_service_pb2.RevokeApiKeyRequest(name=b_key)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_info(err).metadata["resource"] == b_key
    # Control plane without a claim: the key is still there, untouched.
    got = zumik_server.stubs("control-plane").keys.GetApiKey(
        key_service_pb2.GetApiKeyRequest(name=b_key)
    )
    assert got.api_key.state == V.CREDENTIAL_STATE_ACTIVE


def test_last_used_time_is_batched(zumik_server: RunningServer) -> None:
    created = _create(zumik_server)
    keys = zumik_server.stubs("control-plane").keys
    request = key_service_pb2.GetApiKeyRequest(name=created.api_key.name)
    assert not keys.GetApiKey(request).api_key.HasField("last_used_time")
    for _ in range(3):
        _verify(zumik_server, created.raw_key)
    assert keys.GetApiKey(request).api_key.HasField("last_used_time")  # from memory
    zumik_server.runtime.usage.flush()
    rec = zumik_server.runtime.store.api_keys.get(A, PROJ, created.api_key.name.rsplit("/", 1)[1])
    assert rec is not None and rec.last_used_at is not None


# -- sessions ----------------------------------------------------------------------------------


def _session_stub(server: RunningServer) -> Any:
    return server.stubs("control-plane").keys


def _verify_session(
    server: RunningServer, token: str, required: tuple[str, ...] = ()
) -> key_service_pb2.VerifySessionResponse:
    return server.stubs("gateway").keys.VerifySession(
        key_service_pb2.VerifySessionRequest(token=token, required_scopes=required), timeout=5
    )


def test_session_lifecycle(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    keys = _session_stub(server)
    created = keys.CreateSession(
        key_service_pb2.CreateSessionRequest(
            parent=PARENT_A, user_subject="user-42", scopes=["keys.read", "sessions.read"]
        )
    )
    token = created.token
    assert token.startswith("zs_") and len(token) == 46
    assert created.session.idle_timeout.seconds == 1800
    assert created.session.expire_time.seconds - created.session.create_time.seconds == 43200
    answer = _verify_session(server, token, ("keys.read",))
    assert answer.result == V.VERIFY_RESULT_VALID
    assert (answer.tenant, answer.project, answer.user_subject) == (A, PROJ, "user-42")
    claim = server.runtime.verify_claim(answer.claim)
    assert claim.subject == "user-42" and claim.tenant_id == A
    # The claim works for tenant A's resources.
    console = server.stubs("console", claim=answer.claim).keys
    got = console.GetSession(key_service_pb2.GetSessionRequest(name=created.session.name))
    assert got.session.state == V.CREDENTIAL_STATE_ACTIVE
    assert _verify_session(server, token, ("admin",)).result == V.VERIFY_RESULT_INSUFFICIENT_SCOPE

    rotated = keys.RotateSession(
        key_service_pb2.RotateSessionRequest(name=created.session.name, scopes=["keys.read"])
    )
    assert rotated.token != token and list(rotated.session.scopes) == ["keys.read"]
    assert _verify_session(server, token).result == V.VERIFY_RESULT_NOT_FOUND
    assert _verify_session(server, rotated.token).result == V.VERIFY_RESULT_VALID

    revoked = keys.RevokeSession(key_service_pb2.RevokeSessionRequest(name=created.session.name))
    assert revoked.session.state == V.CREDENTIAL_STATE_REVOKED
    assert _verify_session(server, rotated.token).result == V.VERIFY_RESULT_REVOKED

    tokens = [
        keys.CreateSession(
            key_service_pb2.CreateSessionRequest(parent=PARENT_A, user_subject="u2", scopes=["a"])
        ).token
        for _ in range(3)
    ]
    assert all(_verify_session(server, t).result == V.VERIFY_RESULT_VALID for t in tokens)
    count = keys.RevokeUserSessions(
        key_service_pb2.RevokeUserSessionsRequest(parent=PARENT_A, user_subject="u2")
    )
    assert count.revoked_count == 3
    assert all(_verify_session(server, t).result == V.VERIFY_RESULT_REVOKED for t in tokens)


def test_session_negative_paths(zumik_server: RunningServer) -> None:
    err = _fails(lambda: _verify_session(zumik_server, ""), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "FIELD_REQUIRED"
    for bad in ("zs_short", "x" * 46, "zs_" + "!" * 43):
        assert _verify_session(zumik_server, bad).result == V.VERIFY_RESULT_MALFORMED
    assert _verify_session(zumik_server, "zs_" + "A" * 43).result == V.VERIFY_RESULT_NOT_FOUND
    keys = _session_stub(zumik_server)
    for fields, reason in (
        ({"user_subject": ""}, "FIELD_REQUIRED"),
        ({"user_subject": "x" * 257}, "INVALID_USER_SUBJECT"),
        ({"scopes": []}, "FIELD_REQUIRED"),
        ({"idle_timeout": duration_pb2.Duration(seconds=5)}, "INVALID_DURATION"),
        ({"absolute_timeout": duration_pb2.Duration(seconds=31 * 86400)}, "INVALID_DURATION"),
    ):
        request = key_service_pb2.CreateSessionRequest(
            parent=PARENT_A, user_subject="u", scopes=["a"]
        )
        for k, v in fields.items():
            if k == "scopes":
                del request.scopes[:]
            elif isinstance(v, duration_pb2.Duration):
                getattr(request, k).CopyFrom(v)
            else:
                setattr(request, k, v)
        err = _fails(lambda r=request: keys.CreateSession(r), grpc.StatusCode.INVALID_ARGUMENT)
        assert error_info(err).reason == reason, fields
    missing = f"{PARENT_A}/sessions/ses_0000000000000000000009"
    err = _fails(
        lambda: keys.GetSession(key_service_pb2.GetSessionRequest(name=missing)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_info(err).reason == "NOT_FOUND"
