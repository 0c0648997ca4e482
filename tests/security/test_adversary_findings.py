"""Findings of the independent adversary run (attacks across methods and over time), replayed
over gRPC holding one identity (console) plus the claims a gateway mints from keys/sessions.

1. A claim outlived the expiry of the credential it was minted from: an API key created with a
   ``ttl`` (or a session at its absolute or idle timeout) stopped verifying, but a claim minted
   from it a moment earlier kept working for the whole claim TTL (5 minutes), although the
   contract (``CLAIM_REVOKED``) says a claim dies with its credential's expiry.
2. Revoking or rotating a credential answered before the replica applied the change to its
   claim revocations: the claims stayed accepted until the watcher's next poll.
3. QueryEvents dropped an unknown ``outcome`` filter silently instead of refusing it.
4. A claim minted in the same second as a narrowing RotateSession kept the old scopes.
5. (issue 18) WatchRevocations took a ``resume_after`` beyond anything the server had issued
   (a position from before a database restore, or forged) as "nothing missed": ``synced`` said
   ``resync: false`` and the events the restored database recorded at positions up to it were
   never sent, so a caching gateway kept answering a credential revoked after the restore.
6. (issue 18, continued) The fix of 5 caught a resume position only when it was ahead of the
   server's: server C on a backup of server A's database (both at 1327), the gateway followed A
   to 1337, a key was revoked on C (C's 1328) and more changes followed; resuming on C with
   ``resume_after=1337`` gave ``resync: false`` and only C's events after 1337, so the
   revocation at 1328 never reached the cache, which kept answering VALID. A position of
   another database (a PostgreSQL server's 3 sent to a SQLite server) was accepted the same
   way. Positions now carry ``position_tag`` (the change record's digest), sent back as
   ``resume_tag``; a tag that is not the server's own at that position means ``resync``.
7. (issue 18, F5) A call with several ``zumik-claim`` headers was authorized with the first
   (a proxy that reads the last one would disagree with the server about who is calling); an
   empty first header made the call count as carrying no claim, so ``WatchRevocations``, which
   refuses any call carrying a claim, served it, and so did a ``zumik-claim-bin`` header.
8. (issue 18, N4) The break-glass header ``zumik-grant`` was read the same first-one-wins way:
   with an active grant, (valid, bogus), (valid, empty), (valid, valid) and a
   ``zumik-grant-bin`` entry before the valid one were accepted, (bogus, valid) and
   (empty, valid) refused ``GRANT_NOT_FOUND``: a proxy and the server could read different
   grants. Now exactly one text entry, else PERMISSION_DENIED ``GRANT_MALFORMED`` on every
   method before anything else.
9. An API key's claim opened a session for its own subject (a machine's session); after
   RevokeApiKey of that key the session still verified VALID with ``sub`` = the revoked key's
   id, and its claim created a 29-day API key. Revoking a key now revokes its machine sessions
   in the same transaction (their claims are refused, ``CLAIM_REVOKED``); a rotation without
   grace does the same, one with grace bounds them to the grace's end.
10. 8 concurrent RotateSession calls on one session all answered OK with a new token, but only
   one token verified. The rotation is a compare and swap on the token it read: exactly one
   wins, the others get FAILED_PRECONDITION ``SESSION_ROTATED`` (as concurrent grace-0
   RotateApiKey calls get ``API_KEY_REVOKED``).
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import break_glass_service_pb2 as bpb
from zumik.secrets.v1 import break_glass_service_pb2_grpc as bgrpc
from zumik.secrets.v1 import common_pb2
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import seal_service_pb2 as spb
from zumik.secrets.v1 import seal_service_pb2_grpc as sgrpc

from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from tests.integration.test_gateway_cache import copy_of_database, resume_feed, revoke_new_key

pytestmark = pytest.mark.integration

PARENT = "tenants/acme/projects/web"
VALID = common_pb2.VERIFY_RESULT_VALID


def test_claim_never_outlives_its_api_keys_expiry(zumik_server: RunningServer) -> None:
    server = zumik_server
    control = server.stubs("control-plane").keys
    created = control.CreateApiKey(
        kpb.CreateApiKeyRequest(
            parent=PARENT, scopes=["keys.read"], ttl=duration_pb2.Duration(seconds=2)
        )
    )
    expire = created.api_key.expire_time.seconds + created.api_key.expire_time.nanos / 1e9
    verified = server.stubs("gateway").keys.VerifyApiKey(
        kpb.VerifyApiKeyRequest(key=created.raw_key)
    )
    assert verified.result == VALID
    # The claim says it dies no later than its key.
    assert verified.claim_expire_time.seconds <= expire
    attacker = server.stubs("console", claim=verified.claim).keys
    attacker.GetApiKey(kpb.GetApiKeyRequest(name=created.api_key.name), timeout=10)
    # Past the key's expiry (plus the verifier's clock-skew leeway of 5 s) the claim is dead.
    time.sleep(max(0.0, verified.claim_expire_time.seconds + 6 - time.time()))
    assert (
        server.stubs("gateway")
        .keys.VerifyApiKey(kpb.VerifyApiKeyRequest(key=created.raw_key))
        .result
        == common_pb2.VERIFY_RESULT_EXPIRED
    )
    with pytest.raises(grpc.RpcError) as caught:
        attacker.GetApiKey(kpb.GetApiKeyRequest(name=created.api_key.name), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert error_info(caught.value).reason.startswith("CLAIM_")


def test_session_claim_never_outlives_the_sessions_absolute_or_idle_timeout(
    zumik_server: RunningServer,
) -> None:
    server = zumik_server
    control = server.stubs("control-plane").keys
    created = control.CreateSession(
        kpb.CreateSessionRequest(
            parent=PARENT,
            user_subject="carol",
            scopes=["keys.read"],
            idle_timeout=duration_pb2.Duration(seconds=60),
            absolute_timeout=duration_pb2.Duration(seconds=90),
        )
    )
    session = created.session
    before = time.time()
    verified = server.stubs("gateway").keys.VerifySession(
        kpb.VerifySessionRequest(token=created.token)
    )
    assert verified.result == VALID
    # Idle timeout: unused for 60 s the session dies; a claim must not outlive that.
    assert verified.claim_expire_time.seconds <= time.time() + 60
    assert verified.claim_expire_time.seconds <= session.expire_time.seconds
    assert verified.claim_expire_time.seconds >= int(before)


def test_revoking_or_rotating_a_credential_refuses_its_claims_before_the_call_answers(
    zumik_server: RunningServer,
) -> None:
    """Finding 2: RevokeApiKey, RotateApiKey (no grace), RevokeSession, RotateSession (to
    narrower scopes) and RevokeUserSessions answered OK while the same replica still accepted
    the credential's claims until its change watcher's next poll (up to 250 ms, more under
    load): a stolen claim outlived an acknowledged revocation. Purge already applied its change
    before answering; every credential change now does."""
    server = zumik_server
    control = server.stubs("control-plane").keys
    gateway = server.stubs("gateway").keys
    keys = [
        control.CreateApiKey(
            kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read", "keys.write"])
        )
        for _ in range(2)
    ]
    sessions = [
        control.CreateSession(
            kpb.CreateSessionRequest(
                parent=PARENT, user_subject=f"user{i}", scopes=["keys.read", "sessions.write"]
            )
        )
        for i in range(3)
    ]
    key_claims = [gateway.VerifyApiKey(kpb.VerifyApiKeyRequest(key=k.raw_key)) for k in keys]
    ses_claims = [gateway.VerifySession(kpb.VerifySessionRequest(token=s.token)) for s in sessions]
    assert all(v.result == VALID for v in [*key_claims, *ses_claims])
    time.sleep(1.1)  # the claims' whole-second iat is before every change below
    changes = [
        lambda s: s.RevokeApiKey(kpb.RevokeApiKeyRequest(name=keys[0].api_key.name)),
        lambda s: s.RotateApiKey(kpb.RotateApiKeyRequest(name=keys[1].api_key.name)),
        lambda s: s.RevokeSession(kpb.RevokeSessionRequest(name=sessions[0].session.name)),
        lambda s: s.RotateSession(
            kpb.RotateSessionRequest(name=sessions[1].session.name, scopes=["sessions.write"])
        ),
        lambda s: s.RevokeUserSessions(
            kpb.RevokeUserSessionsRequest(parent=PARENT, user_subject="user2")
        ),
    ]
    for change, verified in zip(changes, [*key_claims, *ses_claims], strict=True):
        holder = server.stubs("console", claim=verified.claim).keys
        change(holder)
        # At once, on the replica that answered: no window for the claim's holder.
        with pytest.raises(grpc.RpcError) as caught:
            holder.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT, page_size=1), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert error_info(caught.value).reason == "CLAIM_REVOKED"


def test_query_events_refuses_an_unknown_outcome_instead_of_dropping_the_filter(
    zumik_server: RunningServer,
) -> None:
    """Finding 3: QueryEvents with an outcome value the server does not know (99) answered OK
    with events of every outcome: the filter was silently dropped."""
    server = zumik_server
    control = server.stubs("control-plane").keys
    created = control.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["audit.read"]))
    claim = (
        server.stubs("gateway")
        .keys.VerifyApiKey(kpb.VerifyApiKeyRequest(key=created.raw_key))
        .claim
    )
    audit = server.stubs("console", claim=claim).audit
    with pytest.raises(grpc.RpcError) as caught:
        audit.QueryEvents(apb.QueryEventsRequest(parent="tenants/acme", outcome=99), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error_info(caught.value).metadata["field"] == "outcome"
    # Known values still filter.
    audit.QueryEvents(
        apb.QueryEventsRequest(parent="tenants/acme", outcome=apb.AUDIT_OUTCOME_SUCCESS),
        timeout=10,
    )


def test_a_claim_minted_in_the_second_of_a_narrowing_session_rotation_dies_with_it(
    zumik_server: RunningServer,
) -> None:
    """Finding 4: a claim minted from a session's old token in the same second as a
    RotateSession that narrowed the scopes kept the old scopes for its whole TTL (claims carry
    whole seconds and the cut refused only earlier seconds): 10 of 10 tries survived. The cut
    now covers the rotation's second, and the new token's claims start after it."""
    server = zumik_server
    control = server.stubs("control-plane").keys
    gateway = server.stubs("gateway").keys
    for i in range(3):
        created = control.CreateSession(
            kpb.CreateSessionRequest(
                parent=PARENT, user_subject=f"dana{i}", scopes=["keys.read", "sessions.write"]
            )
        )
        old = gateway.VerifySession(kpb.VerifySessionRequest(token=created.token))
        holder = server.stubs("console", claim=old.claim).keys
        rotated = holder.RotateSession(
            kpb.RotateSessionRequest(name=created.session.name, scopes=["sessions.write"])
        )
        with pytest.raises(grpc.RpcError) as caught:
            holder.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT, page_size=1), timeout=10)
        assert error_info(caught.value).reason == "CLAIM_REVOKED"
        # The new token's claim works at once, with the narrowed scopes only.
        new = gateway.VerifySession(kpb.VerifySessionRequest(token=rotated.token))
        assert new.result == VALID and list(new.scopes) == ["sessions.write"]
        narrowed = server.stubs("console", claim=new.claim).keys
        narrowed.RevokeUserSessions(
            kpb.RevokeUserSessionsRequest(parent=PARENT, user_subject="nobody"), timeout=10
        )


def test_a_resume_position_the_server_never_issued_forces_a_resync(
    zumik_server: RunningServer,
) -> None:
    """Finding 5: after a restore of the database, a gateway resumed from its old position P;
    the server, now at a lower position, answered ``synced`` without ``resync`` and replayed
    only events after P, so a revocation recorded after the restore at a position <= P never
    reached the stream (reproduced on a real SQLite server by backup, 5 revocations, restore,
    revoke: ``resume_after=5 -> synced(resync=false)`` and no event). A position ahead of the
    server's own cannot be trusted: the subscriber must drop its cache."""
    server = zumik_server
    control = server.stubs("control-plane").keys
    created = control.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]))
    control.RevokeApiKey(kpb.RevokeApiKeyRequest(name=created.api_key.name))
    gateway = server.stubs("gateway").keys
    stream = gateway.WatchRevocations(kpb.WatchRevocationsRequest(), timeout=10)
    head = next(stream)
    stream.cancel()
    assert head.HasField("synced") and head.synced.resync
    for forged in (head.position + 1, head.position + 1_000_000, 2**63 - 1):
        stream = gateway.WatchRevocations(
            kpb.WatchRevocationsRequest(resume_after=forged), timeout=10
        )
        first = next(stream)
        stream.cancel()
        assert first.HasField("synced")
        assert first.synced.resync, f"resume_after={forged} ahead of {head.position} kept the cache"
    # A position the server did issue still resumes without a resync.
    stream = gateway.WatchRevocations(
        kpb.WatchRevocationsRequest(resume_after=head.position), timeout=10
    )
    first = next(stream)
    stream.cancel()
    assert first.HasField("synced") and not first.synced.resync


