"""Break-glass access over real mutual TLS: request, approval by a second operator, use, expiry,
revocation, and every way one person might try to get or stretch access alone. Every step and
every call under a grant must be in the tenant's audit chain with the grant id, and the chain
must still verify.

Operators are the dev PKI's ``alice`` and ``bob`` (``spiffe://zumik.local/operator/<name>``).
Expiry is tested by moving the server's break-glass clock (the server runs in this process), not
by sleeping an hour.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import break_glass_service_pb2 as bpb
from zumik.secrets.v1 import break_glass_service_pb2_grpc as bgrpc
from zumik.secrets.v1 import seal_service_pb2 as spb
from zumik.secrets.v1 import seal_service_pb2_grpc as sgrpc
from zumik.secrets.v1 import tenant_service_pb2

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info
from zumik_secrets.app import grants as app_grants
from zumik_secrets.cli.dev_pki import CertPair, issue_client_cert

pytestmark = pytest.mark.integration

ALICE = "spiffe://zumik.local/operator/alice"
BOB = "spiffe://zumik.local/operator/bob"
TENANT = "acme"


def _bg(server: RunningServer, who: str | CertPair) -> bgrpc.BreakGlassServiceStub:
    return bgrpc.BreakGlassServiceStub(server.channel(who))


def _seal_as(
    server: RunningServer, who: str | CertPair, grant_id: str
) -> tuple[sgrpc.SealServiceStub, tuple[tuple[str, str], ...]]:
    return sgrpc.SealServiceStub(server.channel(who)), (("zumik-grant", grant_id),)


def _fails(fn: Callable[[], Any], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    assert error_info(info.value).reason == reason, info.value.details()


def _seal_secret(server: RunningServer, tenant: str = TENANT) -> str:
    claim = server.mint_claim(tenant, "proj", ("secrets.seal",))
    sealed = server.stubs("console", claim=claim).seal.Seal(
        spb.SealRequest(
            parent=f"tenants/{tenant}/projects/proj",
            display_name="provider key",
            plaintext=b"break-glass test plaintext",
        ),
        timeout=10,
    )
    return str(sealed.secret.name)


def _request(
    server: RunningServer,
    who: str = "alice",
    *,
    permission_set: str = "open-secret",
    seconds: int | None = None,
    tenant: str = TENANT,
) -> bpb.Grant:
    req = bpb.RequestGrantRequest(
        parent=f"tenants/{tenant}",
        permission_set=permission_set,
        reason="customer reports provider key unusable",
        ticket="INC-4711",
    )
    if seconds is not None:
        req.duration.CopyFrom(duration_pb2.Duration(seconds=seconds))
    return _bg(server, who).RequestGrant(req, timeout=10).grant


def _approve(server: RunningServer, grant: bpb.Grant, who: str | CertPair = "bob") -> bpb.Grant:
    return _bg(server, who).ApproveGrant(bpb.ApproveGrantRequest(name=grant.name), timeout=10).grant


def _events(server: RunningServer, tenant: str = TENANT) -> list[apb.AuditEvent]:
    audit = server.stubs("auditor").audit
    answer = audit.QueryEvents(
        apb.QueryEventsRequest(parent=f"tenants/{tenant}", page_size=1000), timeout=10
    )
    return list(answer.events)


def _wait_events(
    server: RunningServer, pred: Callable[[apb.AuditEvent], bool], count: int = 1
) -> list[apb.AuditEvent]:
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in _events(server) if pred(e)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _move_clock(server: RunningServer, by: timedelta) -> None:
    start = datetime.now(UTC)
    real = time.monotonic()
    server.runtime.break_glass._clock = lambda: (
        start + by + timedelta(seconds=time.monotonic() - real)
    )


def test_request_approve_use_revoke_all_in_the_audit_chain(zumik_server: RunningServer) -> None:
    secret = _seal_secret(zumik_server)
    grant = _request(zumik_server, "alice")
    assert grant.state == bpb.GRANT_STATE_PENDING
    assert grant.requester == ALICE and grant.grant_id.startswith("bg_")
    assert grant.duration.seconds == 900  # unset: the set's maximum

    seal, md = _seal_as(zumik_server, "alice", grant.grant_id)
    # Pending: not usable yet.
    _fails(
        lambda: seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_NOT_APPROVED",
    )
    approved = _approve(zumik_server, grant, "bob")
    assert approved.state == bpb.GRANT_STATE_ACTIVE and approved.approver == BOB
    assert (
        approved.expire_time.ToDatetime() - approved.approve_time.ToDatetime()
    ).total_seconds() == 900

    opened = seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10)
    assert opened.plaintext == b"break-glass test plaintext"
    # Only the permission set's methods: UpdateSecret is not in open-secret.
    _fails(
        lambda: seal.DeleteSecret(spb.DeleteSecretRequest(name=secret), metadata=md, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_METHOD_NOT_ALLOWED",
    )
    # The approver cannot use the requester's grant (the id is not a bearer token).
    bob_seal, _ = _seal_as(zumik_server, "bob", grant.grant_id)
    _fails(
        lambda: bob_seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_NOT_FOUND",
    )
    # Without the grant, the operator has no access at all.
    _fails(
        lambda: seal.Open(spb.OpenRequest(name=secret), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "METHOD_NOT_ALLOWED",
    )

    revoked = (
        _bg(zumik_server, "bob")
        .RevokeGrant(bpb.RevokeGrantRequest(name=grant.name), timeout=10)
        .grant
    )
    assert revoked.state == bpb.GRANT_STATE_REVOKED and revoked.revoked_by == BOB
    _fails(
        lambda: seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_REVOKED",
    )
    # A revoked grant cannot be approved back to life.
    with pytest.raises(grpc.RpcError) as info:
        _approve(zumik_server, grant, "bob")
    assert error_info(info.value).reason == "GRANT_NOT_PENDING"

    def of_grant(e: apb.AuditEvent) -> bool:
        return e.action.startswith("break_glass.") and e.attributes["grant_id"] == grant.grant_id

    events = _wait_events(zumik_server, of_grant, count=9)
    steps = [(e.action, e.outcome, e.reason) for e in events]
    ok = apb.AUDIT_OUTCOME_SUCCESS
    denied = apb.AUDIT_OUTCOME_DENIED
    assert ("break_glass.request", ok, "REQUESTED") in steps
    assert ("break_glass.approve", ok, "APPROVED") in steps
    assert ("break_glass.use", ok, "ALLOWED_UNDER_GRANT") in steps
    assert ("break_glass.use", denied, "GRANT_NOT_APPROVED") in steps
    assert ("break_glass.use", denied, "GRANT_METHOD_NOT_ALLOWED") in steps
    assert ("break_glass.use", denied, "GRANT_NOT_FOUND") in steps
    assert ("break_glass.revoke", ok, "REVOKED") in steps
    assert ("break_glass.use", denied, "GRANT_REVOKED") in steps
    assert ("break_glass.approve", denied, "GRANT_NOT_PENDING") in steps
    use = next(e for e in events if e.action == "break_glass.use" and e.outcome == ok)
    assert use.actor == ALICE and use.target == secret
    assert use.attributes["method"] == "zumik.secrets.v1.SealService/Open"
    # The grant's request and approval name who did them.
    assert next(e for e in events if e.action == "break_glass.approve").actor == BOB
    # The chain, with all of these in it, verifies.
    report = zumik_server.stubs("auditor").audit.VerifyChain(
        apb.VerifyChainRequest(parent=f"tenants/{TENANT}"), timeout=10
    )
    assert report.ok
    # The alert hook counted them.
    assert app_grants.EVENT_COUNTS["use:success"] >= 1


def test_self_approval_and_same_certificate_are_refused(
    zumik_server: RunningServer, tmp_path: Path
) -> None:
    grant = _request(zumik_server, "alice")
    _fails(
        lambda: _approve(zumik_server, grant, "alice"),
        grpc.StatusCode.PERMISSION_DENIED,
        "SELF_APPROVAL",
    )
    # A second certificate for the same operator identity is still the same person.
    alice2 = issue_client_cert(zumik_server.pki.directory, "alice2", ALICE, out_dir=tmp_path)
    _fails(
        lambda: _approve(zumik_server, grant, alice2),
        grpc.StatusCode.PERMISSION_DENIED,
        "SELF_APPROVAL",
    )
    # A service identity cannot approve (or request) at all: the policy refuses it.
    _fails(
        lambda: _approve(zumik_server, grant, "control-plane"),
        grpc.StatusCode.PERMISSION_DENIED,
        "METHOD_NOT_ALLOWED",
    )
    got = _bg(zumik_server, "bob").GetGrant(bpb.GetGrantRequest(name=grant.name), timeout=10).grant
    assert got.state == bpb.GRANT_STATE_PENDING
    denials = _wait_events(
        zumik_server,
        lambda e: e.action == "break_glass.approve" and e.outcome == apb.AUDIT_OUTCOME_DENIED,
        count=2,
    )
    assert [e.reason for e in denials].count("SELF_APPROVAL") == 2


def test_same_certificate_approval_is_refused_even_under_another_identity(
    zumik_server: RunningServer,
) -> None:
    """The certificate check is its own rule, not a consequence of the identity check: the
    store refuses an approver certificate equal to the requester's whatever identity claims
    it (a certificate always carries one identity, so this is a direct check of the rule)."""
    bg = zumik_server.runtime.break_glass
    from zumik_secrets.app.actor import Actor

    grant = bg.request(Actor(ALICE), "aa" * 32, TENANT, "open-secret", "why", "INC-1", None)
    from zumik_secrets.core.errors import PermissionDenied

    with pytest.raises(PermissionDenied) as info:
        bg.approve(Actor(BOB), "aa" * 32, TENANT, grant.grant_id)
    assert info.value.reason == "SAME_CERTIFICATE"
    with pytest.raises(PermissionDenied) as info:
        bg.approve(Actor(BOB), "", TENANT, grant.grant_id)
    assert info.value.reason == "SAME_CERTIFICATE"
    # And the store refuses it on its own, below the use case.
    assert not zumik_server.runtime.store.grants.approve(
        grant.grant_id, BOB, "aa" * 32, datetime.now(UTC)
    )


def test_over_long_grants_are_refused_and_never_extended(zumik_server: RunningServer) -> None:
    _fails(
        lambda: _request(zumik_server, "alice", seconds=901),
        grpc.StatusCode.INVALID_ARGUMENT,
        "GRANT_TOO_LONG",
    )
    _fails(
        lambda: _request(zumik_server, "alice", permission_set="inspect-metadata", seconds=3601),
        grpc.StatusCode.INVALID_ARGUMENT,
        "GRANT_TOO_LONG",
    )
    _fails(
        lambda: _request(zumik_server, "alice", permission_set="no-such-set"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_PERMISSION_SET",
    )
    grant = _request(zumik_server, "alice", seconds=600)
    first = _approve(zumik_server, grant, "bob")
    assert first.duration.seconds == 600
    # A second approval (which would restart the clock) is refused: no extension.
    with pytest.raises(grpc.RpcError) as info:
        _approve(zumik_server, grant, "bob")
    assert error_info(info.value).reason == "GRANT_NOT_PENDING"
    again = (
        _bg(zumik_server, "alice").GetGrant(bpb.GetGrantRequest(name=grant.name), timeout=10).grant
    )
    assert again.expire_time == first.expire_time


def test_calls_after_expiry_are_refused(zumik_server: RunningServer) -> None:
    secret = _seal_secret(zumik_server)
    grant = _request(zumik_server, "alice", seconds=300)
    _approve(zumik_server, grant, "bob")
    seal, md = _seal_as(zumik_server, "alice", grant.grant_id)
    assert seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10).plaintext
    _move_clock(zumik_server, timedelta(seconds=301))
    _fails(
        lambda: seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_EXPIRED",
    )
    got = _bg(zumik_server, "bob").GetGrant(bpb.GetGrantRequest(name=grant.name), timeout=10).grant
    assert got.state == bpb.GRANT_STATE_EXPIRED
    assert _wait_events(
        zumik_server,
        lambda e: e.action == "break_glass.use" and e.reason == "GRANT_EXPIRED",
    )


def test_unapproved_request_dies_after_the_approval_window(zumik_server: RunningServer) -> None:
    grant = _request(zumik_server, "alice")
    _move_clock(zumik_server, timedelta(seconds=901))
    _fails(
        lambda: _approve(zumik_server, grant, "bob"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "GRANT_NOT_PENDING",
    )
    got = _bg(zumik_server, "bob").GetGrant(bpb.GetGrantRequest(name=grant.name), timeout=10)
    assert got.grant.state == bpb.GRANT_STATE_EXPIRED


def test_grant_is_bound_to_its_tenant_and_claims_do_not_mix(zumik_server: RunningServer) -> None:
    other_secret = _seal_secret(zumik_server, tenant="globex")
    own_secret = _seal_secret(zumik_server)
    grant = _request(zumik_server, "alice")
    _approve(zumik_server, grant, "bob")
    seal, md = _seal_as(zumik_server, "alice", grant.grant_id)
    _fails(
        lambda: seal.Open(spb.OpenRequest(name=other_secret), metadata=md, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_WRONG_TENANT",
    )
    wildcard = "tenants/-/projects/proj/secrets/" + own_secret.rsplit("/", 1)[-1]
    with pytest.raises(grpc.RpcError) as info:
        seal.Open(spb.OpenRequest(name=wildcard), metadata=md, timeout=10)
    assert info.value.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # A claim and a grant together: refused, whichever would have allowed it.
    claim = zumik_server.mint_claim(TENANT, "proj", ("secrets.open",))
    both = (*md, ("zumik-claim", claim))
    _fails(
        lambda: seal.Open(spb.OpenRequest(name=own_secret), metadata=both, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_WITH_CLAIM",
    )
    # Another tenant's grant name answers NOT_FOUND like a missing one.
    foreign = grant.name.replace(f"tenants/{TENANT}/", "tenants/globex/")
    with pytest.raises(grpc.RpcError) as info:
        _bg(zumik_server, "bob").GetGrant(bpb.GetGrantRequest(name=foreign), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # A service identity presenting a grant id gets nothing either.
    exe = sgrpc.SealServiceStub(zumik_server.channel("executor"))
    _fails(
        lambda: exe.Open(spb.OpenRequest(name=own_secret), metadata=md, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "UNKNOWN_IDENTITY",
    )
    # A made-up grant id.
    fake = (("zumik-grant", "bg_" + "A" * 22),)
    _fails(
        lambda: seal.Open(spb.OpenRequest(name=own_secret), metadata=fake, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_NOT_FOUND",
    )


def test_list_grants_shows_the_tenants_grants(zumik_server: RunningServer) -> None:
    a = _request(zumik_server, "alice")
    b = _request(zumik_server, "bob", permission_set="inspect-metadata")
    _request(zumik_server, "bob", tenant="globex")
    listed = _bg(zumik_server, "alice").ListGrants(
        bpb.ListGrantsRequest(parent=f"tenants/{TENANT}"), timeout=10
    )
    assert {g.grant_id for g in listed.grants} == {a.grant_id, b.grant_id}


def test_a_grant_reaches_nothing_in_a_purged_project(zumik_server: RunningServer) -> None:
    """Adversary finding (2026-12-04): calls under an active grant skipped the purged-scope
    check (NOT_FOUND, or a row that raced the purge), where a call without a claim gets
    FAILED_PRECONDITION SCOPE_PURGED. A grant reaches no more of a purged scope than the policy."""
    tenant = "bgpurged"
    secret = _seal_secret(zumik_server, tenant=tenant)
    grant = _request(zumik_server, "alice", tenant=tenant)
    _approve(zumik_server, grant, "bob")
    seal, md = _seal_as(zumik_server, "alice", grant.grant_id)
    assert seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10).plaintext
    control = zumik_server.stubs("control-plane")
    project = f"tenants/{tenant}/projects/proj"
    control.tenants.PurgeProject(
        tenant_service_pb2.PurgeProjectRequest(name=project, confirm=project), timeout=60
    )
    for call in (
        lambda: seal.Open(spb.OpenRequest(name=secret), metadata=md, timeout=10),
        lambda: seal.GetSecret(spb.GetSecretRequest(name=secret), metadata=md, timeout=10),
    ):
        _fails(call, grpc.StatusCode.FAILED_PRECONDITION, "SCOPE_PURGED")
