"""An insider with database write access rewrites the audit chain (issue 16, finding 3).

The attacker edits an event in the database, recomputes every later link and the head, and
deletes the checkpoints that would disagree: the chain stored in the database is then
self-consistent. What catches it:

* events written after the last witness anchor: the server process that wrote them pinned the
  last link it wrote; its next checkpoint (periodic, on demand, or the one every export signs)
  finds the stored chain no longer extends the pin, signs the pinned link instead and publishes
  it to the witness; VerifyChain, the export and ``audit verify --witness`` all fail;
* events before a witness anchor, even after a restart (no pins) and a fresh checkpoint signed
  over the forged head: the witness still holds the original checkpoint, and ``audit verify
  --witness`` (and VerifyChain, which reads the witness) fails.

Both backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from zumik.secrets.v1 import audit_service_pb2 as apb

from tests.fix_server import RunningServer, ServerFactory
from tests.integration import purge_support as ps
from zumik_secrets.app.audit_witness import WITNESS_FILE, read_witness
from zumik_secrets.cli.main import main as cli_main
from zumik_secrets.core import audit_chain as ac
from zumik_secrets.storage.factory import open_store

pytestmark = pytest.mark.integration


def _append(server: RunningServer, tenant: str, n: int, start: int = 0) -> None:
    billing = server.stubs("billing").audit
    for i in range(start, start + n):
        billing.AppendEvent(
            apb.AppendEventRequest(
                parent=f"tenants/{tenant}",
                action="billing.invoice_paid",
                target=f"tenants/{tenant}/invoices/inv-{i}",
                outcome=apb.AUDIT_OUTCOME_SUCCESS,
                attributes={"amount": str(100 + i)},
            ),
            timeout=10,
        )


def _rewrite(url: str, tenant: str, sequence: int) -> None:
    """What the insider does: edit one event, re-link the rest, fix the head, drop the
    checkpoints at or after it."""
    store = open_store(url)
    try:
        events = store.audit.events(tenant, after_sequence=0, limit=100_000)
    finally:
        store.close()
    drafts = [
        ac.EventDraft(
            e.tenant,
            e.event_id,
            e.time,
            e.actor,
            e.actor_subject,
            e.action,
            "tenants/attacker/invoices/moved" if e.sequence == sequence else e.target,
            e.outcome,
            e.reason,
            e.trace_id,
            e.attributes,
        )
        for e in events
        if e.sequence >= sequence
    ]
    before = events[sequence - 2].hash if sequence > 1 else ac.GENESIS_HASH
    relinked = ac.extend_chain(sequence - 1, before, drafts)
    with ps.connect(url) as conn:
        mark = "?" if url.startswith("sqlite") else "%s"
        for ev in relinked:
            conn.execute(
                f"UPDATE audit_events SET target = {mark}, prev_hash = {mark}, hash = {mark} "  # noqa: S608
                f"WHERE tenant = {mark} AND seq = {mark}",
                (ev.target, ev.prev_hash, ev.hash, tenant, ev.sequence),
            )
        conn.execute(
            f"UPDATE audit_heads SET hash = {mark} WHERE tenant = {mark}",  # noqa: S608
            (relinked[-1].hash, tenant),
        )
        conn.execute(
            f"DELETE FROM audit_checkpoints WHERE tenant = {mark} AND seq >= {mark}",  # noqa: S608
            (tenant, sequence),
        )


def _export(server: RunningServer, tenant: str, path: Path) -> Path:
    lines = [
        m.line
        for m in server.stubs("auditor").audit.ExportEvents(
            apb.ExportEventsRequest(parent=f"tenants/{tenant}"), timeout=30
        )
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _keys(server: RunningServer, path: Path) -> Path:
    path.write_text(ps.checkpoint_keys_json(server))
    return path


def _verify(*args: Any) -> int:
    return cli_main(["audit", "verify", *[str(a) for a in args]])


def _chain_ok(server: RunningServer, tenant: str) -> apb.VerifyChainResponse:
    return server.stubs("auditor").audit.VerifyChain(
        apb.VerifyChainRequest(parent=f"tenants/{tenant}"), timeout=30
    )


def test_rewrite_after_the_last_witness_anchor_is_detected(
    zumik_server_factory: ServerFactory, store_url: str, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    server = zumik_server_factory(store_url, ZUMIK_AUDIT_WITNESS_DIR=str(witness))
    tenant = "acme"
    _append(server, tenant, 5)
    anchor = server.stubs("auditor").audit.CreateCheckpoint(
        apb.CreateCheckpointRequest(parent=f"tenants/{tenant}"), timeout=10
    )
    assert [cp.sequence for cp in read_witness(witness) if cp.tenant == tenant] == [
        anchor.checkpoint.sequence
    ]
    assert (witness / WITNESS_FILE).stat().st_mode & 0o777 == 0o600
    _append(server, tenant, 5, start=5)
    keys = _keys(server, tmp_path / "keys.json")
    honest = _export(server, tenant, tmp_path / "honest.jsonl")
    assert _verify(honest, "--keys", keys, "--witness", witness) == 0
    assert _chain_ok(server, tenant).ok

    _append(server, tenant, 3, start=10)  # after the last witness anchor ...
    head = anchor.checkpoint.sequence + 5 + 3
    _rewrite(store_url, tenant, head - 1)  # ... the insider rewrites one of those
    assert server.runtime.audit.checkpoints.rewrites_detected == 0

    forged = _export(server, tenant, tmp_path / "forged.jsonl")  # the export's checkpoint...
    assert server.runtime.audit.checkpoints.rewrites_detected == 1  # ...found the pin broken
    assert _verify(forged, "--keys", keys, "--witness", witness) == 1
    assert _verify(forged, "--keys", keys) == 1  # the export carries the pinned truth too
    stripped = tmp_path / "stripped.jsonl"
    stripped.write_text(
        "\n".join(
            line for line in forged.read_text().splitlines() if json.loads(line)["type"] == "event"
        )
    )
    assert _verify(stripped, "--keys", keys) == 1  # no checkpoint lines: unanchored
    assert _verify(stripped, "--keys", keys, "--witness", witness) == 1
    report = _chain_ok(server, tenant)
    assert not report.ok
    assert report.failure == apb.CHAIN_FAILURE_CHECKPOINT_MISMATCH


def test_rewrite_before_an_anchor_after_a_restart_is_caught_by_the_witness(
    zumik_server_factory: ServerFactory, store_url: str, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    server = zumik_server_factory(store_url, ZUMIK_AUDIT_WITNESS_DIR=str(witness))
    tenant = "globex"
    _append(server, tenant, 6)
    server.runtime.audit.checkpoints.checkpoint_moved_heads()
    keys = _keys(server, tmp_path / "keys.json")
    server.close()  # a clean stop: the final checkpoint anchors everything it wrote

    _rewrite(store_url, tenant, 2)
    restarted = zumik_server_factory(store_url, ZUMIK_AUDIT_WITNESS_DIR=str(witness))
    # The new process has no pins: its export signs the forged head ...
    forged = _export(restarted, tenant, tmp_path / "forged.jsonl")
    assert _verify(forged, "--keys", keys) == 0  # ... so the database alone is fooled,
    assert _verify(forged, "--keys", keys, "--witness", witness) == 1  # the witness is not,
    report = _chain_ok(restarted, tenant)  # and VerifyChain reads the witness too.
    assert not report.ok
    assert report.failure == apb.CHAIN_FAILURE_CHECKPOINT_MISMATCH
    # Without a witness configured the server cannot tell (stated in README and DESIGN).
    blind = zumik_server_factory(store_url)
    assert _chain_ok(blind, tenant).ok


def test_checkpoint_keys_json_shape(zumik_server: RunningServer) -> None:
    keys = json.loads(ps.checkpoint_keys_json(zumik_server))
    parsed = apb.ListCheckpointKeysResponse()
    json_format.ParseDict(keys, parsed)
    assert parsed.keys


@pytest.mark.parametrize("past", [1, 2, 50])
def test_verify_chain_start_past_the_head_is_invalid_argument(
    zumik_server: RunningServer, past: int
) -> None:
    """Finding 4: a start two or more past the head answered ok=false, DELETED, first_bad=1."""
    import grpc

    from tests.grpc_errors import error_info

    _append(zumik_server, "acme", 2)
    auditor = zumik_server.stubs("auditor").audit
    head = auditor.VerifyChain(apb.VerifyChainRequest(parent="tenants/acme"), timeout=10)
    assert head.ok
    start = head.head_sequence + past + 1  # the verification itself adds events: stay past
    with pytest.raises(grpc.RpcError) as info:
        auditor.VerifyChain(
            apb.VerifyChainRequest(parent="tenants/acme", start_sequence=start + 5), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error_info(info.value).reason == "INVALID_RANGE"
    # At the head itself (and on an empty chain, from 1) the range is valid.
    at_head = auditor.VerifyChain(
        apb.VerifyChainRequest(parent="tenants/acme", start_sequence=head.head_sequence),
        timeout=10,
    )
    assert at_head.ok
    empty = auditor.VerifyChain(
        apb.VerifyChainRequest(parent="tenants/nobody-here", start_sequence=1), timeout=10
    )
    assert empty.ok


def test_a_checkpoint_key_planted_in_the_database_is_not_trusted(
    zumik_server_factory: ServerFactory, store_url: str, tmp_path: Path
) -> None:
    """The insider adds their own 'retired' checkpoint key row (any blob as the wrapped private
    key), rewrites the chain and signs a checkpoint over it with their key. The key is neither
    published by ListCheckpointKeys nor used by VerifyChain: its wrapped half does not unwrap
    under the master keyring to the public key it claims."""
    from datetime import UTC, datetime

    from zumik_secrets.core import primitives
    from zumik_secrets.storage.records import SigningKeyRecord

    server = zumik_server_factory(store_url)
    tenant = "initech"
    _append(server, tenant, 4)
    _rewrite(store_url, tenant, 2)
    mallory = primitives.Ed25519Signer(bytes(range(32)))
    store = open_store(store_url)
    try:
        store.signing_keys.add(
            SigningKeyRecord(
                kid="sk_mallory",
                purpose="audit",
                public_key=mallory.public_raw,
                wrapped_private_key=b"\x01" * 60,
                keyring_version=1,
                state="retired",
                created_at=datetime.now(UTC),
                retire_after=None,
            )
        )
        head = store.audit.head(tenant)
        assert head is not None
        store.audit.add_checkpoint(
            ac.sign_checkpoint(mallory, "sk_mallory", tenant, head[0], head[1], datetime.now(UTC))
        )
    finally:
        store.close()
    server.runtime.audit_log.checkpoints.keys.refresh()
    listed = server.stubs("auditor").audit.ListCheckpointKeys(
        apb.ListCheckpointKeysRequest(), timeout=10
    )
    assert "sk_mallory" not in {k.kid for k in listed.keys}
    report = _chain_ok(server, tenant)
    assert not report.ok and report.failure == apb.CHAIN_FAILURE_CHECKPOINT_MISMATCH


def test_witness_lines_are_not_repeated_and_an_unreadable_witness_gives_no_verdict(
    zumik_server_factory: ServerFactory, tmp_path: Path
) -> None:
    import grpc

    from tests.grpc_errors import error_info

    witness = tmp_path / "witness"
    server = zumik_server_factory(ZUMIK_AUDIT_WITNESS_DIR=str(witness))
    _append(server, "hooli", 3)
    server.runtime.audit.checkpoints.checkpoint_moved_heads()
    before = (witness / WITNESS_FILE).read_text().count("\n")
    audit = server.runtime.audit
    for _ in range(3):  # exports over an unchanged head sign nothing new
        list(audit.reader.export("hooli"))
    assert (witness / WITNESS_FILE).read_text().count("\n") == before
    with (witness / WITNESS_FILE).open("a") as handle:
        handle.write("not json\n")
    with pytest.raises(grpc.RpcError) as info:
        _chain_ok(server, "hooli")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert error_info(info.value).reason == "AUDIT_UNAVAILABLE"
