"""One fail-closed rule for durable audit events, on every servicer path (docs/AUDIT.md, "A change
whose durable audit event fails"): whatever the audit writer raises, the caller sees UNAVAILABLE
with reason ``AUDIT_UNAVAILABLE`` and the change (or the Open's plaintext) does not happen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from zumik.secrets.v1 import fingerprint_service_pb2 as fpb
from zumik.secrets.v1 import key_service_pb2, seal_service_pb2

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info
from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.core.errors import Unavailable

pytestmark = pytest.mark.integration

T, P = "acme", "web"
PARENT = f"tenants/{T}/projects/{P}"
SEAL_SCOPES = ("secrets.seal", "secrets.read", "secrets.admin")
OPEN_SCOPES = ("secrets.open", "secrets.read")
PLAINTEXT = b"fail-closed-PLAINTEXT-SENTINEL-9d3a"

# What a broken audit writer may raise: another reason of its own, or a bug.
FAILURES: tuple[Callable[[], Exception], ...] = (
    lambda: Unavailable("audit store down", reason="AUDIT_STORE_UNAVAILABLE"),
    lambda: RuntimeError("audit writer bug"),
)


class FailingAudit:
    """An audit writer that takes non-durable events and fails every durable one and every
    change's events with ``failure()``."""

    def __init__(self, failure: Callable[[], Exception]) -> None:
        self.failure = failure
        self.taken: list[AuditEntry] = []

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        if durable:
            raise self.failure()
        self.taken.append(entry)

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Iterator[None]:
        raise self.failure()
        yield  # pragma: no cover - never reached: the change must not happen


def _unavailable(call: Callable[[], Any]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())  # type: ignore[attr-defined]
    assert error_info(err).reason == "AUDIT_UNAVAILABLE"


def _each_failure(
    monkeypatch: pytest.MonkeyPatch, owner: object, attribute: str, call: Callable[[], Any]
) -> None:
    for failure in FAILURES:
        with monkeypatch.context() as patch:
            patch.setattr(owner, attribute, FailingAudit(failure))
            _unavailable(call)


def _keys(server: RunningServer) -> Any:
    return server.stubs("control-plane").keys


def test_create_api_key(zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _keys(zumik_server)
    request = key_service_pb2.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"])
    _each_failure(
        monkeypatch,
        zumik_server.runtime.api_keys,
        "_audit",
        lambda: keys.CreateApiKey(request, timeout=5),
    )
    listed = keys.ListApiKeys(key_service_pb2.ListApiKeysRequest(parent=PARENT), timeout=5)
    assert list(listed.api_keys) == []  # nothing was created


def test_revoke_api_key(zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _keys(zumik_server)
    created = keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]), timeout=5
    )
    request = key_service_pb2.RevokeApiKeyRequest(name=created.api_key.name)
    _each_failure(
        monkeypatch,
        zumik_server.runtime.api_keys,
        "_audit",
        lambda: keys.RevokeApiKey(request, timeout=5),
    )
    answer = zumik_server.stubs("gateway").keys.VerifyApiKey(
        key_service_pb2.VerifyApiKeyRequest(key=created.raw_key), timeout=5
    )
    assert answer.result == 1  # VERIFY_RESULT_VALID: the revocation did not happen


def test_create_session(zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _keys(zumik_server)
    request = key_service_pb2.CreateSessionRequest(
        parent=PARENT, user_subject="user-1", scopes=["keys.read"]
    )
    _each_failure(
        monkeypatch,
        zumik_server.runtime.sessions,
        "_audit",
        lambda: keys.CreateSession(request, timeout=5),
    )


def _seal_stub(server: RunningServer) -> Any:
    return server.stubs("console", claim=server.mint_claim(T, P, SEAL_SCOPES)).seal


def test_seal(zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    seal = _seal_stub(zumik_server)
    request = seal_service_pb2.SealRequest(parent=PARENT, plaintext=PLAINTEXT)
    _each_failure(
        monkeypatch,
        zumik_server.runtime.sealed_secrets,
        "_audit",
        lambda: seal.Seal(request, timeout=5),
    )
    listed = seal.ListSecrets(seal_service_pb2.ListSecretsRequest(parent=PARENT), timeout=5)
    assert list(listed.secrets) == []


def test_open(zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    name = (
        _seal_stub(zumik_server)
        .Seal(seal_service_pb2.SealRequest(parent=PARENT, plaintext=PLAINTEXT), timeout=5)
        .secret.name
    )
    executor = zumik_server.stubs("executor", claim=zumik_server.mint_claim(T, P, OPEN_SCOPES)).seal
    _each_failure(
        monkeypatch,
        zumik_server.runtime.sealed_secrets,
        "_audit",
        lambda: executor.Open(seal_service_pb2.OpenRequest(name=name), timeout=5),
    )


def test_rotate_fingerprint_key(
    zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = zumik_server.stubs("control-plane").fingerprints
    request = fpb.RotateFingerprintKeyRequest(parent=PARENT)
    _each_failure(
        monkeypatch,
        zumik_server.runtime.fingerprints,
        "_audit",
        lambda: admin.RotateFingerprintKey(request, timeout=5),
    )


def test_mint_handle(zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    claim = zumik_server.mint_claim(T, P, ("handles.write", "handles.read"))
    stub = zumik_server.stubs("console", claim=claim).fingerprints
    request = fpb.MintHandleRequest(parent=f"tenants/{T}", kind="user", reference="users/1")
    _each_failure(
        monkeypatch,
        zumik_server.runtime.handles,
        "_audit",
        lambda: stub.MintHandle(request, timeout=5),
    )
