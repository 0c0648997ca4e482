"""Every method the contracts mark idempotent gives the same outcome when sent twice.

The client retries these methods on UNAVAILABLE (``clients/python``: ``idempotent: true`` in
``method_policy``). A retry after a lost reply must not report failure for a call that worked
(issue 16: a repeated DeleteSecret answered NOT_FOUND). For each method: the same request twice,
the same status code (and reason); for the methods that change state, the same response as
well, apart from what a second run reports about itself (:data:`RUN_REPORTS`). The list is
generated from the contracts, so a method newly marked idempotent fails here until it has a
request below.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.protobuf.message import Message
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import break_glass_service_pb2 as bpb
from zumik.secrets.v1 import break_glass_service_pb2_grpc as bgrpc
from zumik.secrets.v1 import common_pb2
from zumik.secrets.v1 import fingerprint_service_pb2 as fpb
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import seal_service_pb2 as spb
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info
from zumik_secrets.api.contracts import method_guards

pytestmark = pytest.mark.integration

IDEMPOTENT = sorted(g.method for g in method_guards().values() if g.idempotent)

#: State-changing methods whose response reports what *this* run did (counts), so a second
#: run answers OK with zero work: the same outcome, not the same numbers.
RUN_REPORTS = {"RunRetention", "RewrapSecrets", "RevokeUserSessions"}

#: Response fields that record when the call ran.
VOLATILE = {"UpdateTenantSettings": ("settings", "update_time")}

#: Reads whose answer includes audit records of the call itself (the auditor acts without a
#: claim: each call is recorded before it runs), so the same status is the outcome compared.
SELF_AUDITED = {"QueryEvents", "ExportEvents", "VerifyChain"}

SCOPES = (
    "keys.read",
    "keys.write",
    "sessions.read",
    "sessions.write",
    "secrets.seal",
    "secrets.open",
    "secrets.read",
    "secrets.admin",
    "fingerprints.compute",
    "handles.write",
    "handles.read",
)


@dataclass
class World:
    """One fresh tenant with one of everything."""

    server: RunningServer
    tenant: str
    project: str
    raw_key: str
    key_name: str
    token: str
    session_name: str
    secret_name: str
    handle_name: str
    fingerprint: str
    receipt_name: str

    @property
    def parent(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}"

    def stubs(self, role: str, claim: bool = True) -> Any:
        if not claim:
            return self.server.stubs(role)
        token = self.server.mint_claim(self.tenant, self.project, SCOPES, subject="user-1")
        return self.server.stubs(role, claim=token)


def _world(server: RunningServer) -> World:
    tenant = f"idem-{uuid.uuid4().hex[:10]}"
    project = "web"
    parent = f"tenants/{tenant}/projects/{project}"
    claim = server.mint_claim(tenant, project, SCOPES, subject="user-1")  # sessions: own user
    console = server.stubs("console", claim=claim)
    key = console.keys.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=parent, scopes=["keys.read"], display_name="k"), timeout=10
    )
    session = console.keys.CreateSession(
        kpb.CreateSessionRequest(parent=parent, user_subject="user-1", scopes=["keys.read"]),
        timeout=10,
    )
    secret = console.seal.Seal(
        spb.SealRequest(parent=parent, display_name="s", plaintext=b"sk-idempotent"), timeout=10
    )
    control = server.stubs("control-plane")
    control.seal.RotateDataKey(
        spb.RotateDataKeyRequest(parent=parent, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL),
        timeout=10,
    )
    handle = console.fingerprints.MintHandle(
        fpb.MintHandleRequest(parent=f"tenants/{tenant}", kind="user", reference="users/1"),
        timeout=10,
    )
    fp = console.fingerprints.Fingerprint(
        fpb.FingerprintRequest(parent=parent, namespace="email", values=[b"a@example.com"]),
        timeout=10,
    )
    # A finished purge of another project, for GetPurgeReceipt.
    other = f"tenants/{tenant}/projects/gone"
    receipt = control.tenants.PurgeProject(
        tpb.PurgeProjectRequest(name=other, confirm=other), timeout=30
    ).receipt
    return World(
        server,
        tenant,
        project,
        key.raw_key,
        key.api_key.name,
        session.token,
        session.session.name,
        secret.secret.name,
        handle.handle.name,
        fp.fingerprints[0],
        receipt.name,
    )


Call = Callable[[World], Any]


def _calls() -> dict[str, Call]:
    def settings(w: World) -> tpb.UpdateTenantSettingsRequest:
        return tpb.UpdateTenantSettingsRequest(
            name=f"tenants/{w.tenant}/settings",
            settings=tpb.TenantSettings(audit_retention=duration_pb2.Duration(seconds=30 * 86400)),
            update_mask=field_mask_pb2.FieldMask(paths=["audit_retention"]),
        )

    def rewrap_then_destroy(w: World) -> Any:
        control = w.stubs("control-plane", claim=False).seal
        control.RewrapSecrets(spb.RewrapSecretsRequest(parent=w.parent), timeout=30)
        return lambda: control.DestroyDataKeyVersion(
            spb.DestroyDataKeyVersionRequest(
                parent=w.parent,
                purpose=common_pb2.DATA_KEY_PURPOSE_SEAL,
                version=1,
                confirm_version=1,
            ),
            timeout=30,
        )

    def operator(w: World, name: str) -> bgrpc.BreakGlassServiceStub:
        return bgrpc.BreakGlassServiceStub(w.server.channel(name))

    def grant(w: World) -> str:
        """An approved break-glass grant on the world's tenant (alice asked, bob approved)."""
        asked = (
            operator(w, "alice")
            .RequestGrant(
                bpb.RequestGrantRequest(
                    parent=f"tenants/{w.tenant}",
                    permission_set="inspect-metadata",
                    reason="idempotency test",
                    ticket="INC-1",
                ),
                timeout=10,
            )
            .grant
        )
        operator(w, "bob").ApproveGrant(bpb.ApproveGrantRequest(name=asked.name), timeout=10)
        return str(asked.name)

    def get_grant(w: World) -> Any:
        name = grant(w)
        return lambda: operator(w, "bob").GetGrant(bpb.GetGrantRequest(name=name), timeout=10)

    def list_grants(w: World) -> Any:
        grant(w)
        return lambda: operator(w, "bob").ListGrants(
            bpb.ListGrantsRequest(parent=f"tenants/{w.tenant}"), timeout=10
        )

    def revoke_grant(w: World) -> Any:
        name = grant(w)
        return lambda: operator(w, "bob").RevokeGrant(bpb.RevokeGrantRequest(name=name), timeout=10)

    project_name = "tenants/{t}/projects/{p}"
    return {
        "GetGrant": get_grant,
        "ListGrants": list_grants,
        "RevokeGrant": revoke_grant,
        "VerifyApiKey": lambda w: (
            lambda: w.stubs("gateway", False).keys.VerifyApiKey(
                kpb.VerifyApiKeyRequest(key=w.raw_key), timeout=10
            )
        ),
        "GetApiKey": lambda w: (
            lambda: w.stubs("console").keys.GetApiKey(
                kpb.GetApiKeyRequest(name=w.key_name), timeout=10
            )
        ),
        "ListApiKeys": lambda w: (
            lambda: w.stubs("console").keys.ListApiKeys(
                kpb.ListApiKeysRequest(parent=w.parent), timeout=10
            )
        ),
        "RevokeApiKey": lambda w: (
            lambda: w.stubs("console").keys.RevokeApiKey(
                kpb.RevokeApiKeyRequest(name=w.key_name), timeout=10
            )
        ),
        "VerifySession": lambda w: (
            lambda: w.stubs("gateway", False).keys.VerifySession(
                kpb.VerifySessionRequest(token=w.token), timeout=10
            )
        ),
        "GetSession": lambda w: (
            lambda: w.stubs("console").keys.GetSession(
                kpb.GetSessionRequest(name=w.session_name), timeout=10
            )
        ),
        "RevokeSession": lambda w: (
            lambda: w.stubs("console").keys.RevokeSession(
                kpb.RevokeSessionRequest(name=w.session_name), timeout=10
            )
        ),
        "RevokeUserSessions": lambda w: (
            lambda: w.stubs("console").keys.RevokeUserSessions(
                kpb.RevokeUserSessionsRequest(parent=w.parent, user_subject="user-1"), timeout=10
            )
        ),
        "ListSigningKeys": lambda w: (
            lambda: w.stubs("gateway", False).keys.ListSigningKeys(
                kpb.ListSigningKeysRequest(), timeout=10
            )
        ),
        "WatchRevocations": lambda w: (
            lambda: _first_message(
                w.stubs("gateway", False).keys.WatchRevocations(
                    kpb.WatchRevocationsRequest(
                        resume_after=w.server.runtime.revocation_feed.position
                    ),
                    timeout=10,
                )
            )
        ),
        "GetSecret": lambda w: (
            lambda: w.stubs("console").seal.GetSecret(
                spb.GetSecretRequest(name=w.secret_name), timeout=10
            )
        ),
        "ListSecrets": lambda w: (
            lambda: w.stubs("console").seal.ListSecrets(
                spb.ListSecretsRequest(parent=w.parent), timeout=10
            )
        ),
        "ListDataKeyVersions": lambda w: (
            lambda: w.stubs("control-plane", False).seal.ListDataKeyVersions(
                spb.ListDataKeyVersionsRequest(
                    parent=w.parent, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL
                ),
                timeout=10,
            )
        ),
        "RewrapSecrets": lambda w: (
            lambda: w.stubs("control-plane", False).seal.RewrapSecrets(
                spb.RewrapSecretsRequest(parent=w.parent), timeout=30
            )
        ),
        "DestroyDataKeyVersion": rewrap_then_destroy,
        "Fingerprint": lambda w: (
            lambda: w.stubs("executor").fingerprints.Fingerprint(
                fpb.FingerprintRequest(
                    parent=w.parent, namespace="email", values=[b"a@example.com"]
                ),
                timeout=10,
            )
        ),
        "MatchFingerprint": lambda w: (
            lambda: w.stubs("executor").fingerprints.MatchFingerprint(
                fpb.MatchFingerprintRequest(
                    parent=w.parent,
                    namespace="email",
                    value=b"a@example.com",
                    fingerprint=w.fingerprint,
                ),
                timeout=10,
            )
        ),
        "ResolveHandle": lambda w: (
            lambda: w.stubs("console").fingerprints.ResolveHandle(
                fpb.ResolveHandleRequest(name=w.handle_name), timeout=10
            )
        ),
        "QueryEvents": lambda w: (
            lambda: w.stubs("auditor", False).audit.QueryEvents(
                apb.QueryEventsRequest(parent=f"tenants/{w.tenant}"), timeout=10
            )
        ),
        "ExportEvents": lambda w: (
            lambda: list(
                w.stubs("auditor", False).audit.ExportEvents(
                    apb.ExportEventsRequest(parent=f"tenants/{w.tenant}"), timeout=10
                )
            )
        ),
        "VerifyChain": lambda w: (
            lambda: w.stubs("auditor", False).audit.VerifyChain(
                apb.VerifyChainRequest(parent=f"tenants/{w.tenant}"), timeout=10
            )
        ),
        "ListCheckpointKeys": lambda w: (
            lambda: w.stubs("auditor", False).audit.ListCheckpointKeys(
                apb.ListCheckpointKeysRequest(), timeout=10
            )
        ),
        "GetTenantSettings": lambda w: (
            lambda: w.stubs("control-plane", False).tenants.GetTenantSettings(
                tpb.GetTenantSettingsRequest(name=f"tenants/{w.tenant}/settings"), timeout=10
            )
        ),
        "UpdateTenantSettings": lambda w: (
            lambda: w.stubs("control-plane", False).tenants.UpdateTenantSettings(
                settings(w), timeout=10
            )
        ),
        "RunRetention": lambda w: (
            lambda: w.stubs("control-plane", False).tenants.RunRetention(
                tpb.RunRetentionRequest(name=f"tenants/{w.tenant}/settings"), timeout=30
            )
        ),
        "PurgeProject": lambda w: (
            lambda: w.stubs("control-plane", False).tenants.PurgeProject(
                tpb.PurgeProjectRequest(
                    name=project_name.format(t=w.tenant, p=w.project),
                    confirm=project_name.format(t=w.tenant, p=w.project),
                ),
                timeout=30,
            )
        ),
        "PurgeTenant": lambda w: (
            lambda: w.stubs("control-plane", False).tenants.PurgeTenant(
                tpb.PurgeTenantRequest(name=f"tenants/{w.tenant}", confirm=f"tenants/{w.tenant}"),
                timeout=30,
            )
        ),
        "GetPurgeReceipt": lambda w: (
            lambda: w.stubs("control-plane", False).tenants.GetPurgeReceipt(
                tpb.GetPurgeReceiptRequest(name=w.receipt_name), timeout=10
            )
        ),
    }


