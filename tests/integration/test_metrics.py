"""The scrape endpoint of a real server counts what happened, and serves nothing else.

A mix of calls over real mTLS (seals, opens, refused opens, a refused stranger, verifications,
probes on the health-only listener), then one scrape: the RPC, denial, audit, cache and probe
series hold exactly the counts of that mix.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from zumik.secrets.v1 import key_service_pb2, seal_service_pb2

from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from zumik_secrets.cli.dev_pki import CertPair

pytestmark = pytest.mark.integration

T, P = "metrics-co", "web"
PARENT = f"tenants/{T}/projects/{P}"
SEAL = "zumik.secrets.v1.SealService/Seal"
OPEN = "zumik.secrets.v1.SealService/Open"
VERIFY = "zumik.secrets.v1.KeyService/VerifyApiKey"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(server: RunningServer, path: str = "/metrics") -> tuple[int, str]:
    endpoint = server.runtime.metrics.endpoint
    assert endpoint is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture
def server(zumik_server_factory: ServerFactory) -> RunningServer:
    return zumik_server_factory(
        ZUMIK_METRICS_LISTEN="127.0.0.1:0",
        ZUMIK_HEALTH_LISTEN="127.0.0.1:0",
        ZUMIK_AUDIT_LINGER_MS="0",
    )


@pytest.fixture
def access_lines() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("zumik.access")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _probe(server: RunningServer, service: str = "") -> str:
    listener = server.server.health_listener
    assert listener is not None
    with grpc.insecure_channel(f"127.0.0.1:{listener.port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_scrape_counts_a_mix_of_calls(
    server: RunningServer,
    stranger_cert: CertPair,
    access_lines: list[logging.LogRecord],
) -> None:
    before = _samples(_scrape(server)[1])
    seal_claim = server.mint_claim(T, P, ("secrets.seal", "secrets.read"))
    sealer = server.stubs("console", claim=seal_claim).seal
    names = [
        sealer.Seal(
            seal_service_pb2.SealRequest(parent=PARENT, plaintext=f"metric-secret-{i}".encode()),
            timeout=5,
        ).secret.name
        for i in range(3)
    ]
    open_claim = server.mint_claim(T, P, ("secrets.open", "secrets.read"))
    opener = server.stubs("executor", claim=open_claim).seal
    for name in names[:2]:
        opener.Open(seal_service_pb2.OpenRequest(name=name), timeout=5)
    # Refused by the scope check: an authorization denial, MISSING_SCOPE.
    wrong = server.stubs("executor", claim=server.mint_claim(T, P, ("secrets.read",))).seal
    for _ in range(4):
        with pytest.raises(grpc.RpcError) as caught:
            wrong.Open(seal_service_pb2.OpenRequest(name=names[0]), timeout=5)
        assert error_info(caught.value).reason == "MISSING_SCOPE"
    # An identity the policy does not name.
    with pytest.raises(grpc.RpcError) as caught:
        server.stubs(stranger_cert).seal.Open(
            seal_service_pb2.OpenRequest(name=names[0]), timeout=5
        )
    stranger_reason = error_info(caught.value).reason
    # Verification answers are results, not errors.
    for _ in range(2):
        server.stubs("gateway").keys.VerifyApiKey(
            key_service_pb2.VerifyApiKeyRequest(key="zk_not_a_key"), timeout=5
        )
    # Probes on the health-only listener: counted, never an access-log line.
    lines_before_probes = len(access_lines)
    assert [_probe(server) for _ in range(5)] == ["SERVING"] * 5
    assert len(access_lines) == lines_before_probes

    deadline = time.monotonic() + 10
    while True:  # the non-durable audit events commit within the writer's next batch
        after = _samples(_scrape(server)[1])
        if (
            after
            and server.runtime.audit_log.queue_depth == 0
            and server.runtime.store.audit.outbox_size() == 0  # events of the seals (issue 24)
        ):
            after = _samples(_scrape(server)[1])
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    calls = "rpc_server_call_duration_seconds_count"
    assert delta(calls, rpc_method=SEAL, rpc_response_status_code="OK") == 3
    assert delta(calls, rpc_method=OPEN, rpc_response_status_code="OK") == 2
    assert delta(calls, rpc_method=OPEN, rpc_response_status_code="PERMISSION_DENIED") == 5
    assert delta(calls, rpc_method=VERIFY, rpc_response_status_code="OK") == 2
    assert delta(calls) == 3 + 2 + 5 + 2  # probes are not RPCs of the main port
    assert delta("rpc_server_call_duration_seconds_bucket", rpc_method=SEAL, le="+Inf") == 3
    errors = "zumik_rpc_errors_total"
    assert delta(errors, rpc_method=OPEN, zumik_reason="MISSING_SCOPE") == 4
    assert delta(errors, rpc_method=OPEN, zumik_reason=stranger_reason) == 1
    assert delta(errors) == 5
    denials = "zumik_authz_denials_total"
    assert delta(denials, rpc_method=OPEN, zumik_reason="MISSING_SCOPE") == 4
    assert delta(denials, rpc_method=OPEN, zumik_reason=stranger_reason) == 1
    assert delta("zumik_verify_results_total", zumik_verify_kind="api_key") == 2
    assert (
        delta(
            "zumik_verify_results_total",
            zumik_verify_kind="api_key",
            zumik_verify_result="MALFORMED",
        )
        == 2
    )
    # Audit: each Open waited for its own durable commit; every event of the mix committed
    # (3 seals, 2 opens, the denials: repeated identical ones fold into one event per interval,
    # so at least one per identity, and the verifications).
    assert delta("zumik_audit_durable_wait_duration_seconds_count", zumik_outcome="ok") == 2
    assert delta("zumik_audit_durable_wait_duration_seconds_count", zumik_outcome="timeout") == 0
    events = delta("zumik_audit_batch_size_sum", zumik_outcome="ok")
    committed = server.runtime.audit_log.commits
    assert events >= 3 + 2 + 2
    assert delta("zumik_audit_batch_size_count", zumik_outcome="ok") >= 1
    assert committed >= 1
    assert delta("zumik_audit_append_failures_total") == 0
    assert _value(after, "zumik_audit_queue_depth") == 0
    # Caches: one claim per stub; the first call of each verifies it, the others hit.
    claim_miss = delta("zumik_cache_requests_total", zumik_cache="claim", zumik_cache_result="miss")
    claim_hit = delta("zumik_cache_requests_total", zumik_cache="claim", zumik_cache_result="hit")
    assert claim_miss == 3  # the seal, open and wrong-scope claims
    assert claim_hit == (3 - 1) + (2 - 1) + (4 - 1)
    data_keys = delta("zumik_cache_requests_total", zumik_cache="data_key")
    assert data_keys >= 5  # every seal and open looks its data key up
    # Open's row cache: each of the two opens looks its row up (the first misses).
    assert delta("zumik_cache_requests_total", zumik_cache="sealed_row") == 2
    assert (
        delta("zumik_cache_requests_total", zumik_cache="sealed_row", zumik_cache_result="miss")
        >= 1
    )
    assert delta("zumik_health_probes_total", zumik_health_status="SERVING") == 5
    assert _value(after, "zumik_server_serving") == 1
    assert _value(after, "zumik_storage_ready") == 1
    expiry = _value(after, "zumik_tls_certificate_expiry_seconds", zumik_certificate="server")
    assert expiry > time.time() + 86400


def test_endpoint_serves_metrics_and_health_only(server: RunningServer) -> None:
    assert _scrape(server, "/healthz") == (200, "SERVING\n")
    assert _scrape(server, "/livez") == (200, "ok\n")
    for path in ("/", "/zumik.secrets.v1.SealService/Open", "/debug", "/metrics/../x"):
        assert _scrape(server, path)[0] == 404, path
    # Not a gRPC port: an RPC on it fails, it never reaches a servicer.
    endpoint = server.runtime.metrics.endpoint
    assert endpoint is not None
    with grpc.insecure_channel(f"127.0.0.1:{endpoint.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Check(health_pb2.HealthCheckRequest(), timeout=2)


def test_health_listener_serves_check_only(server: RunningServer) -> None:
    listener = server.server.health_listener
    assert listener is not None
    with grpc.insecure_channel(f"127.0.0.1:{listener.port}") as channel:
        # Watch (a stream that could pin the listener's threads) and every RPC of ours: absent.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(watch))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        opened = channel.unary_unary(
            "/zumik.secrets.v1.SealService/Open",
            request_serializer=seal_service_pb2.OpenRequest.SerializeToString,
            response_deserializer=seal_service_pb2.OpenResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            opened(seal_service_pb2.OpenRequest(name=f"{PARENT}/secrets/x"), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        # A request bigger than any health check is refused.
        big = health_pb2.HealthCheckRequest(service="x" * 4096)
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(big, timeout=2)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_health_listener_follows_the_main_health(server: RunningServer) -> None:
    assert _probe(server) == "SERVING"
    server.server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert _probe(server) == "NOT_SERVING"
    status, body = _scrape(server, "/healthz")
    assert (status, body) == (503, "NOT_SERVING\n")
    assert _value(_samples(_scrape(server)[1]), "zumik_server_serving") == 0
    server.server._set_health(health_pb2.HealthCheckResponse.SERVING)


def test_unknown_methods_do_not_mint_label_values(
    server: RunningServer, stranger_cert: CertPair
) -> None:
    channel = server.channel("console")
    for i in range(5):
        call = channel.unary_unary(f"/zumik.attacker.v1.Chosen/Label{i}")
        with pytest.raises(grpc.RpcError):
            call(b"", timeout=5)
    text = _scrape(server)[1]
    assert "Chosen" not in text and "attacker" not in text
    assert (
        _value(_samples(text), "rpc_server_call_duration_seconds_count", rpc_method="_OTHER") == 5
    )


def test_tenant_label_only_in_rich_mode_and_bounded(zumik_server_factory: ServerFactory) -> None:
    from google.protobuf import field_mask_pb2
    from zumik.secrets.v1 import tenant_service_pb2

    server = zumik_server_factory(
        ZUMIK_METRICS_LISTEN="127.0.0.1:0", ZUMIK_METRICS_TENANT_LIMIT="1"
    )
    admin = server.stubs("control-plane").tenants
    for tenant in ("rich-a", "rich-b"):
        admin.UpdateTenantSettings(
            tenant_service_pb2.UpdateTenantSettingsRequest(
                name=f"tenants/{tenant}/settings",
                settings=tenant_service_pb2.TenantSettings(
                    telemetry_mode=tenant_service_pb2.TELEMETRY_MODE_RICH
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
            ),
            timeout=5,
        )
    for tenant in ("rich-a", "rich-b", "quiet-c"):
        claim = server.mint_claim(tenant, P, ("secrets.seal",))
        server.stubs("console", claim=claim).seal.Seal(
            seal_service_pb2.SealRequest(parent=f"tenants/{tenant}/projects/{P}", plaintext=b"v"),
            timeout=5,
        )
    samples = _samples(_scrape(server)[1])
    name = "zumik_tenant_rpc_calls_total"
    assert _value(samples, name, zumik_tenant_id="rich-a", rpc_method=SEAL) == 1
    assert _value(samples, name, zumik_tenant_id="_OTHER", rpc_method=SEAL) == 1  # over the limit
    text = _scrape(server)[1]
    assert "rich-b" not in text and "quiet-c" not in text


def test_liveness_service_stays_serving_while_storage_is_down(server: RunningServer) -> None:
    server.server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        assert _probe(server) == "NOT_SERVING"  # readiness: out of the endpoints
        assert _probe(server, "zumik.liveness") == "SERVING"  # liveness: no restart
    finally:
        server.server._set_health(health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.postgres
def test_postgres_pool_metrics(zumik_server_factory: ServerFactory, fresh_pg_url: str) -> None:
    server = zumik_server_factory(fresh_pg_url)
    claim = server.mint_claim(T, P, ("secrets.seal",))
    server.stubs("console", claim=claim).seal.Seal(
        seal_service_pb2.SealRequest(parent=PARENT, plaintext=b"pool-metrics"), timeout=5
    )
    samples = _samples(_scrape(server)[1])
    connections = _value(samples, "zumik_db_pool_connections")
    assert connections >= 1
    assert ("zumik_db_pool_waiting", frozenset()) in samples
    for kind in ("timeout", "connect", "lost"):
        assert _value(samples, "zumik_db_pool_errors_total", zumik_db_error=kind) == 0
    assert _value(samples, "zumik_storage_ready") == 1
