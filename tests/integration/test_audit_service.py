"""AuditService over real mutual TLS: what gets recorded, AppendEvent's schema, reading, export
and the offline verifier, and secrets kept out of every event."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2, key_service_pb2, seal_service_pb2, tenant_service_pb2

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info, status_bytes
from zumik_secrets.cli.dev_pki import CertPair
from zumik_secrets.cli.main import main as cli_main
from zumik_secrets.core.claims import ClaimSigner
from zumik_secrets.core.primitives import generate_ed25519

pytestmark = pytest.mark.integration

BILLING = "spiffe://zumik.local/svc/billing"
CONSOLE = "spiffe://zumik.local/svc/console"
GATEWAY = "spiffe://zumik.local/svc/gateway"
AUDITOR = "spiffe://zumik.local/svc/auditor"


def _fails(fn: Any, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, info.value.details()
    return info.value


def find(
    server: RunningServer, tenant: str, *, timeout: float = 3.0, count: int = 1, **filters: Any
) -> list[apb.AuditEvent]:
    """Events of ``tenant`` matching ``filters`` read over mTLS as the auditor (waits for
    non-durable events, which land within the group-commit bound)."""
    audit = server.stubs("auditor").audit
    deadline = time.monotonic() + timeout
    while True:
        answer = audit.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{tenant}", page_size=1000, **filters),
            timeout=5,
        )
        if len(answer.events) >= count or time.monotonic() > deadline:
            return list(answer.events)
        time.sleep(0.02)


def append(server: RunningServer, tenant: str = "acme", **kw: Any) -> apb.AppendEventResponse:
    fields: dict[str, Any] = {
        "parent": f"tenants/{tenant}",
        "action": "billing.plan_changed",
        "target": f"tenants/{tenant}/subscription",
        "outcome": apb.AUDIT_OUTCOME_SUCCESS,
        "reason": "UPGRADE",
        "attributes": {"from_plan": "free", "to_plan": "pro"},
    }
    fields.update(kw)
    return server.stubs("billing").audit.AppendEvent(apb.AppendEventRequest(**fields), timeout=10)


# -- what the service records ------------------------------------------------------------------


def test_unknown_identity_denial_is_recorded(
    zumik_server: RunningServer, stranger_cert: CertPair
) -> None:
    stubs = zumik_server.stubs(stranger_cert)
    _fails(
        lambda: stubs.keys.ListSigningKeys(key_service_pb2.ListSigningKeysRequest(), timeout=5),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    events = find(zumik_server, "-", action="authz.deny", actor="spiffe://zumik.local/svc/stranger")
    assert len(events) == 1
    ev = events[0]
    assert ev.outcome == apb.AUDIT_OUTCOME_DENIED
    assert ev.reason == "UNKNOWN_IDENTITY"
    assert ev.attributes["method"] == "zumik.secrets.v1.KeyService/ListSigningKeys"
    assert ev.tenant == "-" and ev.sequence >= 1 and len(ev.hash) == 32


def test_unknown_method_and_unlisted_method_are_recorded(zumik_server: RunningServer) -> None:
    gateway = zumik_server.stubs("gateway")
    _fails(
        lambda: gateway.audit.QueryEvents(apb.QueryEventsRequest(parent="tenants/acme"), timeout=5),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    unknown = zumik_server.channel("gateway").unary_unary("/zumik.secrets.v1.Nope/Nothing")
    _fails(lambda: unknown(b"", timeout=5), grpc.StatusCode.PERMISSION_DENIED)
    events = find(zumik_server, "-", action="authz.deny", actor=GATEWAY, count=2)
    methods = {e.attributes["method"]: e.reason for e in events}
    assert methods == {
        "zumik.secrets.v1.AuditService/QueryEvents": "METHOD_NOT_ALLOWED",
        "zumik.secrets.v1.Nope/Nothing": "METHOD_NOT_ALLOWED",
    }
    assert all(e.outcome == apb.AUDIT_OUTCOME_DENIED for e in events)


def test_claim_rejections_are_recorded(zumik_server: RunningServer) -> None:
    signer = zumik_server.runtime.claim_keys.signer
    forged, _ = ClaimSigner(signer.kid, generate_ed25519(), signer.issuer, signer.audience).mint(
        "acme", "web", "key_test", ("tenant.admin",), int(time.time()), 60
    )
    garbage = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2ln"
    for claim in (forged, garbage):
        stubs = zumik_server.stubs("console", claim=claim)
        _fails(
            lambda s=stubs: s.tenants.GetTenantSettings(
                tenant_service_pb2.GetTenantSettingsRequest(name="tenants/acme/settings"),
                timeout=5,
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    events = find(zumik_server, "-", action="authz.deny", actor=CONSOLE, count=2)
    reasons = [e.reason for e in events]
    assert len(reasons) == 2 and all(r.startswith("CLAIM_") for r in reasons), reasons
    assert all(e.target == "tenants/acme/settings" for e in events)
    assert all(e.outcome == apb.AUDIT_OUTCOME_DENIED for e in events)


def test_billing_append_is_durable_and_recorded_with_its_authorization(
    zumik_server: RunningServer,
) -> None:
    answer = append(zumik_server)
    ev = answer.event
    assert (ev.tenant, ev.actor, ev.actor_subject) == ("acme", BILLING, "")
    assert (ev.action, ev.outcome, ev.reason) == (
        "billing.plan_changed",
        apb.AUDIT_OUTCOME_SUCCESS,
        "UPGRADE",
    )
    assert dict(ev.attributes) == {"from_plan": "free", "to_plan": "pro"}
    assert ev.event_id.startswith("evt_") and len(ev.hash) == 32
    stored = find(zumik_server, "acme", action="billing.plan_changed")
    assert [e.event_id for e in stored] == [ev.event_id]
    allows = find(zumik_server, "acme", action="authz.allow", actor=BILLING)
    assert allows and allows[0].reason == "ALLOWED_WITHOUT_CLAIM"
    assert allows[0].attributes["method"] == "zumik.secrets.v1.AuditService/AppendEvent"


def test_a_sensitive_call_leaves_one_event_and_the_allow_when_it_records_none(
    zumik_server: RunningServer,
) -> None:
    """Open is ``audit_allow``: its own durable ``secret.open`` event is the record of the
    allowed call (no second ``authz.allow``); a call that records nothing of its own (a name of
    the wrong kind, refused by the servicer) still leaves its ``authz.allow``."""
    parent = "tenants/acme/projects/web"
    console = zumik_server.stubs(
        "console", claim=zumik_server.mint_claim("acme", "web", ("secrets.seal",))
    )
    name = console.seal.Seal(
        seal_service_pb2.SealRequest(parent=parent, plaintext=b"provider-key"), timeout=5
    ).secret.name
    executor = zumik_server.stubs(
        "executor", claim=zumik_server.mint_claim("acme", "web", ("secrets.open",))
    ).seal
    assert executor.Open(seal_service_pb2.OpenRequest(name=name), timeout=5).plaintext
    opened = find(zumik_server, "acme", action="secret.open", target=name)
    assert [e.outcome for e in opened] == [apb.AUDIT_OUTCOME_SUCCESS]
    assert opened[0].actor == "spiffe://zumik.local/svc/executor"
    sealed = find(zumik_server, "acme", action="secret.seal", target=name)
    assert len(sealed) == 1 and sealed[0].actor == "spiffe://zumik.local/svc/console"
    bad = parent  # a well-formed name of the claim's project, but not a secret's
    with pytest.raises(grpc.RpcError) as refused:
        executor.Open(seal_service_pb2.OpenRequest(name=bad), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    missing = f"{parent}/secrets/sec_{'0' * 22}"
    with pytest.raises(grpc.RpcError) as not_found:
        executor.Open(seal_service_pb2.OpenRequest(name=missing), timeout=5)
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    # The executor's allows (the auditor's own QueryEvents calls leave allows too).
    allows = find(
        zumik_server,
        "acme",
        action="authz.allow",
        actor="spiffe://zumik.local/svc/executor",
        timeout=15.0,
        count=2,
    )
    by_target = {e.target: e for e in allows}
    assert name not in by_target  # the Open and the Seal were recorded by their own events
    # A failed call keeps its allow, even though it recorded its own failure event.
    assert by_target[missing].reason == "ALLOWED"
    assert find(zumik_server, "acme", action="secret.open", target=missing)[0].outcome == (
        apb.AUDIT_OUTCOME_FAILURE
    )
    assert by_target[bad].reason == "ALLOWED"
    assert by_target[bad].actor == "spiffe://zumik.local/svc/executor"
    assert by_target[bad].attributes["method"] == "zumik.secrets.v1.SealService/Open"
    assert by_target[bad].actor_subject  # the claim's subject


def test_api_key_verification_outcomes_are_recorded(zumik_server: RunningServer) -> None:
    console = zumik_server.stubs(
        "console", claim=zumik_server.mint_claim("acme", "web", ("keys.write", "keys.read"))
    )
    created = console.keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(
            parent="tenants/acme/projects/web", scopes=["keys.read"], display_name="ci"
        ),
        timeout=5,
    )
    gateway = zumik_server.stubs("gateway").keys
    valid_answer = gateway.VerifyApiKey(
        key_service_pb2.VerifyApiKeyRequest(key=created.raw_key), timeout=5
    )
    assert valid_answer.result == common_pb2.VERIFY_RESULT_VALID
    bad = (
        created.raw_key[:-10] + ("A" if created.raw_key[-10] != "A" else "B") + created.raw_key[-9:]
    )
    gateway.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key=bad), timeout=5)
    deadline = time.monotonic() + 3
    while True:
        verifies = find(zumik_server, "acme", action="api_key.verify")
        service_wide = find(zumik_server, "-", action="api_key.verify", timeout=0)
        if len(verifies) + len(service_wide) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    valid = [e for e in verifies if e.outcome == apb.AUDIT_OUTCOME_SUCCESS]
    assert valid and valid[0].actor == GATEWAY and valid[0].target == created.api_key.name
    failed = [e for e in verifies + service_wide if e.outcome == apb.AUDIT_OUTCOME_FAILURE]
    assert failed and failed[0].actor == GATEWAY
    creates = find(zumik_server, "acme", action="api_key.create")
    assert creates and creates[0].actor == CONSOLE and creates[0].actor_subject == "key_test"


# -- AppendEvent's schema ----------------------------------------------------------------------

SECRETS = {
    "api_key": "zk_live_" + "A" * 21 + "b_" + "Xy9" * 11 + "Q1w2e3",
    "session": "zs_" + "k3Y" * 15,
    "pem": "-----BEGIN PRIVATE KEY-----",
    "b64": "dGhpcyBpcyBhIHZlcnkgc2VjcmV0IGtleSBtYXRlcmlhbCE=",
}


@pytest.mark.parametrize("where", ["attribute", "target"])
@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_append_refuses_secret_looking_values_without_echoing_them(
    zumik_server: RunningServer, kind: str, where: str
) -> None:
    secret = SECRETS[kind]
    kw: dict[str, Any] = (
        {"attributes": {"note": secret}} if where == "attribute" else {"target": secret}
    )
    err = _fails(lambda: append(zumik_server, **kw), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "SECRET_IN_EVENT"
    assert error_info(err).metadata["field"] in ("attributes[note]", "target")
    assert secret.encode() not in status_bytes(err)
    assert secret not in (err.details() or "")


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"action": "api_key.create"}, "action"),
        ({"reason": "not upper"}, "reason"),
        ({"attributes": {f"k{i}": "v" for i in range(17)}}, "attributes"),
        ({"attributes": {"Key": "v"}}, "attributes"),
        ({"attributes": {"k": "v" * 257}}, "attributes[k]"),
        ({"target": "t" * 257}, "target"),
        ({"outcome": apb.AUDIT_OUTCOME_UNSPECIFIED}, "outcome"),
    ],
)
def test_append_schema(zumik_server: RunningServer, kw: dict[str, Any], field: str) -> None:
    err = _fails(lambda: append(zumik_server, **kw), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "INVALID_EVENT"
    assert error_info(err).metadata["field"] == field


def test_append_to_the_service_chain_is_refused(zumik_server: RunningServer) -> None:
    err = _fails(lambda: append(zumik_server, tenant="-"), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "INVALID_NAME"


# -- reading -----------------------------------------------------------------------------------


def test_query_pages_and_tenant_isolation(zumik_server: RunningServer) -> None:
    for i in range(7):
        append(zumik_server, target=f"invoices/{i}", action="billing.invoice_paid")
    append(zumik_server, tenant="beta")
    # A project claim sees only its project's events: the tenant's billing events are not in it.
    project_view = zumik_server.stubs(
        "console", claim=zumik_server.mint_claim("acme", "web", ("audit.read",))
    ).audit
    assert not project_view.QueryEvents(
        apb.QueryEventsRequest(parent="tenants/acme", action="billing.invoice_paid"), timeout=5
    ).events
    claim = zumik_server.mint_claim("acme", "web", ("audit.read", "audit.read.tenant"))
    console = zumik_server.stubs("console", claim=claim).audit
    seen: list[str] = []
    token = ""
    while True:
        page = console.QueryEvents(
            apb.QueryEventsRequest(
                parent="tenants/acme",
                action="billing.invoice_paid",
                page_size=3,
                page_token=token,
            ),
            timeout=5,
        )
        seen += [e.target for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"invoices/{i}" for i in range(7)]
    # The claim's tenant only: another tenant, or the service-wide chain, is NOT_FOUND.
    for parent in ("tenants/beta", "tenants/-"):
        err = _fails(
            lambda p=parent: console.QueryEvents(apb.QueryEventsRequest(parent=p), timeout=5),
            grpc.StatusCode.NOT_FOUND,
        )
        assert error_info(err).reason == "NOT_FOUND"
    err = _fails(
        lambda: console.QueryEvents(
            apb.QueryEventsRequest(parent="tenants/acme", page_token="bm9wZQ"), timeout=5
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "INVALID_PAGE_TOKEN"


def test_query_filters_are_bounded_before_they_reach_a_query(zumik_server: RunningServer) -> None:
    """Adversary (2026-12-04): 7 MB action/actor/target filters went to SQL; six callers for 4 s
    raised a victim's median latency from 2 ms to 130 ms. Longer than any event holds: refused."""
    append(zumik_server, target="invoices/bounded", action="billing.invoice_paid")
    claim = zumik_server.mint_claim("acme", "web", ("audit.read", "audit.read.tenant"))
    console = zumik_server.stubs("console", claim=claim).audit
    for field in ("action", "actor", "target"):
        err = _fails(
            lambda f=field: console.QueryEvents(
                apb.QueryEventsRequest(parent="tenants/acme", **{f: "x" * 2049}), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_info(err).reason == "VALUE_TOO_LARGE"
        assert error_info(err).metadata["field"] == field
        assert "x" * 64 not in (err.details() or "")
        # At the bound: a query, matching nothing.
        answer = console.QueryEvents(
            apb.QueryEventsRequest(parent="tenants/acme", **{field: "x" * 2048}), timeout=5
        )
        assert not answer.events
    huge = "billing.invoice_paid" + "x" * (7 * 1024 * 1024)
    err = _fails(
        lambda: console.QueryEvents(
            apb.QueryEventsRequest(parent="tenants/acme", action=huge), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "VALUE_TOO_LARGE"


def test_verify_checkpoint_export_and_offline_verify(
    zumik_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(10):
        append(zumik_server, target=f"invoices/{i}", action="billing.invoice_paid")
    auditor = zumik_server.stubs("auditor").audit
    cp = auditor.CreateCheckpoint(
        apb.CreateCheckpointRequest(parent="tenants/acme"), timeout=5
    ).checkpoint
    assert cp.tenant == "acme" and cp.sequence >= 20 and len(cp.signature) == 64
    report = auditor.VerifyChain(apb.VerifyChainRequest(parent="tenants/acme"), timeout=5)
    # The auditor's own calls are audited too (allowed without a claim), so the head moves on.
    assert report.ok and report.checked_count == report.head_sequence >= cp.sequence
    assert auditor.VerifyChain(apb.VerifyChainRequest(parent="tenants/-"), timeout=5).ok
    keys = auditor.ListCheckpointKeys(apb.ListCheckpointKeysRequest(), timeout=5)
    assert keys.keys and keys.keys[0].status == "active"
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json_format.MessageToJson(keys))
    lines = [
        m.line
        for m in auditor.ExportEvents(apb.ExportEventsRequest(parent="tenants/acme"), timeout=10)
    ]
    export = tmp_path / "acme.jsonl"
    export.write_text("\n".join(lines) + "\n")
    assert cli_main(["audit", "verify", str(export), "--keys", str(keys_file)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")

    events = [json.loads(line) for line in lines]
    seq_of = {i: e["seq"] for i, e in enumerate(events) if e["type"] == "event"}
    idx = [i for i in seq_of if seq_of[i] in (4, 5, 6, 9)]

    def check(mutated: list[dict[str, Any]], first_bad: int, failure: str) -> None:
        export.write_text("\n".join(json.dumps(e) for e in mutated) + "\n")
        assert cli_main(["audit", "verify", str(export), "--keys", str(keys_file)]) == 1
        assert capsys.readouterr().out.startswith(f"FAILED at sequence {first_bad}: {failure}")

    edited = [dict(e) for e in events]
    edited[idx[0]] = {**edited[idx[0]], "target": "invoices/forged"}
    check(edited, 4, "EDITED")
    check([e for i, e in enumerate(events) if i != idx[1]], 5, "DELETED")
    swapped = list(events)
    swapped[idx[1]], swapped[idx[2]] = swapped[idx[2]], swapped[idx[1]]
    check(swapped, 5, "REORDERED")
    inserted = list(events)
    inserted.insert(idx[1], {**events[idx[0]], "id": "evt_inserted", "seq": 5})
    check(
        [
            *inserted[: idx[1] + 1],
            *(
                {**e, "seq": e["seq"] + 1} if e["type"] == "event" else e
                for e in inserted[idx[1] + 1 :]
            ),
        ],
        5,
        "INSERTED",
    )
    # Truncated after the checkpoint: the signed head covers events that are gone.
    truncated = [e for e in events if e["type"] != "event" or e["seq"] < 9]
    check(truncated, 9, "CHECKPOINT_MISMATCH")


def test_service_generated_events_hold_none_of_the_secrets(zumik_server: RunningServer) -> None:
    made: list[str] = []
    console = zumik_server.stubs(
        "console",
        claim=zumik_server.mint_claim(
            "acme", "web", ("keys.write", "sessions.write", "keys.read"), subject="user-1"
        ),
    )
    key = console.keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(
            parent="tenants/acme/projects/web", scopes=["keys.read"], display_name="ci"
        ),
        timeout=5,
    )
    made.append(key.raw_key)
    gateway = zumik_server.stubs("gateway").keys
    answer = gateway.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key=key.raw_key), timeout=5)
    made.append(answer.claim)
    session = console.keys.CreateSession(
        key_service_pb2.CreateSessionRequest(
            parent="tenants/acme/projects/web", user_subject="user-1", scopes=["keys.read"]
        ),
        timeout=5,
    )
    made.append(session.token)
    gateway.VerifySession(key_service_pb2.VerifySessionRequest(token=session.token), timeout=5)
    # A secret where a resource name belongs: the denial is recorded, the secret is not.
    leaky = zumik_server.stubs("console", claim=answer.claim)
    _fails(
        lambda: leaky.tenants.GetTenantSettings(
            tenant_service_pb2.GetTenantSettingsRequest(name=f"tenants/{key.raw_key}/settings"),
            timeout=5,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _fails(
        lambda: zumik_server.stubs("console", claim=key.raw_key).tenants.GetTenantSettings(
            tenant_service_pb2.GetTenantSettingsRequest(name="tenants/acme/settings"), timeout=5
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    time.sleep(0.2)  # let the non-durable events land
    auditor = zumik_server.stubs("auditor").audit
    dumped = ""
    for tenant in ("acme", "-"):
        dumped += "\n".join(
            m.line
            for m in auditor.ExportEvents(
                apb.ExportEventsRequest(parent=f"tenants/{tenant}"), timeout=10
            )
        )
    assert '"action":"api_key.create"' in dumped and '"action":"api_key.verify"' in dumped
    assert '"redacted":"target"' in dumped  # the denial with the key in its name was kept
    pieces = [s for s in made if s] + [key.raw_key.rsplit("_", 1)[1][:20]]
    for secret in pieces:
        assert secret not in dumped
