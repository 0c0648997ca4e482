"""Tenant and project purge over real mTLS on both backends: crypto-shred, delete, receipt.

Tenants A and B are populated through the RPCs; A is purged; then nothing of A remains in any
table outside the audit and purge tables, none of A's wrapped keys, ciphertexts, key hashes or
token hashes remains in the database (the raw SQLite files, every PostgreSQL table), B works as
before, every API answers for A as for a tenant that never existed, and the receipt verifies
offline with counts matching what was created.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2
from zumik.secrets.v1 import fingerprint_service_pb2 as fpb
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import seal_service_pb2 as spb
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from tests.fix_db import wait_until
from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from tests.integration import purge_support as ps
from zumik_secrets.core import sealing
from zumik_secrets.core.errors import DecryptionFailed
from zumik_secrets.core.purge_receipts import parse_statement

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VALID = common_pb2.VERIFY_RESULT_VALID
NOT_FOUND = common_pb2.VERIFY_RESULT_NOT_FOUND


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": f"{REPO / 'service'}:{REPO / 'clients/python/src'}", "PATH": "/usr/bin"}
    return subprocess.run(
        [sys.executable, "-m", "zumik_secrets.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def _check_b_intact(server: RunningServer, b: ps.Population) -> None:
    for raw in b.raw_keys:
        assert ps.verify_key(server, raw) == VALID
    for token in b.session_tokens:
        assert ps.verify_session(server, token) == VALID
    for name, plaintext in b.secrets.items():
        assert ps.open_secret(server, name) == plaintext
    for project, fp in b.fingerprints.items():
        assert ps.fingerprint(server, b.tenant, project) == fp
    for i, name in enumerate(b.handles):
        assert ps.resolve_handle(server, name) == f"users/{i}"


def test_tenant_purge_leaves_nothing_and_receipt_verifies(
    zumik_server_any_backend: RunningServer, tmp_path: Path
) -> None:
    server = zumik_server_any_backend
    url = server.runtime.config.database_url
    a = ps.populate(server, ps.tenant_id("tenant-a"))
    b = ps.populate(server, ps.tenant_id("tenant-b"))
    captured = ps.captured_secrets_of(url, a.tenant)
    assert {k: len(v) for k, v in captured.items()} == {
        "wrapped_keys": 5,
        "ciphertexts": 5,
        "key_hashes": 4,
        "token_hashes": 2,
    }
    assert all(ps.verify_key(server, raw) == VALID for raw in a.raw_keys)  # warm the caches
    b_rows_before = {
        t: ps.query(url, f"SELECT count(*) FROM {t} WHERE tenant_id = %s", (b.tenant,))[0][0]  # noqa: S608
        for t in ("api_keys", "sessions", "sealed_secrets", "data_keys", "handles")
    }

    answer = ps.purge_tenant(server, a.tenant)
    receipt = answer.receipt

    # A's credentials answer as if they never existed, on this replica at once; any claim for
    # A (minted before the purge or not) is refused: the tenant is a tombstone.
    for raw in a.raw_keys:
        assert ps.verify_key(server, raw) == NOT_FOUND
    for token in a.session_tokens:
        assert ps.verify_session(server, token) == NOT_FOUND
    for name in a.secrets:
        ps.claim_refused(lambda n=name: ps.open_secret(server, n))
    for name in a.handles:
        ps.claim_refused(lambda n=name: ps.resolve_handle(server, n))

    # (1) No row of A outside the audit and purge tables (and the change feed, checked below).
    needle = [a.tenant.encode()]
    assert ps.rows_containing(url, needle, ps.KEPT_TABLES) == []
    kinds = {r[0] for r in ps.query(url, "SELECT kind FROM changes")}
    # signing_key records name a service key's kid (kept: not tenant data, recorded when a
    # key is added or changes state).
    allowed = {"api_key", "session", "data_key", "customer_key", "tenant_settings", "purge"}
    assert kinds <= {*allowed, "signing_key"}

    # (2) None of A's key material, ciphertexts or hashes anywhere in the database.
    every_value = [v for values in captured.values() for v in values]
    assert ps.rows_containing(url, every_value, frozenset()) == []
    if url.startswith("sqlite"):
        files = ps.sqlite_files(url)
        assert files
        for path in files:
            data = path.read_bytes()
            for kind, values in captured.items():
                assert not any(v in data for v in values), f"{kind} of A found in {path.name}"

    # (3) B untouched.
    b_rows_after = {
        t: ps.query(url, f"SELECT count(*) FROM {t} WHERE tenant_id = %s", (b.tenant,))[0][0]  # noqa: S608
        for t in b_rows_before
    }
    assert b_rows_after == b_rows_before
    _check_b_intact(server, b)

    # (4) The receipt: counts as created, audit event at the stated sequence, verifies offline.
    assert receipt.name.startswith(f"tenants/{a.tenant}/purgeReceipts/rcp_")
    assert receipt.target == f"tenants/{a.tenant}"
    counts = {c.kind: c.count for c in receipt.destroyed}
    assert counts == a.expected_counts()
    stmt = parse_statement(receipt.statement)
    assert [(k.project, k.purpose, k.version) for k in stmt.data_key_versions] == [
        ("p1", "fingerprint", 1),
        ("p1", "seal", 1),
        ("p1", "seal", 2),
        ("p2", "fingerprint", 1),
        ("p2", "seal", 1),
    ]
    assert [(r.kind, r.retention.seconds) for r in receipt.retained] == [
        ("audit_events", 90 * 86400)
    ]
    # The promise outlives the tenant's settings row: the audit sweep keeps honouring it.
    assert server.runtime.tenant_settings.audit_retention_for(a.tenant) == timedelta(days=90)
    events = (
        server.stubs("auditor")
        .audit.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{a.tenant}", action="tenant.purged"),
            timeout=10,
        )
        .events
    )
    assert [e.sequence for e in events] == [receipt.audit_sequence]
    assert events[0].attributes["receipt"] == receipt.name.rsplit("/", 1)[1]
    assert events[0].attributes["api_keys"] == "4"

    keys_file = tmp_path / "keys.json"
    keys_file.write_text(ps.checkpoint_keys_json(server))
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json_format.MessageToJson(answer))
    ok = _cli("purge", "verify-receipt", str(receipt_file), "--keys", str(keys_file))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "destroyed api_keys: 4" in ok.stdout
    doc = json.loads(receipt_file.read_text())
    doc["receipt"]["destroyed"][0]["count"] = "0"
    receipt_file.write_text(json.dumps(doc))
    bad = _cli("purge", "verify-receipt", str(receipt_file), "--keys", str(keys_file))
    assert bad.returncode == 1 and "destroyed" in bad.stdout

    # The receipt outlives the tenant, and a re-run returns it unchanged.
    fetched = server.stubs("control-plane").tenants.GetPurgeReceipt(
        tpb.GetPurgeReceiptRequest(name=receipt.name), timeout=10
    )
    assert fetched.receipt == receipt
    assert ps.purge_tenant(server, a.tenant).receipt == receipt

    # Nothing re-creates data in the purged tenant (no fingerprint key is made for a late
    # call), so purging again still returns the one receipt.
    ps.claim_refused(lambda: ps.fingerprint(server, a.tenant, "p1"))
    assert not server.runtime.store.purges.scope_has_data(a.tenant, None)
    assert ps.purge_tenant(server, a.tenant).receipt == receipt

    # The change records naming A are pruned by the retention run once replicas read them.
    server.runtime.store.changes.prune_before(datetime(2999, 1, 1, tzinfo=UTC))
    assert ps.rows_containing(url, needle, ps.KEPT_TABLES - {"changes"}) == []


def test_copied_ciphertext_cannot_be_opened_after_purge(
    zumik_server_any_backend: RunningServer,
) -> None:
    server = zumik_server_any_backend
    url = server.runtime.config.database_url
    a = ps.populate(server, ps.tenant_id("tenant-a"))
    name = next(iter(a.secrets))
    tenant, project, secret_id = name.split("/")[1], name.split("/")[3], name.split("/")[5]
    (blob, version) = ps.query(
        url,
        "SELECT ciphertext, version FROM sealed_secrets WHERE secret_id = %s",
        (secret_id,),
    )[0]
    blob = bytes(blob)
    dek_version = sealing.sealed_version(blob)
    aad = sealing.secret_aad(tenant, project, secret_id, int(version))
    # Before the purge, the master keyring in hand opens it.
    aead = server.runtime.data_keys.key(tenant, project, "seal", dek_version)
    assert sealing.open_sealed(aead, blob, aad) == a.secrets[name]

    ps.purge_tenant(server, tenant)

    # No wrapped key exists for it any more, anywhere in the database...
    assert ps.query(url, "SELECT count(*) FROM data_keys WHERE tenant_id = %s", (tenant,)) == [(0,)]
    # ... so even this process, holding the master keyring, has nothing to unwrap.
    with pytest.raises(DecryptionFailed):
        server.runtime.data_keys.key(tenant, project, "seal", dek_version)
    # Nothing re-creates a data key in the purged tenant: a late Seal is refused, with or
    # without a claim, and the tenant still has no key.
    claim = server.mint_claim(tenant, project, ("secrets.seal",))
    ps.claim_refused(
        lambda: server.stubs("console", claim=claim).seal.Seal(
            spb.SealRequest(parent=f"tenants/{tenant}/projects/{project}", plaintext=b"new"),
            timeout=10,
        )
    )
    with pytest.raises(grpc.RpcError) as late:
        server.stubs("control-plane").seal.RotateDataKey(
            spb.RotateDataKeyRequest(parent=f"tenants/{tenant}/projects/{project}"), timeout=10
        )
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert ps.query(url, "SELECT count(*) FROM data_keys WHERE tenant_id = %s", (tenant,)) == [(0,)]


def test_project_purge_keeps_the_rest_of_the_tenant(
    zumik_server_any_backend: RunningServer,
) -> None:
    server = zumik_server_any_backend
    url = server.runtime.config.database_url
    a = ps.populate(server, ps.tenant_id("tenant-a"))
    target = f"tenants/{a.tenant}/projects/p1"
    receipt = (
        server.stubs("control-plane")
        .tenants.PurgeProject(tpb.PurgeProjectRequest(name=target, confirm=target), timeout=30)
        .receipt
    )
    counts = {c.kind: c.count for c in receipt.destroyed}
    assert counts["api_keys"] == 2 and counts["sessions"] == 1 and counts["secrets"] == 3
    assert counts["data_key_versions"] == 3 and counts["handles"] == 2  # p1 minted them
    assert counts["tenant_settings"] == 0
    for table in ("api_keys", "sessions", "sealed_secrets", "data_keys", "handles"):
        assert ps.query(
            url,
            f"SELECT count(*) FROM {table} WHERE tenant_id = %s AND project_id = 'p1'",  # noqa: S608
            (a.tenant,),
        ) == [(0,)]
    p1_keys, p2_keys = a.raw_keys[:2], a.raw_keys[2:]
    assert all(ps.verify_key(server, raw) == NOT_FOUND for raw in p1_keys)
    assert all(ps.verify_key(server, raw) == VALID for raw in p2_keys)
    for name, plaintext in a.secrets.items():
        if "/projects/p2/" in name:
            assert ps.open_secret(server, name) == plaintext
        else:
            ps.claim_refused(lambda n=name: ps.open_secret(server, n))  # p1 is a tombstone
    assert ps.fingerprint(server, a.tenant, "p2") == a.fingerprints["p2"]
    events = (
        server.stubs("auditor")
        .audit.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{a.tenant}", action="project.purged"),
            timeout=10,
        )
        .events
    )
    assert [e.target for e in events] == [target]


def test_purge_guards(zumik_server: RunningServer) -> None:
    server = zumik_server
    a = ps.populate(server, ps.tenant_id("tenant-a"))
    name = f"tenants/{a.tenant}"
    control = server.stubs("control-plane").tenants
    for confirm in ("", f"tenants/{a.tenant}x", f"tenants/{a.tenant}/", name.upper()):
        with pytest.raises(grpc.RpcError) as caught:
            control.PurgeTenant(tpb.PurgeTenantRequest(name=name, confirm=confirm), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert error_info(caught.value).reason == "CONFIRMATION_MISMATCH"
    assert ps.verify_key(server, a.raw_keys[0]) == VALID  # nothing happened

    # With a claim: the scope tenant.purge is needed, and another tenant's name is NOT_FOUND.
    # (The control-plane may also call with a claim; the claim's rules then apply.)
    weak = server.stubs("control-plane", claim=server.mint_claim(a.tenant, "p1", ("tenant.admin",)))
    other = server.stubs(
        "control-plane", claim=server.mint_claim("someone-else", "p1", ("tenant.purge",))
    )
    allowed = server.stubs(
        "control-plane", claim=server.mint_claim(a.tenant, "p1", ("tenant.purge",))
    )
    for stubs, code in (
        (weak, grpc.StatusCode.PERMISSION_DENIED),
        (other, grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stubs.tenants.PurgeTenant(tpb.PurgeTenantRequest(name=name, confirm=name), timeout=10)
        assert caught.value.code() == code  # type: ignore[attr-defined]
    assert ps.verify_key(server, a.raw_keys[0]) == VALID
    receipt = allowed.tenants.PurgeTenant(
        tpb.PurgeTenantRequest(name=name, confirm=name), timeout=30
    ).receipt
    assert ps.verify_key(server, a.raw_keys[0]) == NOT_FOUND
    assert receipt.target == name
    ps.not_found(
        lambda: control.GetPurgeReceipt(
            tpb.GetPurgeReceiptRequest(
                name=f"tenants/{a.tenant}/purgeReceipts/rcp_0000000000000000000001"
            ),
            timeout=10,
        )
    )


def test_other_replica_forgets_purged_keys_within_the_bound(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    first = zumik_server_factory(store_url)
    second = zumik_server_factory(store_url)
    a = ps.populate(first, ps.tenant_id("tenant-a"))
    for raw in a.raw_keys:
        assert ps.verify_key(second, raw) == VALID  # cached on the second replica
    name = next(iter(a.secrets))
    assert ps.open_secret(second, name) == a.secrets[name]  # data key cached there too
    ps.purge_tenant(first, a.tenant)
    bound = second.runtime.watcher.poll_interval + 1.0
    assert wait_until(
        lambda: all(ps.verify_key(second, raw) == NOT_FOUND for raw in a.raw_keys), timeout=bound
    )
    ps.claim_refused(lambda: ps.open_secret(second, name))
    claim = second.mint_claim(a.tenant, "p1", ps.SCOPES)
    ps.claim_refused(
        lambda: second.stubs("executor", claim=claim).fingerprints.ResolveHandle(
            fpb.ResolveHandleRequest(name=a.handles[0]), timeout=10
        )
    )


def test_creates_racing_a_project_purge_do_not_survive_it(
    zumik_server_any_backend: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callers create keys and sessions and seal secrets in a project while PurgeProject runs
    (the adversary's race): afterwards none of them verifies or remains, every later create is
    refused (FAILED_PRECONDITION SCOPE_PURGED, or the claim CLAIM_REVOKED), and the receipt
    counts exactly the ones that were created."""
    server = zumik_server_any_backend
    url = server.runtime.config.database_url
    # Widen the race as a loaded server does: each create reaches storage up to 60 ms after it
    # was authorised (the in-memory tombstone checked), so many are authorised before the purge
    # job exists and insert while (or after) it runs.
    store = server.runtime.store
    for aggregate in (store.api_keys, store.sessions, store.sealed_secrets):
        real = aggregate.insert

        def late_insert(rec: Any, real: Any = real) -> Any:
            time.sleep(random.uniform(0, 0.06))
            return real(rec)

        monkeypatch.setattr(aggregate, "insert", late_insert)
    tenant = ps.tenant_id("race")
    parent = f"tenants/{tenant}/projects/p1"
    keys: list[str] = []
    sessions: list[str] = []
    sealed: list[str] = []
    refusals: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def attempt(kind: str, call: Any) -> None:
        try:
            made = call()
        except grpc.RpcError as err:
            with lock:
                refusals.append((err.code().name, error_info(err).reason))  # type: ignore[attr-defined]
            return
        with lock:
            {"key": keys, "session": sessions, "secret": sealed}[kind].append(made)

    def spam(i: int) -> None:
        with_claim = ps.claim_stubs(server, tenant, "p1")
        control = server.stubs("control-plane")
        while not stop.is_set():
            stubs = with_claim if i % 2 else control
            attempt(
                "key",
                lambda s=stubs: (
                    s.keys.CreateApiKey(
                        kpb.CreateApiKeyRequest(parent=parent, display_name="x", scopes=["a.b"]),
                        timeout=10,
                    ).raw_key
                ),
            )
            attempt(
                "session",
                lambda s=stubs: (
                    s.keys.CreateSession(
                        kpb.CreateSessionRequest(
                            parent=parent, user_subject="user-1", scopes=["console"]
                        ),
                        timeout=10,
                    ).token
                ),
            )
            attempt(
                "secret",
                lambda: (
                    with_claim.seal.Seal(
                        spb.SealRequest(parent=parent, plaintext=b"MUST-BE-SHREDDED"), timeout=10
                    ).secret.name
                ),
            )

    threads = [threading.Thread(target=spam, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    receipt = (
        server.stubs("control-plane")
        .tenants.PurgeProject(tpb.PurgeProjectRequest(name=parent, confirm=parent), timeout=60)
        .receipt
    )
    time.sleep(0.4)  # creates keep coming after the answer: each must be refused
    stop.set()
    for t in threads:
        t.join(30)

    assert keys and sessions and sealed, "some creates succeeded before the purge"
    assert refusals, "creates after the purge were refused"
    assert set(refusals) <= {
        ("FAILED_PRECONDITION", "SCOPE_PURGED"),
        ("UNAUTHENTICATED", "CLAIM_REVOKED"),
    }, set(refusals)
    counts = {c.kind: c.count for c in receipt.destroyed}
    assert (counts["api_keys"], counts["sessions"], counts["secrets"]) == (
        len(keys),
        len(sessions),
        len(sealed),
    )
    for table in ("api_keys", "sessions", "sealed_secrets", "data_keys"):
        assert ps.query(
            url,
            f"SELECT count(*) FROM {table} WHERE tenant_id = %s",  # noqa: S608
            (tenant,),
        ) == [(0,)]
    assert all(ps.verify_key(server, raw) == NOT_FOUND for raw in keys)
    assert all(ps.verify_session(server, token) == NOT_FOUND for token in sessions)
    # Listing them: a claim for the project is refused (the scope is a tombstone), and the rows
    # are gone (above).
    stubs = ps.claim_stubs(server, tenant, "p1")
    ps.claim_refused(
        lambda: stubs.keys.ListApiKeys(kpb.ListApiKeysRequest(parent=parent), timeout=10)
    )
    ps.claim_refused(
        lambda: stubs.seal.ListSecrets(spb.ListSecretsRequest(parent=parent), timeout=10)
    )
