"""Impersonation is granted by the policy flag ``impersonate`` only, and bounds nothing else."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from zumik.secrets.v1 import key_service_pb2 as kpb

from tests.fix_server import ServerFactory
from tests.grpc_errors import error_info
from zumik_secrets.server.config import dev_policy_path

pytestmark = pytest.mark.integration

PARENT = "tenants/acme/projects/web"


def test_an_identity_with_the_flag_may_name_another_user_but_not_widen(
    zumik_server_factory: ServerFactory, tmp_path: Path
) -> None:
    text = dev_policy_path().read_text(encoding="utf-8")
    marker = 'description = "Customer console backend'
    assert marker in text
    policy = tmp_path / "policy.toml"
    policy.write_text(text.replace(marker, "impersonate = true\n" + marker, 1))
    server = zumik_server_factory(ZUMIK_POLICY_FILE=str(policy))
    claim = server.mint_claim("acme", "web", ("sessions.write",), subject="support-agent")
    console = server.stubs("console", claim=claim).keys
    other = console.CreateSession(
        kpb.CreateSessionRequest(parent=PARENT, user_subject="customer", scopes=["sessions.write"])
    )
    assert other.session.user_subject == "customer"
    with pytest.raises(grpc.RpcError) as caught:
        console.CreateSession(
            kpb.CreateSessionRequest(
                parent=PARENT, user_subject="customer", scopes=["sessions.write", "tenant.admin"]
            )
        )
    assert error_info(caught.value).reason == "SCOPE_ESCALATION"
    # The executor, without the flag, may not (it is not even allowed CreateSession).
    with pytest.raises(grpc.RpcError) as caught:
        server.stubs("executor", claim=claim).keys.CreateSession(
            kpb.CreateSessionRequest(parent=PARENT, user_subject="customer", scopes=["x"])
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