def test_a_resume_position_of_another_history_forces_a_resync(
    zumik_server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Finding 6: a restored database (server C on a backup of A's) records its own changes
    at positions the gateway already passed on A; resuming on C with A's position and tag
    must say resync, or C's revocation at an earlier position is never delivered."""
    url = f"sqlite:///{tmp_path}/a/zumik.db"
    backup = zumik_server_factory(url)
    revoke_new_key(backup)
    backup.server.drain(grace=0.5)
    with copy_of_database(url, tmp_path) as restored:
        a = zumik_server_factory(url)
        c = zumik_server_factory(restored)
        assert resume_feed(a)[0].position == resume_feed(c)[0].position
        for _ in range(10):
            revoke_new_key(a)
        head, _ = resume_feed(a)  # the gateway's last message applied on A
        revoked_on_c = revoke_new_key(c)
        while resume_feed(c)[0].position <= head.position + 5:
            revoke_new_key(c)
        synced, replayed = resume_feed(c, head.position, head.position_tag)
        assert synced.synced.resync, (
            f"resume_after={head.position} of A's history kept the cache on C, whose "
            f"revocation of {revoked_on_c} at an earlier position is never replayed"
        )
        assert revoked_on_c not in replayed
        c.server.drain(grace=0.5)


def _claim_of(server: RunningServer, parent: str, scopes: list[str]) -> str:
    created = server.stubs("control-plane").keys.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=parent, scopes=scopes)
    )
    verified = server.stubs("gateway").keys.VerifyApiKey(
        kpb.VerifyApiKeyRequest(key=created.raw_key)
    )
    assert verified.result == VALID
    return verified.claim


