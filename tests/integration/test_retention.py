"""Per-tenant retention settings and the sweeps that enforce them (RPC, schedule, CLI)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from tests.fix_db import wait_until
from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from tests.integration import purge_support as ps
from zumik_secrets.core.audit_chain import EventDraft
from zumik_secrets.core.handles import new_handle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DAY = 86400


def _update(
    server: RunningServer, tenant: str, paths: list[str], **values: int
) -> tpb.TenantSettings:
    settings = tpb.TenantSettings(
        **{k: duration_pb2.Duration(seconds=v) for k, v in values.items()}
    )
    return (
        server.stubs("control-plane")
        .tenants.UpdateTenantSettings(
            tpb.UpdateTenantSettingsRequest(
                name=f"tenants/{tenant}/settings",
                settings=settings,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            timeout=10,
        )
        .settings
    )


def _get(server: RunningServer, tenant: str) -> tpb.TenantSettings:
    return (
        server.stubs("control-plane")
        .tenants.GetTenantSettings(
            tpb.GetTenantSettingsRequest(name=f"tenants/{tenant}/settings"), timeout=10
        )
        .settings
    )


def _run(server: RunningServer, tenant: str = "-") -> dict[str, int]:
    answer = server.stubs("control-plane").tenants.RunRetention(
        tpb.RunRetentionRequest(name=f"tenants/{tenant}/settings"), timeout=30
    )
    return dict(answer.removed)


def _events(server: RunningServer, tenant: str, action: str) -> list[apb.AuditEvent]:
    return list(
        server.stubs("auditor")
        .audit.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{tenant}", action=action), timeout=10
        )
        .events
    )


def test_settings_defaults_updates_bounds_and_audit(
    zumik_server_any_backend: RunningServer,
) -> None:
    server = zumik_server_any_backend
    tenant = ps.tenant_id("settings")
    fresh = _get(server, tenant)
    assert fresh.audit_retention.seconds == 400 * DAY
    assert fresh.revoked_key_retention.seconds == 30 * DAY
    assert fresh.session_absolute_lifetime.seconds == 12 * 3600
    paths = ["audit_retention", "revoked_key_retention", "session_absolute_lifetime"]
    updated = _update(
        server,
        tenant,
        paths,
        audit_retention=7 * DAY,
        revoked_key_retention=0,
        session_absolute_lifetime=600,
    )
    assert (
        updated.audit_retention.seconds,
        updated.revoked_key_retention.seconds,
        updated.session_absolute_lifetime.seconds,
    ) == (7 * DAY, 0, 600)
    assert _get(server, tenant) == updated
    (event,) = _events(server, tenant, "tenant.settings.update")
    assert event.attributes["audit_retention_seconds"] == str(7 * DAY)
    assert event.attributes["revoked_key_retention_seconds"] == "0"

    for field, seconds in (
        ("audit_retention", 0),
        ("audit_retention", DAY - 1),
        ("audit_retention", 3651 * DAY),
        ("revoked_key_retention", -1),
        ("revoked_key_retention", 3651 * DAY),
        ("session_absolute_lifetime", 299),
        ("session_absolute_lifetime", 31 * DAY),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            _update(server, tenant, [field], **{field: seconds})
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert error_info(caught.value).reason == "RETENTION_OUT_OF_RANGE", (field, seconds)
    for bad in (["update_time"], ["customer_key_configured"], ["nope"]):
        with pytest.raises(grpc.RpcError) as caught:
            _update(server, tenant, bad)
        assert error_info(caught.value).reason == "INVALID_UPDATE_MASK"
    assert _get(server, tenant) == updated  # nothing changed

    # Named in the mask but unset: back to the default.
    reset = _update(server, tenant, ["audit_retention"])
    assert reset.audit_retention.seconds == 400 * DAY
    assert reset.session_absolute_lifetime.seconds == 600


def test_new_sessions_use_the_tenants_lifetime(zumik_server: RunningServer) -> None:
    server = zumik_server
    tenant = ps.tenant_id("sessions")
    stubs = ps.claim_stubs(server, tenant, "p1")

    def lifetime() -> int:
        session = stubs.keys.CreateSession(
            kpb.CreateSessionRequest(
                parent=f"tenants/{tenant}/projects/p1", user_subject="user-1", scopes=["console"]
            ),
            timeout=10,
        ).session
        return session.expire_time.seconds - session.create_time.seconds

    assert lifetime() == 12 * 3600
    _update(server, tenant, ["session_absolute_lifetime"], session_absolute_lifetime=900)
    assert lifetime() == 900


def test_run_retention_enforces_each_tenants_settings(
    zumik_server_any_backend: RunningServer,
) -> None:
    server = zumik_server_any_backend
    url = server.runtime.config.database_url
    strict, lax = ps.tenant_id("strict"), ps.tenant_id("lax")
    # The strict tenant's chain starts with two events older than its one-day retention.
    old = datetime.now(UTC) - timedelta(days=3)
    server.runtime.store.audit.append(
        [
            EventDraft(
                strict, new_handle("evt"), old, "test", "", "test.old", "t", "success", "", "", ()
            )
            for _ in range(2)
        ]
    )

    _update(
        server,
        strict,
        ["revoked_key_retention", "audit_retention"],
        revoked_key_retention=0,
        audit_retention=DAY,
    )
    names = {}
    for tenant in (strict, lax):
        stubs = ps.claim_stubs(server, tenant, "p1")
        key = stubs.keys.CreateApiKey(
            kpb.CreateApiKeyRequest(parent=f"tenants/{tenant}/projects/p1", scopes=["a.b"]),
            timeout=10,
        ).api_key
        stubs.keys.RevokeApiKey(kpb.RevokeApiKeyRequest(name=key.name), timeout=10)
        names[tenant] = key.name
        session = stubs.keys.CreateSession(
            kpb.CreateSessionRequest(
                parent=f"tenants/{tenant}/projects/p1", user_subject="user-1", scopes=["console"]
            ),
            timeout=10,
        ).session
        ps.query(
            url,
            "UPDATE sessions SET absolute_expire_time = %s WHERE session_id = %s",
            (
                0 if url.startswith("sqlite") else datetime(2000, 1, 1, tzinfo=UTC),
                session.name.rsplit("/", 1)[1],
            ),
        )
    removed = _run(server, strict)
    assert removed == {"sessions": 1, "api_keys": 1, "audit_events": 2}
    control = server.stubs("control-plane").keys
    ps.not_found(lambda: control.GetApiKey(kpb.GetApiKeyRequest(name=names[strict]), timeout=10))
    assert control.GetApiKey(kpb.GetApiKeyRequest(name=names[lax]), timeout=10).api_key.name
    verified = server.stubs("auditor").audit.VerifyChain(
        apb.VerifyChainRequest(parent=f"tenants/{strict}"), timeout=10
    )
    assert verified.ok
    (run,) = _events(server, strict, "retention.run")
    assert run.attributes["api_keys"] == "1" and run.attributes["audit_events"] == "2"

    everyone = _run(server)
    assert everyone["sessions"] >= 1 and everyone["api_keys"] == 0  # lax keeps its key 30 days
    assert "changes" in everyone
    assert _events(server, "-", "retention.run")


def test_retention_runs_on_a_schedule(zumik_server_factory: ServerFactory) -> None:
    server = zumik_server_factory(ZUMIK_RETENTION_INTERVAL="0.5")
    assert wait_until(lambda: bool(_events(server, "-", "retention.run")), timeout=10)


def test_retention_run_command(zumik_server: RunningServer, tmp_path: Path) -> None:
    server = zumik_server
    url = server.runtime.config.database_url
    tenant = ps.tenant_id("cli")
    _update(server, tenant, ["revoked_key_retention"], revoked_key_retention=0)
    stubs = ps.claim_stubs(server, tenant, "p1")
    key = stubs.keys.CreateApiKey(
        kpb.CreateApiKeyRequest(parent=f"tenants/{tenant}/projects/p1", scopes=["a.b"]), timeout=10
    ).api_key
    stubs.keys.RevokeApiKey(kpb.RevokeApiKeyRequest(name=key.name), timeout=10)
    env = {"PYTHONPATH": f"{REPO / 'service'}:{REPO / 'clients/python/src'}", "PATH": "/usr/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zumik_secrets.cli.main",
            "retention",
            "run",
            "--database-url",
            url,
            "--keyring",
            str(tmp_path / "keyring.json"),
            "--tenant",
            tenant,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "api_keys 1" in done.stdout
    assert ps.query(url, "SELECT count(*) FROM api_keys WHERE tenant_id = %s", (tenant,)) == [(0,)]
    (run,) = _events(server, tenant, "retention.run")
    assert run.actor == "zumik-secrets/cli"
