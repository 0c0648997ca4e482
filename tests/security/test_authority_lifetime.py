"""Authority over time (adversary finding t11): a credential minted or rotated with the authority
of a claim from an expiring API key never outlives that key.

Before the fix, the claim of a key created with a ``ttl`` of 120 s, sent to CreateApiKey without
a ttl, minted a key with no expiry (and RotateApiKey renewed any key, the minter itself
included, for its whole lifetime length): scopes were bounded by ``check_grant``, lifetime was
not. Now such a request is refused with PERMISSION_DENIED ``LIFETIME_ESCALATION`` (audited
``authz.deny``, nothing created or changed), a request ending within the key's life passes, and
claims of keys without expiry, of sessions, and callers without a claim are not bounded.

Every test runs on SQLite and PostgreSQL (``store_url``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2
from zumik.secrets.v1 import key_service_pb2 as kpb

from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from zumik_secrets.core.errors import Unauthenticated

pytestmark = pytest.mark.integration

TENANT = "acme"
PARENT = f"tenants/{TENANT}/projects/web"
VALID = common_pb2.VERIFY_RESULT_VALID
MINTER_SCOPES = ["keys.read", "keys.write", "sessions.write"]


def _ttl(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _assert_lifetime_escalation(err: grpc.RpcError, not_after: int) -> None:
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()  # type: ignore[attr-defined]
    info = error_info(err)
    assert info.reason == "LIFETIME_ESCALATION"
    assert info.metadata["not_after"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))


def _deny_audited(server: RunningServer, method: str) -> None:
    auditor = server.stubs("auditor").audit
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = auditor.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{TENANT}", action="authz.deny"), timeout=10
        ).events
        if any(
            e.reason == "LIFETIME_ESCALATION" and e.attributes["method"].endswith(method)
            for e in events
        ):
            return
        time.sleep(0.05)
    pytest.fail(f"no authz.deny LIFETIME_ESCALATION audited for {method}")


def _key_count(server: RunningServer) -> int:
    control = server.stubs("control-plane").keys
    return len(control.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT, page_size=1000)).api_keys)


def _minter(
    server: RunningServer, ttl: int | None, scopes: list[str] = MINTER_SCOPES
) -> tuple[kpb.CreateApiKeyResponse, str]:
    """A key created by the control plane (with ``ttl`` seconds, or none) and its claim."""
    request = kpb.CreateApiKeyRequest(parent=PARENT, scopes=scopes)
    if ttl is not None:
        request.ttl.CopyFrom(_ttl(ttl))
    created = server.stubs("control-plane").keys.CreateApiKey(request)
    verified = server.stubs("gateway").keys.VerifyApiKey(
        kpb.VerifyApiKeyRequest(key=created.raw_key)
    )
    assert verified.result == VALID
    return created, verified.claim


@pytest.fixture
def server(zumik_server_factory: ServerFactory, store_url: str) -> RunningServer:
    return zumik_server_factory(store_url)


def test_an_expiring_keys_claim_cannot_mint_a_key_without_expiry(server: RunningServer) -> None:
    source, claim = _minter(server, 120)
    before = _key_count(server)
    attacker = server.stubs("console", claim=claim).keys
    err = _refused(
        lambda: attacker.CreateApiKey(
            kpb.CreateApiKeyRequest(parent=PARENT, display_name="child", scopes=["keys.read"])
        )
    )
    _assert_lifetime_escalation(err, source.api_key.expire_time.seconds)
    _deny_audited(server, "CreateApiKey")
    assert _key_count(server) == before


def test_an_expiring_keys_claim_mints_keys_only_within_its_life(server: RunningServer) -> None:
    source, claim = _minter(server, 120)
    source_expiry = source.api_key.expire_time.ToDatetime()
    keys = server.stubs("console", claim=claim).keys
    before = _key_count(server)
    err = _refused(
        lambda: keys.CreateApiKey(
            kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"], ttl=_ttl(3600))
        )
    )
    _assert_lifetime_escalation(err, source.api_key.expire_time.seconds)
    assert _key_count(server) == before
    child = keys.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"], ttl=_ttl(60))
    )
    assert child.api_key.HasField("expire_time")
    assert child.api_key.expire_time.ToDatetime() <= source_expiry
    # The child's own claim carries the child's (shorter) bound on, down the chain.
    grandchild_claim = server.stubs("gateway").keys.VerifyApiKey(
        kpb.VerifyApiKeyRequest(key=child.raw_key)
    )
    assert grandchild_claim.result == VALID


def test_an_expiring_keys_claim_cannot_rotate_into_a_longer_life(server: RunningServer) -> None:
    source, claim = _minter(server, 120)
    keys = server.stubs("console", claim=claim).keys
    control = server.stubs("control-plane").keys
    permanent = control.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]))
    longer = control.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"], ttl=_ttl(86_400))
    )
    before = _key_count(server)
    for victim in (permanent, longer, source):  # the minter itself: no self-renewal
        err = _refused(
            lambda victim=victim: keys.RotateApiKey(
                kpb.RotateApiKeyRequest(name=victim.api_key.name, grace_period=_ttl(30 * 86_400))
            )
        )
        _assert_lifetime_escalation(err, source.api_key.expire_time.seconds)
        # Nothing changed: the key is as it was, still verifies, no replacement exists.
        after = control.GetApiKey(kpb.GetApiKeyRequest(name=victim.api_key.name)).api_key
        assert after.HasField("expire_time") == victim.api_key.HasField("expire_time")
        assert after.expire_time == victim.api_key.expire_time
        verified = server.stubs("gateway").keys.VerifyApiKey(
            kpb.VerifyApiKeyRequest(key=victim.raw_key)
        )
        assert verified.result == VALID
    _deny_audited(server, "RotateApiKey")
    assert _key_count(server) == before
    # A key whose new life ends before the minter's may be rotated.
    short = control.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"], ttl=_ttl(30))
    )
    rotated = keys.RotateApiKey(kpb.RotateApiKeyRequest(name=short.api_key.name))
    assert rotated.api_key.expire_time.ToDatetime() <= source.api_key.expire_time.ToDatetime()


def test_an_expiring_keys_claim_mints_and_rotates_sessions_only_within_its_life(
    server: RunningServer,
) -> None:
    source, claim = _minter(server, 120)
    source_id = source.api_key.name.rsplit("/", 1)[-1]
    keys = server.stubs("console", claim=claim).keys
    # The tenant's default absolute timeout (12 hours) outlives the key.
    err = _refused(
        lambda: keys.CreateSession(
            kpb.CreateSessionRequest(parent=PARENT, user_subject=source_id, scopes=["keys.read"])
        )
    )
    _assert_lifetime_escalation(err, source.api_key.expire_time.seconds)
    _deny_audited(server, "CreateSession")
    within = keys.CreateSession(
        kpb.CreateSessionRequest(
            parent=PARENT,
            user_subject=source_id,
            scopes=["keys.read"],
            absolute_timeout=_ttl(60),
        )
    )
    assert within.session.expire_time.ToDatetime() <= source.api_key.expire_time.ToDatetime()
    keys.RotateSession(kpb.RotateSessionRequest(name=within.session.name))
    # A session of the same subject living longer than the key cannot get a new token from it.
    longer = server.stubs("control-plane").keys.CreateSession(
        kpb.CreateSessionRequest(parent=PARENT, user_subject=source_id, scopes=["keys.read"])
    )
    err = _refused(lambda: keys.RotateSession(kpb.RotateSessionRequest(name=longer.session.name)))
    _assert_lifetime_escalation(err, source.api_key.expire_time.seconds)
    verified = server.stubs("gateway").keys.VerifySession(
        kpb.VerifySessionRequest(token=longer.token)
    )
    assert verified.result == VALID  # the old token was not replaced


def test_claims_of_keys_without_expiry_and_of_sessions_are_not_bounded(
    server: RunningServer,
) -> None:
    # A key without expiry: its claim mints and rotates credentials of any lifetime.
    _, claim = _minter(server, None)
    keys = server.stubs("console", claim=claim).keys
    child = keys.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]))
    assert not child.api_key.HasField("expire_time")
    rotated = keys.RotateApiKey(kpb.RotateApiKeyRequest(name=child.api_key.name))
    assert not rotated.api_key.HasField("expire_time")
    # A user logged in (a session with a short absolute timeout) creates a long-lived key: the
    # normal console flow; a session's absolute expiry does not bound what its claim mints.
    control = server.stubs("control-plane").keys
    login = control.CreateSession(
        kpb.CreateSessionRequest(
            parent=PARENT,
            user_subject="carol",
            scopes=MINTER_SCOPES,
            absolute_timeout=_ttl(60),
        )
    )
    session_claim = (
        server.stubs("gateway").keys.VerifySession(kpb.VerifySessionRequest(token=login.token))
    ).claim
    console = server.stubs("console", claim=session_claim).keys
    made = console.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]))
    assert not made.api_key.HasField("expire_time")
    console.RotateApiKey(kpb.RotateApiKeyRequest(name=made.api_key.name))
    # The control plane (no claim, bounded by policy) is not bounded in time either.
    assert not control.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"])
    ).api_key.HasField("expire_time")


def test_a_claim_naming_a_key_the_store_lacks_is_bounded_by_its_own_expiry(
    server: RunningServer,
) -> None:
    """Deny by default: when the key cannot be read, the claim's ``exp`` is the bound."""
    claim = server.mint_claim(TENANT, "web", tuple(MINTER_SCOPES), credential_id="key_gone")
    keys = server.stubs("console", claim=claim).keys
    err = _refused(
        lambda: keys.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]))
    )
    assert error_info(err).reason == "LIFETIME_ESCALATION"