def _refused_malformed(call: Any, what: str, *, header: bool = True) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code = caught.value.code()  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.UNAUTHENTICATED, f"{what}: {code} {caught.value}"
    info = error_info(caught.value)
    assert info.reason == "CLAIM_MALFORMED", f"{what}: {info.reason}"
    if header:  # refused for the shape of its headers, not for the token in one
        assert info.metadata["header"] == "zumik-claim"


def test_repeated_empty_or_binary_claim_headers_are_refused_on_every_method(
    zumik_server: RunningServer,
) -> None:
    """Finding 7: two claims (A,B and B,A), an empty first header before a valid claim, and a
    ``zumik-claim-bin`` header are each refused UNAUTHENTICATED ``CLAIM_MALFORMED`` on a console
    method, on WatchRevocations (which answered the empty-first and binary cases with a
    subscription), and on an open method (health), before anything else."""
    server = zumik_server
    claim_a = _claim_of(server, PARENT, ["keys.read"])
    claim_b = _claim_of(server, "tenants/beta/projects/web", ["keys.read", "keys.write"])
    attacks: dict[str, tuple[tuple[str, str | bytes], ...]] = {
        "A,B": (("zumik-claim", claim_a), ("zumik-claim", claim_b)),
        "B,A": (("zumik-claim", claim_b), ("zumik-claim", claim_a)),
        "empty,A": (("zumik-claim", ""), ("zumik-claim", claim_a)),
        "A,empty": (("zumik-claim", claim_a), ("zumik-claim", "")),
        "bin": (("zumik-claim-bin", claim_a.encode()),),
        "A,bin": (("zumik-claim", claim_a), ("zumik-claim-bin", claim_a.encode())),
    }
    console = server.stubs("console").keys
    gateway = server.stubs("gateway").keys
    health = health_pb2_grpc.HealthStub(server.channel("gateway"))
    # The one-claim calls work (the attacks below differ only in their claim headers).
    for parent, claim in ((PARENT, claim_a), ("tenants/beta/projects/web", claim_b)):
        console.ListApiKeys(
            kpb.ListApiKeysRequest(parent=parent, page_size=1),
            metadata=(("zumik-claim", claim),),
            timeout=10,
        )
    for label, metadata in attacks.items():
        for parent in (PARENT, "tenants/beta/projects/web"):
            _refused_malformed(
                lambda parent=parent, metadata=metadata: console.ListApiKeys(
                    kpb.ListApiKeysRequest(parent=parent, page_size=1),
                    metadata=metadata,
                    timeout=10,
                ),
                f"[{label}] ListApiKeys {parent}",
            )
        _refused_malformed(
            lambda metadata=metadata: console.CreateApiKey(
                kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]),
                metadata=metadata,
                timeout=10,
            ),
            f"[{label}] CreateApiKey",
        )
        _refused_malformed(
            lambda metadata=metadata: next(
                gateway.WatchRevocations(
                    kpb.WatchRevocationsRequest(), metadata=metadata, timeout=10
                )
            ),
            f"[{label}] WatchRevocations",
        )
        _refused_malformed(
            lambda metadata=metadata: health.Check(
                health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10
            ),
            f"[{label}] Health/Check",
        )
    # Nothing was created in acme by the refused CreateApiKey calls.
    listed = server.stubs("control-plane").keys.ListApiKeys(
        kpb.ListApiKeysRequest(parent=PARENT, page_size=100), timeout=10
    )
    assert len(listed.api_keys) == 1


