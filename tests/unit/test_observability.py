"""OTEL_* handling, the observability settings, and docs/observability.md against the code."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from zumik_secrets.server import otel_env
from zumik_secrets.server.config import ServerConfig
from zumik_secrets.server.telemetry import ACCESS_LOG, configure_access_log

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs/observability.md").read_text(encoding="utf-8")
_OTEL = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OTEL:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("env", "traces", "metrics"),
    [
        ({}, [], []),  # nothing configured: nothing exported (not localhost:4317)
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
            ["otlp_proto_grpc"],
            ["otlp_proto_grpc"],
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],
            ["otlp_proto_http"],
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, ["otlp_proto_grpc"], []),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"},
            [],
            ["otlp_proto_grpc"],
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"},
            [],
            [],
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "prometheus"},
            ["console"],
            [],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],  # the per-signal protocol wins
            [],
        ),
    ],
)
def test_exporter_selection_follows_the_otel_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], traces: list[str], metrics: list[str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert otel_env.exporter_names("traces") == traces
    assert otel_env.exporter_names("metrics") == metrics


def test_an_unknown_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(RuntimeError):
        otel_env.exporter_names("traces")


def test_resource_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert otel_env.resource_from_env().attributes["service.name"] == "zumik-secrets"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=zumik,team=platform")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "secrets-eu")
    attributes = otel_env.resource_from_env().attributes
    assert attributes["service.name"] == "secrets-eu"
    assert attributes["team"] == "platform"


def _config(**env: str) -> ServerConfig:
    base = {
        "ZUMIK_TLS_CERT": "c",
        "ZUMIK_TLS_KEY": "k",
        "ZUMIK_TLS_CLIENT_CA": "ca",
        "ZUMIK_POLICY_FILE": "p",
        "ZUMIK_MASTER_KEYRING": "{}",
    }
    return ServerConfig.load({**base, **env})


@pytest.mark.parametrize(
    "env",
    [
        {"ZUMIK_ACCESS_LOG_LEVEL": "LOUD"},
        {"ZUMIK_METRICS_LISTEN": "9464"},
        {"ZUMIK_HEALTH_LISTEN": ":8081"},
        {"ZUMIK_HEALTH_LISTEN": "127.0.0.1:50051", "ZUMIK_LISTEN": "127.0.0.1:50051"},
        {"ZUMIK_METRICS_TENANT_LIMIT": "-1"},
    ],
)
def test_bad_observability_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="ZUMIK_"):
        _config(**env)


def test_observability_settings_default_off() -> None:
    config = _config()
    assert (config.metrics_listen, config.health_listen, config.access_log_level) == (
        "",
        "",
        "INFO",
    )


def test_access_log_level_is_its_own() -> None:
    root = logging.getLogger()
    old_root, old_access = root.level, ACCESS_LOG.level
    try:
        root.setLevel(logging.WARNING)  # ZUMIK_LOG_LEVEL=WARNING
        configure_access_log("INFO")
        assert ACCESS_LOG.isEnabledFor(logging.INFO)
        configure_access_log("OFF")
        assert not ACCESS_LOG.isEnabledFor(logging.CRITICAL)
        configure_access_log("warning")
        assert not ACCESS_LOG.isEnabledFor(logging.INFO)
    finally:
        root.setLevel(old_root)
        ACCESS_LOG.setLevel(old_access)


def test_docs_list_every_metric_and_setting() -> None:
    source = (REPO / "service/zumik_secrets/server/metrics.py").read_text(encoding="utf-8")
    names = re.findall(
        r'create_(?:observable_)?(?:counter|gauge|histogram)\(\s*"([a-z._]+)"', source
    )
    assert len(names) >= 25
    for name in names:
        assert f"| `{name}` |" in DOC, f"{name} is not in docs/observability.md"
    for setting in (
        "ZUMIK_METRICS_LISTEN",
        "ZUMIK_HEALTH_LISTEN",
        "ZUMIK_ACCESS_LOG_LEVEL",
        "ZUMIK_METRICS_TENANT_LIMIT",
    ):
        assert f"`{setting}`" in DOC
    for variable in _OTEL:
        assert variable in DOC, variable


def test_breaker_states_feed_the_breaker_gauge() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from zumik_secrets.app.outbound_limits import Breakers
    from zumik_secrets.server.metrics import OtelMetrics

    now = [0.0]
    breakers = Breakers(failures=1, open_seconds=10.0)
    down = breakers.for_server("https://down.example:8200")
    down._clock = lambda: now[0]
    breakers.for_server("https://up.example:8200").success()
    down.failure()
    assert breakers.states() == {"closed": 1, "open": 1, "half_open": 0}
    now[0] = 11.0
    assert down.state == "half_open"

    reader = InMemoryMetricReader()
    metrics = OtelMetrics(MeterProvider(metric_readers=[reader]))
    metrics.sources.breakers["customer_key"] = breakers.states
    metrics.breaker_state("database", "primary", "open")  # the recorder hook (issue 24)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (p.attributes["zumik.breaker.kind"], p.attributes["zumik.breaker.state"]): p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "zumik.breaker.open"
        for p in m.data.data_points
    }
    assert points[("customer_key", "half_open")] == 1
    assert points[("customer_key", "closed")] == 1
    assert points[("database", "open")] == 1
    # The servers' addresses are never labels.
    assert not any("example" in str(key) for key in points)
