"""Service-built names are attributed, never redacted (issue 16, finding 2).

Tenant and project ids valid under the grammar may look random (a UUID, a lower-case ULID, a
base36 string, 128 bits of hex). The secret detector scored a whole resource name, slashes
included, as one random string, so every event of such a tenant had its target replaced by
``[REDACTED]`` and ``QueryEvents(target=...)`` found nothing. Here every event kind a tenant
can cause is recorded for each id shape and must carry its real target.
"""

from __future__ import annotations

import secrets
import string
import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import (
    common_pb2,
    fingerprint_service_pb2,
    key_service_pb2,
    seal_service_pb2,
    tenant_service_pb2,
)

from tests.fix_server import RunningServer
from zumik_secrets.core.names import is_resource_name
from zumik_secrets.core.secret_patterns import secret_kind

pytestmark = pytest.mark.integration

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_BASE36 = string.digits + string.ascii_lowercase


def _ulid() -> str:
    return "".join(secrets.choice(_CROCKFORD) for _ in range(26))


SHAPES: dict[str, Any] = {
    "uuid": lambda: str(uuid.uuid4()),
    "ulid": _ulid,
    "base36": lambda: "".join(secrets.choice(_BASE36) for _ in range(22)),
    "hex128": lambda: secrets.token_hex(16),
    "hex248": lambda: secrets.token_hex(31)[:62],
}

ALL_SCOPES = (
    "keys.read",
    "keys.write",
    "sessions.read",
    "sessions.write",
    "secrets.seal",
    "secrets.open",
    "secrets.read",
    "secrets.admin",
    "fingerprints.compute",
    "fingerprints.admin",
    "handles.write",
    "handles.read",
)


def test_random_looking_ids_would_have_been_redacted_before() -> None:
    # The premise: the detector alone flags such names (so the exemption is what keeps them).
    flagged = 0
    for make in SHAPES.values():
        name = f"tenants/{make()}/projects/{make()}/secrets/sec_0123456789ABCDEFabcdef"
        assert is_resource_name(name)
        flagged += secret_kind(name) is not None
    assert flagged >= 3