def test_watch_revocations_refuses_any_call_with_a_claim_header(
    zumik_server: RunningServer,
) -> None:
    """Finding 7: the feed spans every tenant; a call with one claim header is refused too,
    whatever the claim: a valid one (CLAIM_NOT_ACCEPTED) or one that does not verify (its
    claim reason); only a call without any claim header subscribes."""
    server = zumik_server
    claim = _claim_of(server, PARENT, ["keys.read"])
    gateway = server.stubs("gateway").keys
    with pytest.raises(grpc.RpcError) as caught:
        next(
            gateway.WatchRevocations(
                kpb.WatchRevocationsRequest(), metadata=(("zumik-claim", claim),), timeout=10
            )
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert error_info(caught.value).reason == "CLAIM_NOT_ACCEPTED"
    for bad in (" ", "not-a-claim"):
        _refused_malformed(
            lambda bad=bad: next(
                gateway.WatchRevocations(
                    kpb.WatchRevocationsRequest(), metadata=(("zumik-claim", bad),), timeout=10
                )
            ),
            f"WatchRevocations with claim {bad!r}",
            header=not bad.strip(),
        )
    stream = gateway.WatchRevocations(kpb.WatchRevocationsRequest(), timeout=10)
    first = next(stream)
    stream.cancel()
    assert first.HasField("synced")


def _active_grant(server: RunningServer) -> tuple[str, str]:
    """A secret of acme and alice's active ``open-secret`` grant on acme (approved by bob)."""
    claim = server.mint_claim("acme", "web", ("secrets.seal",))
    name = (
        server.stubs("console", claim=claim)
        .seal.Seal(
            spb.SealRequest(parent=PARENT, display_name="provider key", plaintext=b"pt-n4"),
            timeout=10,
        )
        .secret.name
    )
    grant = (
        bgrpc.BreakGlassServiceStub(server.channel("alice"))
        .RequestGrant(
            bpb.RequestGrantRequest(
                parent="tenants/acme",
                permission_set="open-secret",
                reason="customer cannot run jobs",
                ticket="INC-1",
                duration=duration_pb2.Duration(seconds=600),
            ),
            timeout=10,
        )
        .grant
    )
    approved = (
        bgrpc.BreakGlassServiceStub(server.channel("bob"))
        .ApproveGrant(bpb.ApproveGrantRequest(name=grant.name), timeout=10)
        .grant
    )
    assert approved.state == bpb.GRANT_STATE_ACTIVE
    return str(name), str(grant.grant_id)


def test_repeated_empty_or_binary_grant_headers_are_refused_on_every_method(
    zumik_server: RunningServer,
) -> None:
    """Finding 8: with a real active grant, every shape of ``zumik-grant`` other than exactly
    one non-empty text entry is refused PERMISSION_DENIED ``GRANT_MALFORMED`` on Open (where the
    first entry decided, valid first or not), on health and on reflection, before anything
    else; the one-entry call opens the secret, and a well-formed grant on reflection or health
    is ignored (grpcurl's ``-H`` sends it there too)."""
    server = zumik_server
    name, grant = _active_grant(server)
    bogus = "bg_0000000000000000000001"
    seal = sgrpc.SealServiceStub(server.channel("alice"))
    health = health_pb2_grpc.HealthStub(server.channel("alice"))
    ok = seal.Open(spb.OpenRequest(name=name), metadata=(("zumik-grant", grant),), timeout=10)
    assert ok.plaintext == b"pt-n4"
    attacks: dict[str, tuple[tuple[str, str | bytes], ...]] = {
        "valid,valid": (("zumik-grant", grant), ("zumik-grant", grant)),
        "valid,bogus": (("zumik-grant", grant), ("zumik-grant", bogus)),
        "bogus,valid": (("zumik-grant", bogus), ("zumik-grant", grant)),
        "valid,empty": (("zumik-grant", grant), ("zumik-grant", "")),
        "empty,valid": (("zumik-grant", ""), ("zumik-grant", grant)),
        "blank": (("zumik-grant", " "),),
        "bin,valid": (("zumik-grant-bin", grant.encode()), ("zumik-grant", grant)),
        "bin": (("zumik-grant-bin", grant.encode()),),
    }

    def refused(call: Any, what: str) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        code = caught.value.code()  # type: ignore[attr-defined]
        assert code == grpc.StatusCode.PERMISSION_DENIED, f"{what}: {code} {caught.value}"
        info = error_info(caught.value)
        assert info.reason == "GRANT_MALFORMED", f"{what}: {info.reason}"
        assert info.metadata["header"] == "zumik-grant"
        assert grant not in str(caught.value), f"{what}: the message names the header only"

    for label, metadata in attacks.items():
        refused(
            lambda metadata=metadata: seal.Open(
                spb.OpenRequest(name=name), metadata=metadata, timeout=10
            ),
            f"[{label}] Open",
        )
        refused(
            lambda metadata=metadata: health.Check(
                health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10
            ),
            f"[{label}] Health/Check",
        )
    # A well-formed grant on methods that name no tenant resource is ignored: health and
    # reflection answer alice as they would without it (the grpcurl walkthrough's -H).
    assert (
        health.Check(
            health_pb2.HealthCheckRequest(), metadata=(("zumik-grant", grant),), timeout=10
        ).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel("alice"))
    answers = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=(("zumik-grant", grant),),
            timeout=10,
        )
    )
    assert any(
        s.name == "zumik.secrets.v1.SealService" for s in answers[0].list_services_response.service
    )
    refused(
        lambda: list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                metadata=(("zumik-grant", grant), ("zumik-grant", bogus)),
                timeout=10,
            )
        ),
        "[valid,bogus] reflection",
    )
    # The grant still works with one header (nothing above used it up).
    again = seal.Open(spb.OpenRequest(name=name), metadata=(("zumik-grant", grant),), timeout=10)
    assert again.plaintext == b"pt-n4"


