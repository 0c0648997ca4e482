"""The audit chain core: canonical form, links, checkpoints, failure classification, export."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from zumik_secrets.core import audit_chain as ac
from zumik_secrets.core import primitives
from zumik_secrets.core.audit_events import (
    REDACTED,
    sanitize,
    validate_appended,
)
from zumik_secrets.core.errors import InvalidArgument

T0 = datetime(2025, 1, 31, 12, 0, 0, 123, tzinfo=UTC)
SEED = bytes(range(32))


def _drafts(n: int, tenant: str = "acme") -> list[ac.EventDraft]:
    return [
        ac.EventDraft(
            tenant=tenant,
            event_id=f"evt_{i:022d}",
            time=T0 + timedelta(seconds=i),
            actor="spiffe://zumik.local/svc/billing",
            actor_subject="",
            action="billing.invoice_paid",
            target=f"invoices/{i}",
            outcome="success",
            reason="",
            trace_id="",
            attributes=(("amount", str(i)), ("currency", "EUR")),
        )
        for i in range(1, n + 1)
    ]


def _chain(n: int) -> list[ac.ChainEvent]:
    return ac.extend_chain(0, ac.GENESIS_HASH, _drafts(n))


def _keys() -> tuple[primitives.Ed25519Signer, dict[str, bytes]]:
    signer = primitives.Ed25519Signer(SEED)
    return signer, {"sk_test": signer.public_raw}


def test_canonical_form_is_pinned() -> None:
    ev = _chain(1)[0]
    assert ev.canonical() == (
        b'{"action":"billing.invoice_paid","actor":"spiffe://zumik.local/svc/billing",'
        b'"attrs":{"amount":"1","currency":"EUR"},"id":"evt_0000000000000000000001",'
        b'"outcome":"success","reason":"","subject":"","target":"invoices/1","tenant":"acme",'
        b'"time":"2025-01-31T12:00:01.000123Z","trace":"","v":1}'
    )
    assert ev.prev_hash == bytes(32)
    assert ev.hash == primitives.sha256(bytes(32) + ev.canonical())
    assert ev.hash.hex() == ac.link(bytes(32), ev.canonical()).hex()


AWKWARD = [
    "",
    'quote " backslash \\ slash /',
    "control \x00\x01\x1f\x7f tab\t newline\n cr\r",
    "Zürich ✓ \u2028\u2029 \U0001f511 \ufeff",
    "tenants/acme/projects/p/apiKeys/key_0123456789abcdefABCDEF",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_canonical_bytes_match_the_specified_json_dump(value: str) -> None:
    # The spec (module docstring) is json.dumps(sort_keys, compact, ensure_ascii=False) of the
    # whole object; canonical_bytes renders it piece by piece and must give the same bytes.
    attrs = [("zeta", value), ("a.b", "x"), ("a_b", value), ("a.b", "last wins")]
    fields = {
        "tenant": value or "-",
        "event_id": "evt_" + value,
        "time": T0,
        "actor": value,
        "actor_subject": value,
        "action": value,
        "target": value,
        "outcome": value,
        "reason": value,
        "trace_id": value,
    }
    spec = {
        "v": 1,
        "tenant": fields["tenant"],
        "id": fields["event_id"],
        "time": "2025-01-31T12:00:00.000123Z",
        "actor": value,
        "subject": value,
        "action": value,
        "target": value,
        "outcome": value,
        "reason": value,
        "trace": value,
        "attrs": dict(attrs),
    }
    expected = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert ac.canonical_bytes(**fields, attributes=attrs) == expected.encode("utf-8")


def test_canonical_bytes_refuse_non_strings() -> None:
    with pytest.raises(TypeError):
        ac.canonical_bytes(
            tenant="acme",
            event_id="evt_1",
            time=T0,
            actor="a",
            actor_subject="",
            action="x.y",
            target="t",
            outcome="success",
            reason="",
            trace_id="",
            attributes=[("n", 5)],  # type: ignore[list-item]
        )


def test_unicode_is_utf8_not_escaped() -> None:
    d = dataclasses.replace(_drafts(1)[0], target="Zürich ✓")
    ev = ac.extend_chain(0, ac.GENESIS_HASH, [d])[0]
    assert "Zürich ✓".encode() in ev.canonical()


def test_intact_chain_verifies() -> None:
    events = _chain(50)
    signer, keys = _keys()
    cp = ac.sign_checkpoint(signer, "sk_test", "acme", 50, events[-1].hash, T0)
    report = ac.verify_chain(events, tenant="acme", checkpoints=[cp], keys=keys, head_sequence=50)
    assert report.ok, report
    assert report.checked_count == 50
    assert report.head_sequence == 50


def _shift(events: list[ac.ChainEvent]) -> list[ac.ChainEvent]:
    return [dataclasses.replace(e, sequence=e.sequence + 1) for e in events]


def _tampered(kind: str) -> tuple[list[ac.ChainEvent], int, ac.ChainFailure]:
    events = _chain(20)
    if kind == "edit":
        events[6] = dataclasses.replace(events[6], target="invoices/999")
        return events, 7, ac.ChainFailure.EDITED
    if kind == "delete":
        del events[9]
        return events, 10, ac.ChainFailure.DELETED
    if kind == "delete_renumbered":
        del events[9]
        events[9:] = [dataclasses.replace(e, sequence=e.sequence - 1) for e in events[9:]]
        return events, 10, ac.ChainFailure.DELETED
    if kind == "swap":
        a, b = events[4], events[5]
        events[4] = dataclasses.replace(b, sequence=5)
        events[5] = dataclasses.replace(a, sequence=6)
        return events, 5, ac.ChainFailure.REORDERED
    if kind == "swap_lines":
        events[4], events[5] = events[5], events[4]
        return events, 5, ac.ChainFailure.REORDERED
    if kind == "insert":
        fake = dataclasses.replace(events[3], event_id="evt_fake", sequence=5, hash=bytes(32))
        events = [*events[:4], fake, *_shift(events[4:])]
        return events, 5, ac.ChainFailure.INSERTED
    if kind == "insert_forged":
        d = dataclasses.replace(_drafts(1)[0], event_id="evt_forged")
        fake = ac.extend_chain(4, events[3].hash, [d])[0]
        events = [*events[:4], fake, *_shift(events[4:])]
        return events, 5, ac.ChainFailure.INSERTED
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["edit", "delete", "delete_renumbered", "swap", "swap_lines", "insert", "insert_forged"]
)
def test_tampering_is_located(kind: str) -> None:
    events, first_bad, failure = _tampered(kind)
    report = ac.verify_chain(events, tenant="acme")
    assert not report.ok
    assert (report.first_bad_sequence, report.failure) == (first_bad, failure)


def test_truncated_tail_after_checkpoint() -> None:
    events = _chain(20)
    signer, keys = _keys()
    cp = ac.sign_checkpoint(signer, "sk_test", "acme", 15, events[14].hash, T0)
    report = ac.verify_chain(events[:12], tenant="acme", checkpoints=[cp], keys=keys)
    assert (report.ok, report.first_bad_sequence, report.failure) == (
        False,
        13,
        ac.ChainFailure.CHECKPOINT_MISMATCH,
    )


def test_rewritten_chain_fails_at_the_checkpoint() -> None:
    events = _chain(10)
    signer, keys = _keys()
    cp = ac.sign_checkpoint(signer, "sk_test", "acme", 8, events[7].hash, T0)
    drafts = _drafts(10)
    drafts[2] = dataclasses.replace(drafts[2], target="rewritten")
    rewritten = ac.extend_chain(0, ac.GENESIS_HASH, drafts)  # consistent, but not what was signed
    report = ac.verify_chain(rewritten, tenant="acme", checkpoints=[cp], keys=keys)
    assert (report.first_bad_sequence, report.failure) == (8, ac.ChainFailure.CHECKPOINT_MISMATCH)


def test_forged_or_unknown_checkpoint_fails() -> None:
    events = _chain(5)
    signer, keys = _keys()
    cp = ac.sign_checkpoint(signer, "sk_test", "acme", 5, events[-1].hash, T0)
    forged = dataclasses.replace(cp, signature=bytes(64))
    unknown = dataclasses.replace(cp, kid="sk_other")
    for bad in (forged, unknown):
        report = ac.verify_chain(events, tenant="acme", checkpoints=[bad], keys=keys)
        assert report.failure is ac.ChainFailure.CHECKPOINT_MISMATCH


def test_pruned_chain_verifies_from_its_signed_anchor() -> None:
    events = _chain(30)
    signer, keys = _keys()
    anchor = ac.sign_checkpoint(signer, "sk_test", "acme", 10, events[9].hash, T0)
    assert ac.verify_chain(events[10:], tenant="acme", checkpoints=[anchor], keys=keys).ok
    # Without the anchor the missing start is a deletion.
    report = ac.verify_chain(events[10:], tenant="acme", keys=keys)
    assert (report.first_bad_sequence, report.failure) == (1, ac.ChainFailure.DELETED)


def test_export_round_trip_and_offline_verification() -> None:
    events = _chain(12)
    signer, keys = _keys()
    cps = [
        ac.sign_checkpoint(signer, "sk_test", "acme", 6, events[5].hash, T0),
        ac.sign_checkpoint(signer, "sk_test", "acme", 12, events[11].hash, T0),
    ]
    lines = [ac.event_line(e) for e in events[:6]] + [ac.checkpoint_line(cps[0])]
    lines += [ac.event_line(e) for e in events[6:]] + [ac.checkpoint_line(cps[1])]
    parsed = ac.parse_export(lines)
    assert parsed.events == events
    assert parsed.checkpoints == cps
    assert ac.verify_export(lines, keys).ok
    edited = json.loads(lines[3])
    edited["attrs"]["amount"] = "1000000"
    lines[3] = json.dumps(edited)
    report = ac.verify_export(lines, keys)
    assert (report.first_bad_sequence, report.failure) == (4, ac.ChainFailure.EDITED)


def test_export_resumed_mid_chain_needs_a_signed_confirmation() -> None:
    events = _chain(10)
    signer, keys = _keys()
    resume = ac.resume_line("acme", 4, events[3].hash)
    tail = ac.sign_checkpoint(signer, "sk_test", "acme", 10, events[9].hash, T0)
    lines = [resume] + [ac.event_line(e) for e in events[4:]] + [ac.checkpoint_line(tail)]
    # A resume line alone is an anchor nobody signed: never trusted.
    report = ac.verify_export(lines, keys)
    assert (report.ok, report.failure) == (False, ac.ChainFailure.UNANCHORED)
    assert ac.verify_export(lines, keys, allow_unanchored=True).ok
    confirm = ac.sign_checkpoint(signer, "sk_test", "acme", 4, events[3].hash, T0)
    assert ac.verify_export([*lines, ac.checkpoint_line(confirm)], keys).ok
    assert ac.verify_export(lines, keys, witness=[confirm]).ok  # or the witness confirms it
    # A forged resume point with a forged "confirmation" (bad signature) is refused.
    forged = dataclasses.replace(confirm, signature=bytes(64))
    assert not ac.verify_export([*lines, ac.checkpoint_line(forged)], keys).ok


def _edited_and_relinked(n: int, at: int) -> list[ac.ChainEvent]:
    drafts = _drafts(n)
    drafts[at - 1] = dataclasses.replace(drafts[at - 1], target="rewritten")
    return ac.extend_chain(0, ac.GENESIS_HASH, drafts)


def test_edited_relinked_and_stripped_export_fails() -> None:
    """Finding 3: edit an event, re-link everything after it, delete the checkpoint lines."""
    signer, keys = _keys()
    forged = _edited_and_relinked(12, at=3)
    stripped = [ac.event_line(e) for e in forged]
    report = ac.verify_export(stripped, keys)
    assert (report.ok, report.failure) == (False, ac.ChainFailure.UNANCHORED)
    assert report.first_bad_sequence == 1
    # With the original checkpoints kept, the rewrite is a mismatch.
    original = _chain(12)
    cp = ac.sign_checkpoint(signer, "sk_test", "acme", 12, original[-1].hash, T0)
    report = ac.verify_export([*stripped, ac.checkpoint_line(cp)], keys)
    assert report.failure is ac.ChainFailure.CHECKPOINT_MISMATCH
    # Stripped of its checkpoints but checked against the witness: a mismatch again.
    report = ac.verify_export(stripped, keys, witness=[cp], allow_unanchored=True)
    assert report.failure is ac.ChainFailure.CHECKPOINT_MISMATCH


def test_unanchored_tail_is_reported_from_the_last_checkpoint() -> None:
    events = _chain(12)
    signer, keys = _keys()
    cp = ac.sign_checkpoint(signer, "sk_test", "acme", 6, events[5].hash, T0)
    lines = [ac.event_line(e) for e in events[:6]] + [ac.checkpoint_line(cp)]
    lines += [ac.event_line(e) for e in events[6:]]
    report = ac.verify_export(lines, keys)
    assert (report.first_bad_sequence, report.failure) == (7, ac.ChainFailure.UNANCHORED)
    assert ac.verify_export(lines, keys, allow_unanchored=True).ok


def test_witness_checkpoints_are_judged_only_inside_the_export() -> None:
    events = _chain(12)
    signer, keys = _keys()
    end = ac.sign_checkpoint(signer, "sk_test", "acme", 8, events[7].hash, T0)
    lines = [ac.event_line(e) for e in events[:8]] + [ac.checkpoint_line(end)]
    later = ac.sign_checkpoint(signer, "sk_test", "acme", 12, events[11].hash, T0)
    other = ac.sign_checkpoint(signer, "sk_test", "globex", 3, bytes(32), T0)
    inside = ac.sign_checkpoint(signer, "sk_test", "acme", 4, events[3].hash, T0)
    assert ac.verify_export(lines, keys, witness=[later, other, inside]).ok
    wrong = ac.sign_checkpoint(signer, "sk_test", "acme", 4, bytes(32), T0)
    report = ac.verify_export(lines, keys, witness=[wrong])
    assert (report.first_bad_sequence, report.failure) == (4, ac.ChainFailure.CHECKPOINT_MISMATCH)
    unsigned = dataclasses.replace(inside, signature=bytes(64))
    assert not ac.verify_export(lines, keys, witness=[unsigned]).ok


def test_two_signed_checkpoints_that_disagree_fail() -> None:
    events = _chain(6)
    signer, keys = _keys()
    good = ac.sign_checkpoint(signer, "sk_test", "acme", 6, events[-1].hash, T0)
    other = ac.sign_checkpoint(signer, "sk_test", "acme", 6, bytes(32), T0)
    report = ac.verify_chain(events, tenant="acme", checkpoints=[good, other], keys=keys)
    assert report.failure is ac.ChainFailure.CHECKPOINT_MISMATCH


def test_malformed_export_line_is_named() -> None:
    with pytest.raises(InvalidArgument) as info:
        ac.parse_export(['{"type": "event", "tenant": "acme"}'])
    assert info.value.reason == "INVALID_EXPORT"


# -- AppendEvent schema -------------------------------------------------------------------------

_SECRET = "zs_" + "A1b2C3d4" * 6


@pytest.mark.parametrize(
    ("target", "reason", "attrs", "expect"),
    [
        ("t", "", {"a": _SECRET}, "SECRET_IN_EVENT"),
        (_SECRET, "", {}, "SECRET_IN_EVENT"),
        ("t", "", {"pem": "-----BEGIN EC PRIVATE KEY-----"}, "SECRET_IN_EVENT"),
        ("t", "", {"k": "x" * 257}, "INVALID_EVENT"),
        ("t", "", {"Bad": "x"}, "INVALID_EVENT"),
        ("t", "", {f"k{i}": "x" for i in range(17)}, "INVALID_EVENT"),
        ("t" * 257, "", {}, "INVALID_EVENT"),
        ("t", "lower", {}, "INVALID_EVENT"),
    ],
)
def test_append_validation(target: str, reason: str, attrs: dict[str, str], expect: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_appended("billing.plan_changed", target, reason, attrs)
    assert info.value.reason == expect
    assert _SECRET not in str(info.value) and _SECRET not in repr(info.value.metadata)


def test_append_allow_list() -> None:
    validate_appended("billing.plan_changed", "tenants/acme", "UPGRADE", {"plan": "pro"})
    with pytest.raises(InvalidArgument):
        validate_appended("api_key.create", "x", "", {})


def test_service_events_are_sanitized_not_refused() -> None:
    target, reason, attrs = sanitize(f"tenants/{_SECRET}", "CLAIM_EXPIRED", {"method": _SECRET})
    assert target == REDACTED
    assert reason == "CLAIM_EXPIRED"
    assert attrs == {"method": REDACTED, "redacted": "target,method"}


def test_sanitize_remembers_only_harmless_values() -> None:
    from zumik_secrets.core import audit_events

    harmless = "free text that is no secret"
    for _ in range(3):  # the second and third calls are answered from the cache
        assert sanitize(harmless, "OK", {"version": "1"}) == (harmless, "OK", {"version": "1"})
        assert sanitize(_SECRET, "OK", {"v": _SECRET})[0] == REDACTED
    assert harmless in audit_events._harmless
    name = "tenants/acme/projects/web/secrets/sec_0123456789ABCDEFabcdef"
    assert sanitize(name, "", {})[0] == name  # a resource name: not even scanned
    assert _SECRET not in audit_events._harmless
    assert not any(_SECRET in value for value in audit_events._harmless)
    long_value = "a/" * 400  # longer than the cache keeps
    assert sanitize(long_value, "", {})[0].startswith("a/")
    assert long_value not in audit_events._harmless


def test_sanitize_cache_is_bounded() -> None:
    from zumik_secrets.core import audit_events

    for i in range(audit_events._HARMLESS_CACHE_SIZE + 10):
        sanitize(f"tenants/t{i}", "", {})
    assert len(audit_events._harmless) <= audit_events._HARMLESS_CACHE_SIZE