def _events(server: RunningServer, tenant: str, **flt: Any) -> list[apb.AuditEvent]:
    answer = server.stubs("auditor").audit.QueryEvents(
        apb.QueryEventsRequest(parent=f"tenants/{tenant}", page_size=1000, **flt), timeout=10
    )
    return list(answer.events)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_event_kind_keeps_its_target(zumik_server: RunningServer, shape: str) -> None:
    tenant, project = SHAPES[shape](), SHAPES[shape]()
    parent = f"tenants/{tenant}/projects/{project}"
    claim = zumik_server.mint_claim(tenant, project, ALL_SCOPES, subject="user-1")
    console = zumik_server.stubs("console", claim=claim)
    executor = zumik_server.stubs("executor", claim=claim)
    cp = zumik_server.stubs("control-plane")
    gateway = zumik_server.stubs("gateway").keys

    key = console.keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(parent=parent, scopes=["keys.read"], display_name="ci"),
        timeout=10,
    )
    gateway.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key=key.raw_key), timeout=10)
    rotated = console.keys.RotateApiKey(
        key_service_pb2.RotateApiKeyRequest(name=key.api_key.name), timeout=10
    )
    console.keys.RevokeApiKey(
        key_service_pb2.RevokeApiKeyRequest(name=rotated.api_key.name), timeout=10
    )
    session = console.keys.CreateSession(
        key_service_pb2.CreateSessionRequest(
            parent=parent, user_subject="user-1", scopes=["keys.read"]
        ),
        timeout=10,
    )
    gateway.VerifySession(key_service_pb2.VerifySessionRequest(token=session.token), timeout=10)
    console.keys.RevokeSession(
        key_service_pb2.RevokeSessionRequest(name=session.session.name), timeout=10
    )
    console.keys.RevokeUserSessions(
        key_service_pb2.RevokeUserSessionsRequest(parent=parent, user_subject="user-1"),
        timeout=10,
    )
    sealed = console.seal.Seal(
        seal_service_pb2.SealRequest(parent=parent, display_name="openai", plaintext=b"sk-x"),
        timeout=10,
    )
    secret_name = sealed.secret.name
    executor.seal.Open(seal_service_pb2.OpenRequest(name=secret_name), timeout=10)
    console.seal.UpdateSecret(
        seal_service_pb2.UpdateSecretRequest(name=secret_name, plaintext=b"sk-y"), timeout=10
    )
    cp.seal.RotateDataKey(
        seal_service_pb2.RotateDataKeyRequest(
            parent=parent, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL
        ),
        timeout=10,
    )
    cp.fingerprints.RotateFingerprintKey(
        fingerprint_service_pb2.RotateFingerprintKeyRequest(parent=parent), timeout=10
    )
    handle = console.fingerprints.MintHandle(
        fingerprint_service_pb2.MintHandleRequest(
            parent=f"tenants/{tenant}", kind="hdl", reference="ref-1"
        ),
        timeout=10,
    )
    console.seal.DeleteSecret(seal_service_pb2.DeleteSecretRequest(name=secret_name), timeout=10)
    cp.tenants.UpdateTenantSettings(
        tenant_service_pb2.UpdateTenantSettingsRequest(
            name=f"tenants/{tenant}/settings",
            settings=tenant_service_pb2.TenantSettings(
                name=f"tenants/{tenant}/settings",
                telemetry_mode=tenant_service_pb2.TELEMETRY_MODE_DEFAULT,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
        ),
        timeout=10,
    )

    deadline = time.monotonic() + 5
    while True:
        events = _events(zumik_server, tenant)
        actions = {ev.action for ev in events}
        if ("handle.mint" in actions and "secret.delete" in actions) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(actions) >= 12, sorted(actions)
    for ev in events:
        assert ev.target != "[REDACTED]", (ev.action, shape)
        assert "redacted" not in ev.attributes, (ev.action, dict(ev.attributes))
        assert tenant in ev.target, (ev.action, ev.target)
    expected_targets = {
        "secret.seal": secret_name,
        "secret.open": secret_name,
        "secret.update": secret_name,
        "secret.delete": secret_name,
        "api_key.create": key.api_key.name,
        "api_key.revoke": rotated.api_key.name,
        "session.revoke": session.session.name,
        "data_key.rotate": parent,
        "fingerprint_key.rotate": parent,
        "handle.mint": handle.handle.name if handle.HasField("handle") else "",
    }
    by_action: dict[str, set[str]] = {}
    for ev in events:
        by_action.setdefault(ev.action, set()).add(ev.target)
    for action, target in expected_targets.items():
        if target:
            assert target in by_action.get(action, set()), (action, by_action.get(action))
    # QueryEvents(target=...) finds the opened secret's events.
    found = _events(zumik_server, tenant, target=secret_name)
    assert {"secret.seal", "secret.open", "secret.update", "secret.delete"} <= {
        ev.action for ev in found
    }


@pytest.mark.parametrize("shape", ["uuid", "hex128"])
def test_a_resumed_purge_appends_no_second_purge_event(
    zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    """The purge event is appended, then the process 'dies' before the receipt is stored; the
    resumed purge must find its earlier event by target (it used to be ``[REDACTED]``)."""
    tenant = SHAPES[shape]()
    target = f"tenants/{tenant}"
    claim = zumik_server.mint_claim(tenant, "web", ALL_SCOPES)
    zumik_server.stubs("console", claim=claim).seal.Seal(
        seal_service_pb2.SealRequest(
            parent=f"{target}/projects/web", display_name="x", plaintext=b"sk-1"
        ),
        timeout=10,
    )
    store = zumik_server.runtime.purges._store
    real_finish = store.finish
    crashed: list[bool] = []

    def finish_once(*args: Any, **kwargs: Any) -> Any:
        if not crashed:
            crashed.append(True)
            raise RuntimeError("simulated crash after the purge event, before the receipt")
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(store, "finish", finish_once)
    cp = zumik_server.stubs("control-plane").tenants
    request = tenant_service_pb2.PurgeTenantRequest(name=target, confirm=target)
    with pytest.raises(grpc.RpcError):  # INTERNAL, whatever its wording
        cp.PurgeTenant(request, timeout=30)
    receipt = cp.PurgeTenant(request, timeout=30).receipt
    events = _events(zumik_server, tenant, action="tenant.purged")
    assert [ev.sequence for ev in events] == [receipt.audit_sequence]
    assert events[0].target == target
