"""FingerprintService over real mutual TLS on both backends: fingerprints per tenant and per key
version, crypto-shredding rotation that no API can undo, overlap windows ending in a recorded
linkage break, handles (random, per tenant, NOT_FOUND across tenants byte for byte), and the
handle format of every service."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2, key_service_pb2, seal_service_pb2
from zumik.secrets.v1 import fingerprint_service_pb2 as fpb

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info, status_bytes
from zumik_secrets.core.handles import new_handle

pytestmark = pytest.mark.integration

T_A, T_B, P = "tenant-a", "tenant-b", "proj"
PARENT_A = f"tenants/{T_A}/projects/{P}"
PARENT_B = f"tenants/{T_B}/projects/{P}"
SCOPES = ("fingerprints.compute", "handles.write", "handles.read")
HANDLE = re.compile(r"[a-z]{2,8}_[0-9A-Za-z]{22}")
FINGERPRINT_DK = common_pb2.DATA_KEY_PURPOSE_FINGERPRINT


def _fails(call: Callable[[], Any], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    assert err.code() == code, (err.code(), err.details())  # type: ignore[attr-defined]
    return err


def _stub(server: RunningServer, tenant: str = T_A, role: str = "executor") -> Any:
    return server.stubs(role, claim=server.mint_claim(tenant, P, SCOPES)).fingerprints


def _fingerprint(
    server: RunningServer, values: list[bytes], tenant: str = T_A, namespace: str = "email"
) -> fpb.FingerprintResponse:
    return _stub(server, tenant).Fingerprint(
        fpb.FingerprintRequest(
            parent=f"tenants/{tenant}/projects/{P}", namespace=namespace, values=values
        ),
        timeout=10,
    )


def _match(
    server: RunningServer, value: bytes, fingerprint: str, tenant: str = T_A
) -> fpb.MatchResult.ValueType:
    return (
        _stub(server, tenant, "console")
        .MatchFingerprint(
            fpb.MatchFingerprintRequest(
                parent=f"tenants/{tenant}/projects/{P}",
                namespace="email",
                value=value,
                fingerprint=fingerprint,
            ),
            timeout=10,
        )
        .result
    )


def _rotate(server: RunningServer, seconds: float = 0) -> fpb.RotateFingerprintKeyResponse:
    overlap = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
    return server.stubs("control-plane").fingerprints.RotateFingerprintKey(
        fpb.RotateFingerprintKeyRequest(parent=PARENT_A, overlap=overlap if seconds else None),
        timeout=10,
    )


def _versions(server: RunningServer) -> dict[int, int]:
    answer = server.stubs("control-plane").seal.ListDataKeyVersions(
        seal_service_pb2.ListDataKeyVersionsRequest(parent=PARENT_A, purpose=FINGERPRINT_DK),
        timeout=5,
    )
    return {v.version: v.state for v in answer.data_keys}


def _events(server: RunningServer, action: str, count: int = 1) -> list[apb.AuditEvent]:
    audit = server.stubs("auditor").audit
    deadline = time.monotonic() + 5
    while True:
        events = audit.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{T_A}", action=action, page_size=100),
            timeout=5,
        ).events
        if len(events) >= count or time.monotonic() > deadline:
            return list(events)
        time.sleep(0.05)


# -- fingerprints --------------------------------------------------------------------------------


def test_fingerprints_per_tenant_and_per_rotation(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    value = [b"alice@example.com"]
    first = _fingerprint(server, value)
    assert first.key_version == 1 and list(first.previous_fingerprints) == []
    [fp_a] = first.fingerprints
    assert re.fullmatch(r"fp1\.1\.[A-Za-z0-9_-]{43}", fp_a)
    assert list(_fingerprint(server, value).fingerprints) == [fp_a]  # stable
    [fp_b] = _fingerprint(server, value, tenant=T_B).fingerprints
    assert fp_b != fp_a  # another tenant's key
    assert list(_fingerprint(server, value, namespace="phone").fingerprints) != [fp_a]
    assert _match(server, value[0], fp_a) == fpb.MATCH_RESULT_MATCH
    assert _match(server, b"bob@example.com", fp_a) == fpb.MATCH_RESULT_NO_MATCH
    assert _match(server, value[0], fp_a, tenant=T_B) == fpb.MATCH_RESULT_NO_MATCH

    rotated = _rotate(server)
    assert (rotated.key_version, rotated.previous_key_version) == (2, 1)
    [fp_a2] = _fingerprint(server, value).fingerprints
    assert fp_a2 != fp_a and fp_a2.startswith("fp1.2.")
    assert list(_fingerprint(server, value, tenant=T_B).fingerprints) == [fp_b]

    # Crypto-shredded: nothing can reproduce or match the old fingerprint any more.
    assert _versions(server) == {
        1: common_pb2.DATA_KEY_STATE_DESTROYED,
        2: common_pb2.DATA_KEY_STATE_PRIMARY,
    }
    assert _match(server, value[0], fp_a) == fpb.MATCH_RESULT_KEY_DESTROYED
    admin = server.stubs("control-plane").seal
    admin.RotateDataKey(
        seal_service_pb2.RotateDataKeyRequest(parent=PARENT_A, purpose=FINGERPRINT_DK), timeout=5
    )
    # Destroying it again is idempotent; rotating again only adds a new version.
    admin.DestroyDataKeyVersion(
        seal_service_pb2.DestroyDataKeyVersionRequest(
            parent=PARENT_A, purpose=FINGERPRINT_DK, version=1, confirm_version=1
        ),
        timeout=5,
    )
    after = _fingerprint(server, value)
    assert after.key_version == 3 and fp_a not in after.fingerprints
    assert fp_a not in after.previous_fingerprints
    assert _match(server, value[0], fp_a) == fpb.MATCH_RESULT_KEY_DESTROYED
    assert _versions(server)[1] == common_pb2.DATA_KEY_STATE_DESTROYED
    [linkage] = _events(server, "fingerprint_key.linkage_broken")
    assert linkage.attributes["destroyed_version"] == "1"
    assert linkage.actor == "spiffe://zumik.local/svc/control-plane"


def test_overlap_window_then_sweep(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    values = [b"alice@example.com", b"bob@example.com"]
    old = list(_fingerprint(server, values).fingerprints)
    rotated = _rotate(server, seconds=1.5)
    assert rotated.key_version == 2
    break_at = rotated.linkage_break_time.ToDatetime().timestamp()
    assert 1.0 < break_at - time.time() <= 1.6
    during = _fingerprint(server, values)
    assert during.key_version == 2
    assert list(during.previous_fingerprints) == old
    assert all(f.startswith("fp1.2.") for f in during.fingerprints)
    assert _match(server, values[0], old[0]) == fpb.MATCH_RESULT_MATCH
    assert _events(server, "fingerprint_key.linkage_broken", count=0) == []
    time.sleep(max(0.0, break_at - time.time()) + 0.05)
    assert server.runtime.fingerprints.sweep() == 1  # the periodic sweep, triggered now
    after = _fingerprint(server, values)
    assert list(after.previous_fingerprints) == [] and list(after.fingerprints) == list(
        during.fingerprints
    )
    assert _match(server, values[0], old[0]) == fpb.MATCH_RESULT_KEY_DESTROYED
    assert _versions(server)[1] == common_pb2.DATA_KEY_STATE_DESTROYED
    [event] = _events(server, "fingerprint_key.linkage_broken")
    assert event.attributes["destroyed_version"] == "1"
    assert event.actor == "zumik-secrets"
    [rotation] = _events(server, "fingerprint_key.rotate")
    assert rotation.attributes["overlap_seconds"] == "1"


def test_bad_requests(zumik_server: RunningServer) -> None:
    stub = _stub(zumik_server)
    for values, reason in (([], "FIELD_REQUIRED"), ([b"x"] * 1001, "BATCH_TOO_LARGE")):
        err = _fails(
            lambda v=values: stub.Fingerprint(
                fpb.FingerprintRequest(parent=PARENT_A, namespace="email", values=v), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_info(err).reason == reason
    assert (
        "1000"
        in _fails(
            lambda: stub.Fingerprint(
                fpb.FingerprintRequest(parent=PARENT_A, namespace="email", values=[b"x"] * 1001),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ).details()
    )  # type: ignore[attr-defined]
    err = _fails(
        lambda: stub.Fingerprint(
            fpb.FingerprintRequest(parent=PARENT_A, namespace="Email", values=[b"x"]), timeout=5
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "INVALID_NAMESPACE"
    for bad in ("nope", "fp1.1.short", "fp1.x." + "A" * 43):
        err = _fails(lambda b=bad: _match(zumik_server, b"v", b), grpc.StatusCode.INVALID_ARGUMENT)
        assert error_info(err).reason == "FINGERPRINT_MALFORMED"
        assert bad not in err.details()  # type: ignore[attr-defined]
    # The largest batch fits in the default message size.
    big = _fingerprint(zumik_server, [b"v" * 4096] * 1000)
    assert len(big.fingerprints) == 1000
    # Another tenant's project is NOT_FOUND before anything is computed.
    _fails(
        lambda: stub.Fingerprint(
            fpb.FingerprintRequest(parent=PARENT_B, namespace="email", values=[b"x"]), timeout=5
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # Rotation is the control plane's, not the executor's.
    _fails(
        lambda: stub.RotateFingerprintKey(
            fpb.RotateFingerprintKeyRequest(parent=PARENT_A), timeout=5
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    err = _fails(
        lambda: zumik_server.stubs("control-plane").fingerprints.RotateFingerprintKey(
            fpb.RotateFingerprintKeyRequest(
                parent=PARENT_A, overlap=duration_pb2.Duration(seconds=-5)
            ),
            timeout=5,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "INVALID_DURATION"


# -- handles -----------------------------------------------------------------------------------


def _mint(server: RunningServer, tenant: str = T_A, reference: str = "users/42") -> fpb.Handle:
    return (
        _stub(server, tenant, "console")
        .MintHandle(
            fpb.MintHandleRequest(parent=f"tenants/{tenant}", kind="user", reference=reference),
            timeout=5,
        )
        .handle
    )


def test_mint_and_resolve_handles(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    minted = _mint(server)
    assert HANDLE.fullmatch(minted.handle) and minted.kind == "user"
    assert minted.name == f"tenants/{T_A}/handles/{minted.handle}"
    assert _mint(server).handle != minted.handle  # same reference, unrelated handle
    resolved = _stub(server).ResolveHandle(fpb.ResolveHandleRequest(name=minted.name), timeout=5)
    assert resolved.handle == minted
    err = _fails(
        lambda: _stub(server).MintHandle(
            fpb.MintHandleRequest(parent=f"tenants/{T_A}", kind="User", reference="r"), timeout=5
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "kind"


def test_cross_tenant_resolution_is_not_found_byte_identical(
    zumik_server_any_backend: RunningServer,
) -> None:
    server = zumik_server_any_backend
    minted_b = _mint(server, T_B)
    stub_a = _stub(server, T_A)
    # Tenant A asks for tenant B's handle under B's name (refused by the interceptor) and
    # under its own tenant (a handle it does not have): both look exactly like a random one.
    cases = {
        f"tenants/{T_B}/handles/{minted_b.handle}": f"tenants/{T_B}/handles/{new_handle('user')}",
        f"tenants/{T_A}/handles/{minted_b.handle}": f"tenants/{T_A}/handles/{new_handle('user')}",
    }
    for foreign, unknown in cases.items():
        got = _fails(
            lambda n=foreign: stub_a.ResolveHandle(fpb.ResolveHandleRequest(name=n), timeout=5),
            grpc.StatusCode.NOT_FOUND,
        )
        missing = _fails(
            lambda n=unknown: stub_a.ResolveHandle(fpb.ResolveHandleRequest(name=n), timeout=5),
            grpc.StatusCode.NOT_FOUND,
        )
        assert status_bytes(got) == status_bytes(missing).replace(
            unknown.encode(), foreign.encode()
        )
        assert error_info(got).reason == "NOT_FOUND"
        assert "users/42" not in got.details()  # type: ignore[attr-defined]


# -- every handle the service returns ------------------------------------------------------------


def test_every_handle_has_the_same_random_format(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    admin = server.stubs("control-plane")
    key = admin.keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(parent=PARENT_A, scopes=["keys.read"]), timeout=5
    ).api_key
    session = admin.keys.CreateSession(
        key_service_pb2.CreateSessionRequest(parent=PARENT_A, user_subject="u1", scopes=["a"]),
        timeout=5,
    ).session
    console = server.stubs("console", claim=server.mint_claim(T_A, P, ("secrets.seal", *SCOPES)))
    sealed = [
        console.seal.Seal(
            seal_service_pb2.SealRequest(parent=PARENT_A, plaintext=b"same plaintext"), timeout=5
        ).secret
        for _ in range(2)
    ]
    minted = _mint(server)
    handles = {
        "key": key.name.rsplit("/", 1)[1],
        "ses": session.name.rsplit("/", 1)[1],
        "sec": sealed[0].name.rsplit("/", 1)[1],
        "sec2": sealed[1].name.rsplit("/", 1)[1],
        "user": minted.handle,
    }
    for kind, handle in handles.items():
        assert re.fullmatch(r"[a-z]{2,8}_[0-9A-Za-z]{22}", handle), (kind, handle)
        assert handle.startswith(kind[:3] + "_") or kind == "user"
    # Sealing the same plaintext twice: two unrelated handles (nothing derived from content).
    one, two = handles["sec"].split("_")[1], handles["sec2"].split("_")[1]
    assert one != two
    assert (
        sum(a == b for a, b in zip(one, two, strict=True)) < 8
    )  # no shared structure beyond chance