CALLS = _calls()


def _first_message(call: Any) -> Any:
    """A long-lived stream's first message (its sync marker), then the stream is cancelled."""
    try:
        return next(call)
    finally:
        call.cancel()


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        answer = call()
    except grpc.RpcError as err:
        return f"{err.code().name} {error_info(err).reason}", None  # type: ignore[attr-defined]
    return "OK", answer


def test_every_idempotent_method_is_covered() -> None:
    assert set(IDEMPOTENT) == set(CALLS), set(IDEMPOTENT) ^ set(CALLS)


@pytest.mark.parametrize("method", IDEMPOTENT)
def test_the_same_request_twice_gives_the_same_outcome(
    zumik_server: RunningServer, method: str
) -> None:
    world = _world(zumik_server)
    call = CALLS[method](world)
    first_code, first = _outcome(call)
    second_code, second = _outcome(call)
    assert first_code == "OK", (method, first_code)
    assert second_code == first_code, (method, first_code, second_code)
    if method in RUN_REPORTS | SELF_AUDITED:
        return
    if method in VOLATILE:
        outer, inner = VOLATILE[method]
        getattr(first, outer).ClearField(inner)
        getattr(second, outer).ClearField(inner)
    if isinstance(first, Message):
        assert second == first, method


def test_delete_secret_is_not_idempotent_and_not_retried(zumik_server: RunningServer) -> None:
    """DeleteSecret: a repeat answers NOT_FOUND (like a name that never existed), so the
    contract does not call it idempotent and the client does not retry it (issue 16)."""
    from zumik_secrets_client import idempotent_methods

    assert "DeleteSecret" not in IDEMPOTENT
    assert "/zumik.secrets.v1.SealService/DeleteSecret" not in idempotent_methods()
    world = _world(zumik_server)
    delete = lambda: world.stubs("console").seal.DeleteSecret(  # noqa: E731
        spb.DeleteSecretRequest(name=world.secret_name), timeout=10
    )
    assert _outcome(delete)[0] == "OK"
    assert _outcome(delete)[0] == "NOT_FOUND NOT_FOUND"
