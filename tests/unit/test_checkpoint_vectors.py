"""Audit checkpoints can be verified from the contract alone.

The Checkpoint comment in audit_service.proto defines the signed statement; this file rebuilds
it from that definition only (plain json and the `cryptography` verifier, no service code) and
checks it against the pinned vectors (tests/vectors/checkpoints.json), against the service's
own implementation, and against a checkpoint taken from a running server over gRPC.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from zumik.secrets.v1 import audit_service_pb2

from tests.fix_server import RunningServer
from zumik_secrets.core import audit_chain, primitives

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "checkpoints.json").read_text(encoding="utf-8")
)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def statement_from_contract(
    tenant: str, sequence: int, head: bytes, seconds: int, nanos: int
) -> bytes:
    """The statement exactly as the Checkpoint comment in audit_service.proto describes it."""
    time = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=nanos // 1000)
    doc = {
        "head": head.hex(),
        "seq": sequence,
        "tenant": tenant,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "type": "zumik.audit.checkpoint",
        "v": 1,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verify_from_contract(public_x: str, statement: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(_b64url(public_x)).verify(signature, statement)
    except InvalidSignature:
        return False
    return True


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["tenant"])
def test_the_contract_rule_rebuilds_the_vector(case: dict[str, Any]) -> None:
    head = bytes.fromhex(case["head_hash_hex"])
    built = statement_from_contract(
        case["tenant"], case["sequence"], head, case["time"]["seconds"], case["time"]["nanos"]
    )
    assert built == case["statement"].encode("utf-8")
    signature = _b64url(case["signature_b64url"])
    assert verify_from_contract(VECTORS["public_key_b64url"], built, signature)
    # One changed byte anywhere (the sequence here) and it no longer verifies.
    assert not verify_from_contract(
        VECTORS["public_key_b64url"], built.replace(b'"seq":', b'"seq":1'), signature
    )


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["tenant"])
def test_the_service_signs_the_vector(case: dict[str, Any]) -> None:
    signer = primitives.Ed25519Signer(bytes.fromhex(VECTORS["private_key_hex"]))
    assert (
        base64.urlsafe_b64encode(signer.public_raw).rstrip(b"=").decode()
        == (VECTORS["public_key_b64url"])
    )
    time = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=case["time"]["seconds"], microseconds=case["time"]["nanos"] // 1000
    )
    cp = audit_chain.sign_checkpoint(
        signer,
        case["kid"],
        case["tenant"],
        case["sequence"],
        bytes.fromhex(case["head_hash_hex"]),
        time,
    )
    assert cp.statement() == case["statement"].encode("utf-8")
    assert cp.signature == _b64url(case["signature_b64url"])


@pytest.mark.integration
def test_a_live_checkpoint_verifies_from_the_contract(zumik_server: RunningServer) -> None:
    stubs = zumik_server.stubs("auditor")
    cp = stubs.audit.CreateCheckpoint(
        audit_service_pb2.CreateCheckpointRequest(parent="tenants/acme")
    ).checkpoint
    keys = zumik_server.stubs("control-plane").audit.ListCheckpointKeys(
        audit_service_pb2.ListCheckpointKeysRequest()
    )
    x = next(k.x for k in keys.keys if k.kid == cp.kid)
    statement = statement_from_contract(
        cp.tenant, cp.sequence, cp.head_hash, cp.time.seconds, cp.time.nanos
    )
    assert cp.time.nanos % 1000 == 0  # whole microseconds, as the contract says
    assert verify_from_contract(x, statement, cp.signature)