def test_an_expiring_key_cannot_reach_a_longer_life_through_a_session(
    server: RunningServer,
) -> None:
    """Second adversary pass (N1): the key's claim opened a session for the key itself (its
    ``sub`` is its own id) within the key's life, and the session's claim then minted a key
    without expiry, because session claims were not bounded. A session whose subject is an API
    key's id bounds what it mints by its own absolute expiry."""
    source, claim = _minter(server, 120)
    source_id = source.api_key.name.rsplit("/", 1)[-1]
    machine = server.stubs("console", claim=claim).keys.CreateSession(
        kpb.CreateSessionRequest(
            parent=PARENT,
            user_subject=source_id,
            scopes=["keys.read", "keys.write"],
            absolute_timeout=_ttl(60),
        )
    )
    session_claim = (
        server.stubs("gateway").keys.VerifySession(kpb.VerifySessionRequest(token=machine.token))
    ).claim
    keys = server.stubs("console", claim=session_claim).keys
    before = _key_count(server)
    for ttl in (None, 3600):
        request = kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"])
        if ttl is not None:
            request.ttl.CopyFrom(_ttl(ttl))
        err = _refused(lambda r=request: keys.CreateApiKey(r))
        _assert_lifetime_escalation(err, machine.session.expire_time.seconds)
    assert _key_count(server) == before
    child = keys.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"], ttl=_ttl(30))
    )
    assert child.api_key.expire_time.ToDatetime() <= machine.session.expire_time.ToDatetime()