def _refused_revoked(call: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert error_info(caught.value).reason == "CLAIM_REVOKED"


def _machine_session(
    server: RunningServer, scopes: list[str], **session: Any
) -> tuple[kpb.CreateApiKeyResponse, str, kpb.CreateSessionResponse]:
    """A key, its claim, and the session that claim opened for the key's own subject."""
    key = server.stubs("control-plane").keys.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=PARENT, display_name="machine", scopes=scopes)
    )
    claim = server.stubs("gateway").keys.VerifyApiKey(kpb.VerifyApiKeyRequest(key=key.raw_key))
    assert claim.result == VALID
    subject = key.api_key.name.rsplit("/", 1)[1]
    opened = server.stubs("console", claim=claim.claim).keys.CreateSession(
        kpb.CreateSessionRequest(
            parent=PARENT,
            user_subject=subject,
            scopes=scopes,
            idle_timeout=duration_pb2.Duration(seconds=7 * 86400),
            absolute_timeout=duration_pb2.Duration(seconds=30 * 86400),
        ),
        timeout=10,
    )
    return key, claim.claim, opened


def test_revoking_an_api_key_revokes_the_sessions_it_opened_for_itself(
    zumik_server_any_backend: RunningServer,
) -> None:
    """Finding 9 (the adversary's repro_machine_session_survives.py)."""
    server = zumik_server_any_backend
    control = server.stubs("control-plane").keys
    gateway = server.stubs("gateway").keys
    scopes = ["sessions.write", "keys.write", "keys.read"]
    key, _, machine = _machine_session(server, scopes)
    bystander_key, _, bystander = _machine_session(server, scopes)
    user = control.CreateSession(
        kpb.CreateSessionRequest(parent=PARENT, user_subject="erin", scopes=["keys.read"])
    )
    verified = gateway.VerifySession(kpb.VerifySessionRequest(token=machine.token))
    assert verified.result == VALID
    holder = server.stubs("console", claim=verified.claim).keys
    holder.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT, page_size=1), timeout=10)

    control.RevokeApiKey(kpb.RevokeApiKeyRequest(name=key.api_key.name))

    # At once, on the replica that answered: the session is revoked and its claim refused.
    again = gateway.VerifySession(kpb.VerifySessionRequest(token=machine.token))
    assert again.result == common_pb2.VERIFY_RESULT_REVOKED and not again.claim
    assert (
        control.GetSession(kpb.GetSessionRequest(name=machine.session.name)).session.state
        == common_pb2.CREDENTIAL_STATE_REVOKED
    )
    _refused_revoked(
        lambda: holder.CreateApiKey(
            kpb.CreateApiKeyRequest(
                parent=PARENT,
                display_name="persist",
                scopes=["keys.read"],
                ttl=duration_pb2.Duration(seconds=29 * 86400),
            ),
            timeout=10,
        )
    )
    _refused_revoked(
        lambda: holder.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT, page_size=1), timeout=10)
    )
    # Sessions of other subjects (another key's, a user's) are untouched.
    for token in (bystander.token, user.token):
        assert gateway.VerifySession(kpb.VerifySessionRequest(token=token)).result == VALID
    assert bystander_key.api_key.name != key.api_key.name
    # The revocation of the sessions is in the audit trail, with the key's.
    events = server.stubs("auditor").audit.QueryEvents(
        apb.QueryEventsRequest(parent="tenants/acme", action="session.revoke_user", page_size=1000),
        timeout=10,
    )
    subject = key.api_key.name.rsplit("/", 1)[1]
    assert any(
        e.attributes.get("user_subject") == subject and e.target == PARENT for e in events.events
    )


