"""The client helper: retry service config, claim and deadline defaults, mTLS channel."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

import zumik_secrets_client
from zumik_secrets_client import _retry
from zumik_secrets_client._channel import DefaultsInterceptor

GET = "/zumik.secrets.v1.KeyService/GetApiKey"
CREATE = "/zumik.secrets.v1.KeyService/CreateApiKey"
CLAIM = "claim-token-for-tests"


def test_contract_idempotent_methods_are_retried_and_others_are_not() -> None:
    methods = zumik_secrets_client.idempotent_methods()
    assert GET in methods
    assert "/zumik.secrets.v1.AuditService/VerifyChain" in methods
    assert CREATE not in methods
    assert list(methods) == sorted(set(methods))


def test_overrides_adjust_the_contract_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "EXTRA_IDEMPOTENT_METHODS", frozenset({CREATE}))
    monkeypatch.setattr(_retry, "NEVER_RETRIED_METHODS", frozenset({GET}))
    methods = _retry.idempotent_methods()
    assert CREATE in methods
    assert GET not in methods


def test_service_config_retries_only_unavailable_on_listed_methods() -> None:
    config = json.loads(zumik_secrets_client.service_config([GET]))
    (method_config,) = config["methodConfig"]
    assert method_config["name"] == [
        {"service": "zumik.secrets.v1.KeyService", "method": "GetApiKey"}
    ]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert json.loads(zumik_secrets_client.service_config([])) == {"methodConfig": []}


@pytest.mark.parametrize("bad", ["GetApiKey", "/KeyService", "/a/b/c", "//GetApiKey", "/svc/"])
def test_service_config_rejects_malformed_method_names(bad: str) -> None:
    with pytest.raises(ValueError, match="not a full gRPC method name"):
        zumik_secrets_client.service_config([bad])


class _Details:
    def __init__(self, timeout: float | None, metadata: Any) -> None:
        self.method = GET
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = None
        self.wait_for_ready = None
        self.compression = None


def _intercept(interceptor: DefaultsInterceptor, details: _Details) -> grpc.ClientCallDetails:
    seen: list[grpc.ClientCallDetails] = []
    interceptor.intercept_unary_unary(lambda d, _r: seen.append(d), details, object())  # type: ignore[arg-type]
    return seen[0]


def test_interceptor_adds_claim_and_default_deadline() -> None:
    out = _intercept(DefaultsInterceptor(claim=CLAIM, default_timeout=3.0), _Details(None, None))
    assert out.timeout == 3.0
    assert out.metadata == (("zumik-claim", CLAIM),)
    assert CLAIM not in repr(out)


def test_interceptor_keeps_caller_timeout_and_claim() -> None:
    caller = (("zumik-claim", "caller-claim"), ("x-other", "1"))
    out = _intercept(DefaultsInterceptor(claim=CLAIM, default_timeout=3.0), _Details(0.5, caller))
    assert out.timeout == 0.5
    assert out.metadata == caller


def test_interceptor_without_claim_sends_no_metadata() -> None:
    out = _intercept(DefaultsInterceptor(claim=None, default_timeout=3.0), _Details(None, None))
    assert out.metadata is None


def test_invalid_claim_and_timeout_are_refused_without_echo() -> None:
    with pytest.raises(ValueError) as info:
        DefaultsInterceptor(claim="bad\nclaim-secret", default_timeout=1.0)
    assert "claim-secret" not in str(info.value)
    with pytest.raises(ValueError, match="default_timeout"):
        DefaultsInterceptor(claim=None, default_timeout=0)
    assert CLAIM not in repr(DefaultsInterceptor(claim=CLAIM, default_timeout=1.0))


# ---------------------------------------------------------------- over a real mTLS server


class _Flaky(grpc.GenericRpcHandler):
    """Answers every unary call with UNAVAILABLE `failures` times, then echoes what it saw."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                attempt = self.calls[method] = self.calls.get(method, 0) + 1
            if attempt <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            claim = dict(context.invocation_metadata()).get("zumik-claim", "")
            return json.dumps({"claim": claim, "remaining": context.time_remaining()}).encode()

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    client = ca.issue_cert("client.zumik.test")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    client.private_key_pem.write_to_path(paths["key"])
    for blob in client.cert_chain_pems:
        blob.write_to_path(paths["cert"], append=True)
    paths["server_key"] = tmp_path / "server-key.pem"
    paths["server_cert"] = tmp_path / "server-cert.pem"
    server.private_key_pem.write_to_path(paths["server_key"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["server_cert"], append=True)
    return paths


@pytest.fixture
def flaky_server(pki: dict[str, Path]) -> Iterator[tuple[str, _Flaky]]:
    handler = _Flaky(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    credentials = grpc.ssl_server_credentials(
        [(pki["server_key"].read_bytes(), pki["server_cert"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}", handler
    finally:
        server.stop(grace=None)


def test_connect_retries_idempotent_calls_with_claim_and_deadline(
    pki: dict[str, Path], flaky_server: tuple[str, _Flaky]
) -> None:
    target, handler = flaky_server
    with zumik_secrets_client.connect(
        target,
        ca_file=pki["ca"],
        cert_file=pki["cert"],
        key_file=pki["key"],
        claim=CLAIM,
        default_timeout=4.0,
        server_name="localhost",
    ) as channel:
        get = channel.unary_unary(GET)
        reply = json.loads(get(b""))
        assert handler.calls[GET] == 3  # two UNAVAILABLE answers, then success
        assert reply["claim"] == CLAIM
        assert 0 < reply["remaining"] <= 4.0

        create = channel.unary_unary(CREATE)
        with pytest.raises(grpc.RpcError) as info:
            create(b"")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert handler.calls[CREATE] == 1  # never retried: not idempotent