def test_the_fresh_read_of_a_minting_call_refuses_a_revoked_credentials_claim(
    server: RunningServer,
) -> None:
    """Adversary 2026-12-04 (helper note on finding 9): the minting methods read the claim's key
    or session fresh for its lifetime bound but ignored its state, so on a replica the change
    feed had not reached yet, a revoked key's claim could still open a session (within the 1 s
    propagation bound). The fresh read now refuses it: CLAIM_REVOKED, as the cut-off would.
    The claim is parsed before the revocation, as a replica behind the feed would hold it."""
    source, claim = _minter(server, None)
    session = server.stubs("control-plane").keys.CreateSession(
        kpb.CreateSessionRequest(parent=PARENT, user_subject="user_1", scopes=["keys.read"])
    )
    session_claim = (
        server.stubs("gateway").keys.VerifySession(kpb.VerifySessionRequest(token=session.token))
    ).claim
    held = [server.runtime.verify_claim(c) for c in (claim, session_claim)]
    assert server.runtime.minting_bound(held[0]) is None  # a key without expiry: unbounded
    assert server.runtime.minting_bound(held[1]) is None  # a user's session: unbounded
    control = server.stubs("control-plane").keys
    control.RevokeApiKey(kpb.RevokeApiKeyRequest(name=source.api_key.name))
    control.RevokeSession(kpb.RevokeSessionRequest(name=session.session.name))
    for parsed in held:
        with pytest.raises(Unauthenticated) as info:
            server.runtime.minting_bound(parsed)
        assert info.value.reason == "CLAIM_REVOKED"