def test_rotating_an_api_key_ends_the_sessions_it_opened_for_itself(
    zumik_server_any_backend: RunningServer,
) -> None:
    """Finding 9, rotation: without grace the old key's machine sessions are revoked with it;
    with a grace they end when it does (their absolute expiry is brought down to its end)."""
    server = zumik_server_any_backend
    control = server.stubs("control-plane").keys
    gateway = server.stubs("gateway").keys
    scopes = ["sessions.write", "keys.read"]
    key, _, machine = _machine_session(server, scopes)
    control.RotateApiKey(kpb.RotateApiKeyRequest(name=key.api_key.name))
    assert (
        gateway.VerifySession(kpb.VerifySessionRequest(token=machine.token)).result
        == common_pb2.VERIFY_RESULT_REVOKED
    )

    key, _, machine = _machine_session(server, scopes)
    rotated = control.RotateApiKey(
        kpb.RotateApiKeyRequest(
            name=key.api_key.name, grace_period=duration_pb2.Duration(seconds=2)
        )
    )
    grace_end = (
        rotated.previous_api_key.expire_time.seconds
        + rotated.previous_api_key.expire_time.nanos / 1e9
    )
    session = control.GetSession(kpb.GetSessionRequest(name=machine.session.name)).session
    assert session.expire_time.seconds + session.expire_time.nanos / 1e9 <= grace_end
    during = gateway.VerifySession(kpb.VerifySessionRequest(token=machine.token))
    assert during.result == VALID  # the old key and its sessions work during the grace
    assert during.claim_expire_time.seconds <= grace_end
    time.sleep(max(0.0, grace_end - time.time() + 0.2))
    assert (
        gateway.VerifySession(kpb.VerifySessionRequest(token=machine.token)).result
        == common_pb2.VERIFY_RESULT_EXPIRED
    )
    holder = server.stubs("console", claim=during.claim).keys
    with pytest.raises(grpc.RpcError) as caught:
        holder.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT, page_size=1), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def _race(calls: list[Any]) -> list[Any]:
    """Run ``calls`` at once (one thread each, released together); their answers or errors."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = calls[i]()
        except grpc.RpcError as error:
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


class _ReadTogether:
    """The session store of a running server whose ``get`` (RotateSession's read of the
    session) returns only once ``parties`` calls have read: every rotation of the race reads
    the same token, the window the adversary hit by chance, made certain."""

    def __init__(self, store: Any, parties: int) -> None:
        self._store = store
        self._barrier = threading.Barrier(parties)

    def get(self, *args: Any) -> Any:
        rec = self._store.get(*args)
        self._barrier.wait(timeout=20)
        return rec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_concurrent_session_rotations_have_exactly_one_winner(
    zumik_server_any_backend: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 10 (the adversary's repro_double_rotate_grace0.py, its session half): of
    rotations that read the same token exactly one replaces it. (A rotation that reads the
    session after another one committed is a later rotation and succeeds, as two sequential
    RotateSession calls do; the winner's token then stops, as it would.)"""
    server = zumik_server_any_backend
    control = server.stubs("control-plane").keys
    gateway = server.stubs("gateway").keys
    n = 8
    stubs = [server.stubs("control-plane").keys for _ in range(n)]
    for stub in stubs:  # connected before the race
        stub.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT, page_size=1), timeout=10)
    service = server.runtime.sessions
    for _trial in range(2):
        created = control.CreateSession(
            kpb.CreateSessionRequest(parent=PARENT, user_subject="frank", scopes=["keys.read"])
        )
        request = kpb.RotateSessionRequest(name=created.session.name)
        with monkeypatch.context() as patched:
            patched.setattr(service, "_store", _ReadTogether(service._store, n))
            outcomes = _race([partial(s.RotateSession, request, timeout=30) for s in stubs])
        won = [o for o in outcomes if isinstance(o, kpb.RotateSessionResponse)]
        lost = [o for o in outcomes if isinstance(o, grpc.RpcError)]
        assert len(won) == 1, outcomes
        assert len(lost) == n - 1
        for error in lost:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            assert error_info(error).reason == "SESSION_ROTATED"
        assert gateway.VerifySession(kpb.VerifySessionRequest(token=won[0].token)).result == VALID
        assert (
            gateway.VerifySession(kpb.VerifySessionRequest(token=created.token)).result
            == common_pb2.VERIFY_RESULT_NOT_FOUND
        )
