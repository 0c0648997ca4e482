"""Purge receipts: the canonical signed statement of what a purge destroyed and what it kept.

Pure (standard library plus :mod:`zumik_secrets.core.primitives`), so the server that signs a
receipt and the offline ``zumik-secrets purge verify-receipt`` command run the very same code.

Statement (version 1)
    The UTF-8 bytes of one JSON object, keys sorted by code point, no whitespace, non-ASCII
    written as itself (Python ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)``, the form of the audit checkpoint statement)::

        {
          "type": "zumik.purge.receipt", "v": 1,
          "name": "tenants/{t}/purgeReceipts/rcp_{id}",
          "target": "tenants/{t}" | "tenants/{t}/projects/{p}",
          "destroyed": {"<kind>": <count>, ...},
          "data_key_versions": [{"project", "purpose", "version", "was"}, ...],
          "retained": [{"kind", "reason", "retention_seconds", "until"}, ...],
          "audit_sequence": <n>,
          "started_time": "<RFC 3339 UTC, 6 fractional digits>",
          "purge_time": "<same form>"
        }

    ``destroyed`` kinds: ``api_keys``, ``sessions``, ``secrets``, ``handles``,
    ``data_key_versions`` (versions whose wrapped key material this purge deleted; the
    per-purpose split is ``seal_keys`` and ``fingerprint_keys``), ``customer_keys`` (the
    tenant's customer-managed-key binding) and ``tenant_settings``. ``data_key_versions`` lists
    every version whose row was removed, sorted, with its state before the purge (``was``:
    ``primary``, ``enabled``, or ``destroyed`` when an earlier rotation had already shredded it).
    ``retained`` says what the purge kept on purpose (the scope's audit events, which hold no
    secret) and until when. ``audit_sequence`` is the position of the ``tenant.purged`` /
    ``project.purged`` event in the tenant's audit chain.

    The type string differs from the checkpoint statement's (``zumik.audit.checkpoint``), so a
    signature made for one can never pass for the other although both use the audit key.

Signature
    Ed25519 over the statement bytes with the audit checkpoint key named by ``kid`` (public keys:
    ``AuditService.ListCheckpointKeys``).

Receipt document (what GetPurgeReceipt returns, as protobuf JSON, e.g. printed by grpcurl)
    ``{"name", "target", "destroyed": [{"kind", "count"}], "retained": [...], "auditSequence",
    "purgeTime", "statement": <base64>, "kid", "signature": <base64>}``, optionally wrapped in
    ``{"receipt": {...}}``. :func:`verify_receipt_document` checks the signature and that every
    unsigned field of the envelope says what the signed statement says.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from zumik_secrets.core import primitives
from zumik_secrets.core.audit_chain import format_time, parse_time

STATEMENT_TYPE = "zumik.purge.receipt"
STATEMENT_VERSION = 1
DESTROYED_KINDS = (
    "api_keys",
    "sessions",
    "secrets",
    "handles",
    "data_key_versions",
    "seal_keys",
    "fingerprint_keys",
    "customer_keys",
    "tenant_settings",
)
_KEYS = frozenset(
    {
        "type",
        "v",
        "name",
        "target",
        "destroyed",
        "data_key_versions",
        "retained",
        "audit_sequence",
        "started_time",
        "purge_time",
    }
)


class InvalidReceipt(Exception):
    """A receipt does not verify, or is not in the receipt format (the message says which)."""


@dataclass(frozen=True, slots=True)
class DestroyedKeyVersion:
    """One data-key version the purge removed.

    Attributes:
        project: Its project.
        purpose: ``seal`` or ``fingerprint``.
        version: The version number.
        was: Its state before the purge.
    """

    project: str
    purpose: str
    version: int
    was: str


@dataclass(frozen=True, slots=True)
class RetainedItem:
    """Something a purge keeps on purpose.

    Attributes:
        kind: What is kept (``audit_events``).
        reason: Why.
        retention_seconds: How long it is kept, from the purge time.
    """

    kind: str
    reason: str
    retention_seconds: int


@dataclass(frozen=True, slots=True)
class PurgeStatement:
    """The content of a receipt (see the module docstring)."""

    name: str
    target: str
    destroyed: Mapping[str, int]
    data_key_versions: tuple[DestroyedKeyVersion, ...]
    retained: tuple[RetainedItem, ...]
    audit_sequence: int
    started_time: datetime
    purge_time: datetime


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def statement_bytes(stmt: PurgeStatement) -> bytes:
    """The canonical bytes of ``stmt`` (what is signed)."""
    versions = sorted(stmt.data_key_versions, key=lambda k: (k.project, k.purpose, k.version))
    return _json(
        {
            "type": STATEMENT_TYPE,
            "v": STATEMENT_VERSION,
            "name": stmt.name,
            "target": stmt.target,
            "destroyed": {k: int(v) for k, v in stmt.destroyed.items()},
            "data_key_versions": [
                {"project": k.project, "purpose": k.purpose, "version": k.version, "was": k.was}
                for k in versions
            ],
            "retained": [
                {
                    "kind": r.kind,
                    "reason": r.reason,
                    "retention_seconds": r.retention_seconds,
                    "until": format_time(stmt.purge_time + timedelta(seconds=r.retention_seconds)),
                }
                for r in stmt.retained
            ],
            "audit_sequence": stmt.audit_sequence,
            "started_time": format_time(stmt.started_time),
            "purge_time": format_time(stmt.purge_time),
        }
    )


def sign_statement(signer: primitives.Ed25519Signer, stmt: PurgeStatement) -> tuple[bytes, bytes]:
    """``(statement, signature)`` for ``stmt``."""
    data = statement_bytes(stmt)
    return data, signer.sign(data)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidReceipt(f"statement field {what} must be a non-negative integer")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidReceipt(f"statement field {what} must be a string")
    return value


def parse_statement(data: bytes) -> PurgeStatement:
    """Read a statement, insisting on the canonical form (re-encoding must give ``data`` back).

    Raises:
        InvalidReceipt: not a version-1 purge receipt statement in canonical form.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidReceipt("statement is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or set(doc) != _KEYS:
        raise InvalidReceipt("statement does not have the receipt fields")
    if doc["type"] != STATEMENT_TYPE or doc["v"] != STATEMENT_VERSION:
        raise InvalidReceipt("statement is not a version-1 purge receipt")
    destroyed = doc["destroyed"]
    versions = doc["data_key_versions"]
    retained = doc["retained"]
    if not isinstance(destroyed, dict) or not isinstance(versions, list):
        raise InvalidReceipt("statement fields destroyed/data_key_versions are malformed")
    if not isinstance(retained, list):
        raise InvalidReceipt("statement field retained is malformed")
    try:
        stmt = PurgeStatement(
            name=_str(doc["name"], "name"),
            target=_str(doc["target"], "target"),
            destroyed={
                _str(k, "destroyed"): _int(v, f"destroyed.{k}") for k, v in destroyed.items()
            },
            data_key_versions=tuple(
                DestroyedKeyVersion(
                    _str(k["project"], "project"),
                    _str(k["purpose"], "purpose"),
                    _int(k["version"], "version"),
                    _str(k["was"], "was"),
                )
                for k in versions
            ),
            retained=tuple(
                RetainedItem(
                    _str(r["kind"], "kind"),
                    _str(r["reason"], "reason"),
                    _int(r["retention_seconds"], "retention_seconds"),
                )
                for r in retained
            ),
            audit_sequence=_int(doc["audit_sequence"], "audit_sequence"),
            started_time=parse_time(_str(doc["started_time"], "started_time")),
            purge_time=parse_time(_str(doc["purge_time"], "purge_time")),
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        raise InvalidReceipt("statement entries are malformed") from None
    if statement_bytes(stmt) != data:
        raise InvalidReceipt("statement is not in canonical form")
    return stmt


def verify_statement(
    statement: bytes, signature: bytes, kid: str, keys: Mapping[str, bytes]
) -> PurgeStatement:
    """Check the signature, then parse the statement.

    Raises:
        InvalidReceipt: unknown kid, bad signature, or a malformed statement.
    """
    public = keys.get(kid)
    if public is None:
        raise InvalidReceipt(f"no checkpoint key with kid {kid!r} in the keys given")
    try:
        primitives.ed25519_verify(public, signature, statement)
    except primitives.InvalidSignature:
        raise InvalidReceipt("the signature does not verify") from None
    return parse_statement(statement)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidReceipt(f"receipt field {what} is missing")
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidReceipt(f"receipt field {what} is not base64") from None


def _counts(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
            raise InvalidReceipt("receipt field destroyed is malformed")
        try:
            out[item["kind"]] = int(item.get("count", 0))  # int64 is a string in protobuf JSON
        except (TypeError, ValueError):
            raise InvalidReceipt("receipt field destroyed has a bad count") from None
    return out


def verify_receipt_document(doc: Mapping[str, Any], keys: Mapping[str, bytes]) -> PurgeStatement:
    """Verify a receipt in its protobuf JSON form (see the module docstring).

    The signature must verify, and the envelope's unsigned fields (name, target, destroyed,
    auditSequence) must match the signed statement, so nobody can edit them unnoticed.

    Raises:
        InvalidReceipt: naming the first problem found.
    """
    receipt = doc.get("receipt", doc)
    if not isinstance(receipt, Mapping):
        raise InvalidReceipt("not a purge receipt document")
    kid = receipt.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidReceipt("receipt field kid is missing")
    stmt = verify_statement(
        _b64(receipt.get("statement"), "statement"),
        _b64(receipt.get("signature"), "signature"),
        kid,
        keys,
    )
    mismatches: list[str] = []
    if receipt.get("name", stmt.name) != stmt.name:
        mismatches.append("name")
    if receipt.get("target", stmt.target) != stmt.target:
        mismatches.append("target")
    if str(receipt.get("auditSequence", stmt.audit_sequence)) != str(stmt.audit_sequence):
        mismatches.append("auditSequence")
    if "destroyed" in receipt:
        signed = {k: v for k, v in stmt.destroyed.items() if v}
        shown = {k: v for k, v in _counts(receipt["destroyed"]).items() if v}
        if signed != shown:
            mismatches.append("destroyed")
    if mismatches:
        raise InvalidReceipt(
            "the receipt's unsigned fields differ from its signed statement: "
            + ", ".join(mismatches)
        )
    return stmt


def summary_lines(stmt: PurgeStatement) -> Sequence[str]:
    """A human summary of a verified statement, one line per fact."""
    lines = [
        f"receipt {stmt.name}",
        f"target {stmt.target}",
        f"purged at {format_time(stmt.purge_time)} (audit sequence {stmt.audit_sequence})",
    ]
    lines += [f"destroyed {kind}: {count}" for kind, count in sorted(stmt.destroyed.items())]
    lines += [
        f"kept {r.kind} for {r.retention_seconds // 86400} days ({r.reason})" for r in stmt.retained
    ]
    return lines
