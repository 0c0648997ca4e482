"""The five findings of the adversarial review (issue 14), replayed over gRPC as an attacker
holding one legitimate identity would: each is refused, and the refusal is audited.

1. scope escalation by minting (CreateApiKey, RotateApiKey);
2. impersonation by session minting (CreateSession, RotateSession);
3. revocation not reaching claims (API key, session);
4. purge not reaching claims (late Seal/Open/MintHandle; a second receipt);
5. the project boundary on tenant-level resources (handles, audit events).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2
from zumik.secrets.v1 import fingerprint_service_pb2 as fpb
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import seal_service_pb2 as spb
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info, status_bytes

pytestmark = pytest.mark.integration

TENANT = "acme"
PARENT = f"tenants/{TENANT}/projects/web"
VALID = common_pb2.VERIFY_RESULT_VALID
EVERYTHING = [
    "secrets.open",
    "secrets.seal",
    "tenant.admin",
    "tenant.purge",
    "audit.read",
    "audit.read.tenant",
]


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _deny_audited(server: RunningServer, tenant: str, reason: str, method: str) -> None:
    auditor = server.stubs("auditor").audit
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = auditor.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{tenant}", action="authz.deny"), timeout=10
        ).events
        if any(e.reason == reason and e.attributes["method"].endswith(method) for e in events):
            return
        time.sleep(0.05)
    pytest.fail(f"no authz.deny {reason} audited for {method}")


def _verify_key(server: RunningServer, raw: str) -> kpb.VerifyApiKeyResponse:
    answer = server.stubs("gateway").keys.VerifyApiKey(kpb.VerifyApiKeyRequest(key=raw))
    assert answer.result == VALID
    return answer


def test_finding_1_a_keys_write_claim_cannot_mint_or_rotate_wider_keys(
    zumik_server: RunningServer,
) -> None:
    server = zumik_server
    control = server.stubs("control-plane").keys
    narrow = control.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.write"]))
    attacker = server.stubs("console", claim=_verify_key(server, narrow.raw_key).claim).keys
    err = _refused(
        lambda: attacker.CreateApiKey(
            kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.write", *EVERYTHING])
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert error_info(err).reason == "SCOPE_ESCALATION"
    _deny_audited(server, TENANT, "SCOPE_ESCALATION", "CreateApiKey")
    wide = control.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=EVERYTHING))
    err = _refused(lambda: attacker.RotateApiKey(kpb.RotateApiKeyRequest(name=wide.api_key.name)))
    assert error_info(err).reason == "SCOPE_ESCALATION"
    _deny_audited(server, TENANT, "SCOPE_ESCALATION", "RotateApiKey")
    # The wide key was not rotated: it still verifies, and no new key exists.
    assert _verify_key(server, wide.raw_key).scopes == EVERYTHING


def test_finding_2_a_sessions_write_claim_cannot_impersonate_or_widen(
    zumik_server: RunningServer,
) -> None:
    server = zumik_server
    control = server.stubs("control-plane").keys
    # Login: the control plane, acting without a claim by policy, still creates any user's session.
    mine = control.CreateSession(
        kpb.CreateSessionRequest(parent=PARENT, user_subject="mallory", scopes=["sessions.write"])
    )
    claim = (
        server.stubs("gateway").keys.VerifySession(kpb.VerifySessionRequest(token=mine.token)).claim
    )
    attacker = server.stubs("console", claim=claim).keys
    err = _refused(
        lambda: attacker.CreateSession(
            kpb.CreateSessionRequest(parent=PARENT, user_subject="admin", scopes=["sessions.write"])
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert error_info(err).reason == "IMPERSONATION_NOT_ALLOWED"
    _deny_audited(server, TENANT, "IMPERSONATION_NOT_ALLOWED", "CreateSession")
    err = _refused(
        lambda: attacker.CreateSession(
            kpb.CreateSessionRequest(
                parent=PARENT, user_subject="mallory", scopes=["sessions.write", *EVERYTHING]
            )
        )
    )
    assert error_info(err).reason == "SCOPE_ESCALATION"
    err = _refused(
        lambda: attacker.RotateSession(
            kpb.RotateSessionRequest(name=mine.session.name, scopes=EVERYTHING)
        )
    )
    assert error_info(err).reason == "SCOPE_ESCALATION"
    _deny_audited(server, TENANT, "SCOPE_ESCALATION", "RotateSession")
    victim = control.CreateSession(
        kpb.CreateSessionRequest(parent=PARENT, user_subject="admin", scopes=["sessions.write"])
    )
    err = _refused(
        lambda: attacker.RotateSession(kpb.RotateSessionRequest(name=victim.session.name))
    )
    assert error_info(err).reason == "IMPERSONATION_NOT_ALLOWED"
    # The victim's session was not rotated: its token still verifies.
    ok = server.stubs("gateway").keys.VerifySession(kpb.VerifySessionRequest(token=victim.token))
    assert ok.result == VALID


def _until_refused(call: Callable[[], object], bound: float = 1.0) -> float:
    started = time.monotonic()
    while True:
        try:
            call()
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            assert error_info(err).reason == "CLAIM_REVOKED"
            return time.monotonic() - started
        if time.monotonic() - started > bound:
            pytest.fail(f"claim still accepted {bound} s after the revocation")
        time.sleep(0.01)


def test_finding_3_revocation_reaches_the_claims_minted_before_it(
    zumik_server: RunningServer,
) -> None:
    server = zumik_server
    control = server.stubs("control-plane").keys
    key = control.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]))
    keys = server.stubs("console", claim=_verify_key(server, key.raw_key).claim).keys
    keys.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT))  # accepted (and now cached)
    control.RevokeApiKey(kpb.RevokeApiKeyRequest(name=key.api_key.name))
    delay = _until_refused(lambda: keys.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT)))
    session = control.CreateSession(
        kpb.CreateSessionRequest(parent=PARENT, user_subject="u", scopes=["keys.read"])
    )
    claim = (
        server.stubs("gateway")
        .keys.VerifySession(kpb.VerifySessionRequest(token=session.token))
        .claim
    )
    keys = server.stubs("console", claim=claim).keys
    keys.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT))
    control.RevokeSession(kpb.RevokeSessionRequest(name=session.session.name))
    delay = max(
        delay, _until_refused(lambda: keys.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT)))
    )
    print(f"\nclaim refused after revocation, same server (SQLite): {delay * 1000:.0f} ms")
    # The refusal is audited (in the service-wide chain: a refused claim names no tenant).
    _deny_audited(server, "-", "CLAIM_REVOKED", "ListApiKeys")


def test_finding_4_purge_reaches_claims_and_nothing_is_recreated(
    zumik_server: RunningServer,
) -> None:
    server = zumik_server
    tenant = "doomed"
    parent = f"tenants/{tenant}/projects/web"
    control = server.stubs("control-plane")
    key = control.keys.CreateApiKey(
        kpb.CreateApiKeyRequest(
            parent=parent, scopes=["secrets.seal", "secrets.open", "handles.write"]
        )
    )
    claim = _verify_key(server, key.raw_key).claim
    stubs = server.stubs("console", claim=claim)
    sealed = stubs.seal.Seal(spb.SealRequest(parent=parent, plaintext=b"provider key")).secret
    receipt = control.tenants.PurgeTenant(
        tpb.PurgeTenantRequest(name=f"tenants/{tenant}", confirm=f"tenants/{tenant}"), timeout=30
    ).receipt
    executor = server.stubs("executor", claim=claim)
    for late in (
        lambda: stubs.seal.Seal(spb.SealRequest(parent=parent, plaintext=b"again")),
        lambda: executor.seal.Open(spb.OpenRequest(name=sealed.name)),
        lambda: stubs.fingerprints.MintHandle(
            fpb.MintHandleRequest(parent=f"tenants/{tenant}", kind="hdl", reference="r")
        ),
    ):
        err = _refused(late)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert error_info(err).reason == "CLAIM_REVOKED"
    # Also a claim minted after the purge, and the control plane without a claim.
    fresh = server.mint_claim(tenant, "web", ("secrets.seal",), credential_id="key_fresh")
    err = _refused(
        lambda: server.stubs("console", claim=fresh).seal.Seal(
            spb.SealRequest(parent=parent, plaintext=b"again")
        )
    )
    assert error_info(err).reason == "CLAIM_REVOKED"
    err = _refused(
        lambda: control.keys.CreateApiKey(kpb.CreateApiKeyRequest(parent=parent, scopes=["a"]))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert error_info(err).reason == "SCOPE_PURGED"
    # The refusal of a claim is audited (in the service chain: the claim named no live tenant).
    assert not server.runtime.store.purges.scope_has_data(tenant, None)
    again = control.tenants.PurgeTenant(
        tpb.PurgeTenantRequest(name=f"tenants/{tenant}", confirm=f"tenants/{tenant}"), timeout=30
    ).receipt
    assert again == receipt  # one purge, one receipt


def test_finding_5_a_project_claim_stays_in_its_project(zumik_server: RunningServer) -> None:
    server = zumik_server
    a = server.stubs(
        "console",
        claim=server.mint_claim(
            TENANT, "proj-a", ("handles.read", "audit.read", "secrets.seal"), subject="a"
        ),
    )
    b = server.stubs(
        "console",
        claim=server.mint_claim(
            TENANT, "proj-b", ("handles.write", "handles.read", "secrets.seal"), subject="b"
        ),
    )
    handle = b.fingerprints.MintHandle(
        fpb.MintHandleRequest(parent=f"tenants/{TENANT}", kind="hdl", reference="b-secret-ref")
    ).handle
    assert b.fingerprints.ResolveHandle(fpb.ResolveHandleRequest(name=handle.name)).handle
    err = _refused(lambda: a.fingerprints.ResolveHandle(fpb.ResolveHandleRequest(name=handle.name)))
    assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    missing = f"tenants/{TENANT}/handles/hdl_{'0' * 22}"
    err_missing = _refused(
        lambda: b.fingerprints.ResolveHandle(fpb.ResolveHandleRequest(name=missing))
    )
    assert status_bytes(err) == status_bytes(err_missing).replace(
        missing.encode(), handle.name.encode()
    )
    for stubs, project in ((a, "proj-a"), (b, "proj-b")):
        stubs.seal.Seal(
            spb.SealRequest(parent=f"tenants/{TENANT}/projects/{project}", plaintext=b"x")
        )
    deadline = time.monotonic() + 5
    while True:  # audit events of a seal are committed by the writer shortly after the call
        events = a.audit.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{TENANT}", page_size=1000)
        ).events
        if any(e.action == "secret.seal" for e in events) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any(e.action == "secret.seal" for e in events)  # its own project's events
    assert all(e.target.startswith(f"tenants/{TENANT}/projects/proj-a") for e in events)
    assert not any("proj-b" in e.target for e in events)
    # The whole chain needs the tenant-wide right (the auditor identity may export, but with a
    # project claim the claim's rules apply).
    a_claim = server.mint_claim(TENANT, "proj-a", ("audit.read",), subject="a")
    auditor = server.stubs("auditor", claim=a_claim).audit
    err = _refused(
        lambda: list(auditor.ExportEvents(apb.ExportEventsRequest(parent=f"tenants/{TENANT}")))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert error_info(err).metadata["scope"] == "audit.read.tenant"
    wide = server.mint_claim(TENANT, "proj-a", ("audit.read", "audit.read.tenant"), subject="a")
    exporter = server.stubs("auditor", claim=wide).audit
    deadline = time.monotonic() + 5
    while True:  # B's seal event may still be in the audit writer's batch
        lines = list(exporter.ExportEvents(apb.ExportEventsRequest(parent=f"tenants/{TENANT}")))
        if any(b"proj-b" in line.line.encode() for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any(b"proj-b" in line.line.encode() for line in lines)
