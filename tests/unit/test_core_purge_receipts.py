"""Purge receipt statements: canonical form, signature, envelope checks, the bad-input matrix."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from zumik_secrets.core import primitives
from zumik_secrets.core import purge_receipts as pr

T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
SIGNER = primitives.Ed25519Signer(bytes(range(32)))
KEYS = {"kid-1": SIGNER.public_raw}


def _stmt(**changes: Any) -> pr.PurgeStatement:
    values: dict[str, Any] = {
        "name": "tenants/acme/purgeReceipts/rcp_0000000000000000000001",
        "target": "tenants/acme",
        "destroyed": {"api_keys": 4, "secrets": 5, "data_key_versions": 2},
        "data_key_versions": (
            pr.DestroyedKeyVersion("web", "seal", 2, "primary"),
            pr.DestroyedKeyVersion("web", "fingerprint", 1, "primary"),
            pr.DestroyedKeyVersion("web", "seal", 1, "destroyed"),
        ),
        "retained": (pr.RetainedItem("audit_events", "no secrets, ü", 86400),),
        "audit_sequence": 42,
        "started_time": T0,
        "purge_time": T0.replace(second=10),
    }
    values.update(changes)
    return pr.PurgeStatement(**values)


def _document(data: bytes, sig: bytes, **extra: Any) -> dict[str, Any]:
    stmt = pr.parse_statement(data)
    doc = {
        "name": stmt.name,
        "target": stmt.target,
        "destroyed": [{"kind": k, "count": str(v)} for k, v in sorted(stmt.destroyed.items())],
        "auditSequence": str(stmt.audit_sequence),
        "statement": base64.b64encode(data).decode(),
        "kid": "kid-1",
        "signature": base64.b64encode(sig).decode(),
    }
    doc.update(extra)
    return {"receipt": doc}


def test_statement_is_canonical_and_round_trips() -> None:
    data = pr.statement_bytes(_stmt())
    doc = json.loads(data)
    assert data == json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert doc["type"] == "zumik.purge.receipt" and doc["v"] == 1
    assert doc["purge_time"] == "2031-05-06T07:08:10.123456Z"
    assert doc["retained"][0]["until"] == "2031-05-07T07:08:10.123456Z"
    assert [(k["purpose"], k["version"]) for k in doc["data_key_versions"]] == [
        ("fingerprint", 1),
        ("seal", 1),
        ("seal", 2),
    ]
    parsed = pr.parse_statement(data)
    assert pr.statement_bytes(parsed) == data
    assert parsed.audit_sequence == 42 and dict(parsed.destroyed)["api_keys"] == 4


def test_signed_statement_verifies_and_any_change_fails() -> None:
    data, signature = pr.sign_statement(SIGNER, _stmt())
    assert pr.verify_statement(data, signature, "kid-1", KEYS).target == "tenants/acme"
    edited = data.replace(b'"api_keys":4', b'"api_keys":3')
    with pytest.raises(pr.InvalidReceipt, match="signature"):
        pr.verify_statement(edited, signature, "kid-1", KEYS)
    with pytest.raises(pr.InvalidReceipt, match="kid"):
        pr.verify_statement(data, signature, "kid-2", KEYS)
    other = primitives.Ed25519Signer(bytes(32))
    with pytest.raises(pr.InvalidReceipt, match="signature"):
        pr.verify_statement(data, other.sign(data), "kid-1", KEYS)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"type":"zumik.purge.receipt","v":1}',
        b"\xff\xfe",
    ],
)
def test_malformed_statements_are_refused(data: bytes) -> None:
    with pytest.raises(pr.InvalidReceipt):
        pr.parse_statement(data)


def test_non_canonical_and_foreign_statements_are_refused() -> None:
    data = pr.statement_bytes(_stmt())
    spaced = json.dumps(json.loads(data), sort_keys=True, indent=1).encode()
    with pytest.raises(pr.InvalidReceipt, match="canonical"):
        pr.parse_statement(spaced)
    checkpoint_like = json.loads(data)
    checkpoint_like["type"] = "zumik.audit.checkpoint"
    with pytest.raises(pr.InvalidReceipt, match="version-1 purge receipt"):
        pr.parse_statement(json.dumps(checkpoint_like, sort_keys=True).encode())
    negative = json.loads(data)
    negative["destroyed"]["api_keys"] = -1
    with pytest.raises(pr.InvalidReceipt):
        pr.parse_statement(json.dumps(negative, sort_keys=True, separators=(",", ":")).encode())


def test_document_form_checks_the_envelope_against_the_statement() -> None:
    data, signature = pr.sign_statement(SIGNER, _stmt())
    stmt = pr.verify_receipt_document(_document(data, signature), KEYS)
    assert stmt.name.endswith("rcp_0000000000000000000001")
    bare = _document(data, signature)["receipt"]
    assert pr.verify_receipt_document(bare, KEYS) == stmt  # the bare receipt object works too
    lines = pr.summary_lines(stmt)
    assert "destroyed api_keys: 4" in lines
    for field, value in (
        ("target", "tenants/other"),
        ("auditSequence", "41"),
        ("destroyed", [{"kind": "api_keys", "count": "1"}]),
        ("name", "tenants/acme/purgeReceipts/rcp_0000000000000000000002"),
    ):
        with pytest.raises(pr.InvalidReceipt, match="unsigned fields"):
            pr.verify_receipt_document(_document(data, signature, **{field: value}), KEYS)
    for field, value in (("statement", "***"), ("signature", None), ("kid", "")):
        with pytest.raises(pr.InvalidReceipt):
            pr.verify_receipt_document(_document(data, signature, **{field: value}), KEYS)
