"""Spans and access-log lines carry metadata only; sensitive fields never, in any mode."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from zumik.secrets.v1 import key_service_pb2, seal_service_pb2, tenant_service_pb2

from tests import fix_leaks
from tests.fix_server import RunningServer
from zumik_secrets.server.log_setup import JsonFormatter, RedactionFilter

pytestmark = pytest.mark.integration

# The session-wide provider of the leak sweep (tests/fix_leaks.py) feeds this exporter too: a
# process has one tracer provider, so both share it.
_EXPORTER = fix_leaks.TEST_SPAN_EXPORTER


def _install_provider() -> None:
    fix_leaks.install_tracer_provider()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another tracer provider was installed first in this process")


@pytest.fixture
def captured() -> Iterator[tuple[InMemorySpanExporter, io.StringIO]]:
    """Spans (in memory) and every log line the service writes, as the server would write it."""
    _install_provider()
    _EXPORTER.clear()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    logger = logging.getLogger("zumik")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield _EXPORTER, stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


PLAINTEXT = b"PLAINTEXT-SENTINEL-7f3a9c"
KEY = "zk_live_0000000000000000000001_SENTINELsecretSENTINELsecret0000aaaaaa"
TOKEN = "CUSTOMER-TOKEN-SENTINEL-41d2"
DISPLAY = "DISPLAY-SENTINEL-0b7e"
META_VALUE = "META-SENTINEL-93ac"


def _set_mode(server: RunningServer, tenant: str, mode: int) -> None:
    server.stubs("control-plane").tenants.UpdateTenantSettings(
        tenant_service_pb2.UpdateTenantSettingsRequest(
            name=f"tenants/{tenant}/settings",
            settings=tenant_service_pb2.TenantSettings(telemetry_mode=mode),
            update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
        ),
        timeout=5,
    )


def _traffic(server: RunningServer, tenant: str) -> list[str]:
    """Calls carrying sensitive and non-sensitive sentinels; returns every error text seen."""
    claim = server.mint_claim(tenant, "proj", ("secrets.seal", "keys.write", "tenant.admin"))
    errors: list[str] = []
    calls = [
        lambda: server.stubs("console", claim=claim).seal.Seal(
            seal_service_pb2.SealRequest(
                parent=f"tenants/{tenant}/projects/proj",
                display_name=DISPLAY,
                plaintext=PLAINTEXT,
                metadata={"provider": META_VALUE},
            ),
            timeout=5,
        ),
        lambda: server.stubs("gateway").keys.VerifyApiKey(
            key_service_pb2.VerifyApiKeyRequest(key=KEY), timeout=5
        ),
        lambda: server.stubs("control-plane").tenants.ConfigureCustomerKey(
            tenant_service_pb2.ConfigureCustomerKeyRequest(
                name=f"tenants/{tenant}/settings", key_name=DISPLAY, token=TOKEN
            ),
            timeout=5,
        ),
        lambda: server.stubs("console", claim=claim).keys.CreateApiKey(
            key_service_pb2.CreateApiKeyRequest(
                parent=f"tenants/{tenant}/projects/proj", display_name=DISPLAY, scopes=["x"]
            ),
            timeout=5,
        ),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as err:
            errors.append(f"{err.code()} {err.details()} {err.trailing_metadata()!r}")
    return errors


def _span_texts(exporter: InMemorySpanExporter) -> list[str]:
    texts = []
    for span in exporter.get_finished_spans():
        texts.append(repr(dict(span.attributes or {})))
        texts.extend(repr(dict(event.attributes or {})) for event in span.events)
        texts.append(span.status.description or "")
    return texts


SENSITIVE = [PLAINTEXT.decode(), KEY, "SENTINELsecret", TOKEN]
NON_SENSITIVE = [DISPLAY, META_VALUE]


def test_default_mode_carries_no_request_values(
    zumik_server: RunningServer, captured: tuple[InMemorySpanExporter, io.StringIO]
) -> None:
    exporter, log = captured
    errors = _traffic(zumik_server, "quiet")
    spans = _span_texts(exporter)
    lines = log.getvalue().splitlines()
    assert len(exporter.get_finished_spans()) >= 4
    assert sum('"logger": "zumik.access"' in line for line in lines) >= 4
    for needle in SENSITIVE + NON_SENSITIVE:
        assert not any(needle in s for s in spans), needle
        assert not any(needle in line for line in lines), needle
    for needle in SENSITIVE:
        assert not any(needle in e for e in errors), needle
    attrs = exporter.get_finished_spans()[-1].attributes or {}
    assert attrs["zumik.peer.spiffe_id"] == "spiffe://zumik.local/svc/console"
    assert attrs["rpc.service"] == "KeyService"
    assert attrs["zumik.tenant_id"] == "quiet"
    assert "zumik.request" not in attrs


def test_rich_mode_adds_non_sensitive_fields_only(
    zumik_server: RunningServer, captured: tuple[InMemorySpanExporter, io.StringIO]
) -> None:
    exporter, log = captured
    _set_mode(zumik_server, "loud", tenant_service_pb2.TELEMETRY_MODE_RICH)
    exporter.clear()
    errors = _traffic(zumik_server, "loud")
    spans = _span_texts(exporter)
    lines = log.getvalue().splitlines()
    for needle in NON_SENSITIVE:
        assert any(needle in s for s in spans), needle
        assert any(needle in line for line in lines), needle
    for needle in SENSITIVE:
        assert not any(needle in s for s in spans), needle
        assert not any(needle in line for line in lines), needle
        assert not any(needle in e for e in errors), needle
    assert any("[REDACTED]" in s for s in spans)
    # Switching back removes the detail again (the cache follows the change feed).
    _set_mode(zumik_server, "loud", tenant_service_pb2.TELEMETRY_MODE_DEFAULT)
    exporter.clear()
    _traffic(zumik_server, "loud")
    assert not any(DISPLAY in s for s in _span_texts(exporter))


def test_redaction_filter_is_the_last_line_of_defence(
    captured: tuple[InMemorySpanExporter, io.StringIO],
) -> None:
    _, log = captured
    logging.getLogger("zumik.test").warning("oops %s and %s", KEY, "zs_" + "A" * 43)
    text = log.getvalue()
    assert KEY not in text
    assert "zs_" + "A" * 43 not in text
    assert "[REDACTED]" in text
