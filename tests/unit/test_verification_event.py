"""The verification audit event (issue 18): fixed parts rendered once, caller parts per event."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from zumik_secrets.app import verification
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry, event
from zumik_secrets.app.audit_writer import AuditWriter
from zumik_secrets.app.rate_limit import BucketSpec
from zumik_secrets.app.verification import FailureGuard, VerifyResult, record_verification
from zumik_secrets.core import audit_chain as chain
from zumik_secrets.core.audit_events import REDACTED
from zumik_secrets.core.errors import ResourceExhausted

NAME = "tenants/acme/projects/web/apiKeys/key_0123456789ABCDEFabcdef"
SECRET = "zk_" + "Qm9vbGVhbnMgYXJlIG5vdCBzZWNyZXRzIGJ1dCB0aGlzIGlzIHJhbmRvbQ" * 2
A = Actor("spiffe://zumik.local/svc/gateway", "sub-a", "aa" * 16)
B = Actor("spiffe://zumik.local/svc/console", "sub-b", "bb" * 16)


class Recorder:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        assert not durable
        self.entries.append(entry)


class Store:
    def __init__(self) -> None:
        self.drafts: list[chain.EventDraft] = []

    def append(self, drafts: Sequence[chain.EventDraft]) -> list[chain.ChainEvent]:
        self.drafts.extend(drafts)
        return chain.extend_chain(0, chain.GENESIS_HASH, drafts)


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    verification._rendered.clear()


def test_stored_credential_fixed_parts_are_rendered_once() -> None:
    rec = Recorder()
    for actor in (A, B):
        record_verification(
            rec, actor, "api_key.verify", "acme", NAME, VerifyResult.VALID, stored=True
        )
    first, second = rec.entries
    assert first.clean is not None and first.clean is second.clean  # cleaned once
    assert (first.actor, first.actor_subject, first.trace_id) == (A.identity, A.subject, A.trace_id)
    assert (second.actor, second.actor_subject, second.trace_id) == (
        B.identity,
        B.subject,
        B.trace_id,
    )
    # The same event the generic helper builds, field for field.
    expected = event(B, "acme", "api_key.verify", NAME, "success", "VALID", {"result": "VALID"})
    assert dataclasses.replace(second, clean=None) == dataclasses.replace(
        expected, attributes=second.attributes
    )
    assert dict(second.attributes) == {"result": "VALID"}


def test_limited_and_failed_results_render_their_own_parts() -> None:
    rec = Recorder()
    guard = FailureGuard(identity=BucketSpec(rate=0.001, burst=1.0))
    args = (rec, A, "api_key.verify", "acme", NAME, VerifyResult.REVOKED)
    record_verification(*args, guard=guard, credential_id="key_1", stored=True)
    with pytest.raises(ResourceExhausted):
        record_verification(*args, guard=guard, credential_id="key_1", stored=True)
    failed, limited = rec.entries
    assert (failed.outcome, failed.reason) == ("failure", "REVOKED")
    assert (limited.outcome, limited.reason) == ("denied", "VERIFY_RATE_LIMITED")
    assert limited.clean is not None and limited.clean.reason == "VERIFY_RATE_LIMITED"
    # Valid answers and missing scopes are never charged.
    for result in (VerifyResult.VALID, VerifyResult.INSUFFICIENT_SCOPE):
        record_verification(rec, A, "api_key.verify", "acme", NAME, result, guard=guard)
    assert [e.outcome for e in rec.entries[2:]] == ["success", "failure"]


def test_a_presented_target_is_scanned_every_time_and_never_kept() -> None:
    rec = Recorder()
    for _ in range(2):
        record_verification(rec, A, "api_key.verify", None, SECRET, VerifyResult.NOT_FOUND)
    assert verification._rendered == {}
    for entry in rec.entries:
        assert entry.clean is not None and entry.clean.target == REDACTED
        assert ("redacted", "target") in entry.clean.attributes
    assert rec.entries[0].clean is not rec.entries[1].clean


def test_the_writer_stores_the_same_draft_with_or_without_the_rendered_parts() -> None:
    store = Store()
    writer = AuditWriter(store, group_commit=False)  # type: ignore[arg-type]
    rec = Recorder()
    record_verification(rec, A, "api_key.verify", "acme", NAME, VerifyResult.VALID, stored=True)
    record_verification(rec, A, "api_key.verify", None, SECRET, VerifyResult.MALFORMED)
    for entry in rec.entries:
        writer.record(entry)
        writer.record(dataclasses.replace(entry, clean=None))

    def content(d: chain.EventDraft) -> chain.EventDraft:  # without the per-event id and time
        return dataclasses.replace(
            d, event_id="", time=chain.parse_time("2025-01-01T00:00:00.000000Z")
        )

    assert [content(d) for d in store.drafts[::2]] == [content(d) for d in store.drafts[1::2]]
    assert store.drafts[2].target == REDACTED


def test_the_rendered_parts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verification, "_RENDERED_LIMIT", 8)
    rec = Recorder()
    for i in range(30):
        record_verification(
            rec, A, "api_key.verify", "acme", f"{NAME}{i}", VerifyResult.VALID, stored=True
        )
        assert len(verification._rendered) <= 8
