"""Generate the pinned format vectors in tests/vectors/*.json from fixed inputs.

Run once (and again only for a deliberate, versioned format change):

    PYTHONPATH=service .venv/bin/python tests/vectors/make_vectors.py

The unit tests recompute every output from the inputs stored in the JSON and compare, and also
parse / unwrap / verify the pinned outputs, so any change that would break data or tokens
already issued fails loudly. ``--check`` compares without writing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zumik_secrets.core import (
    api_keys,
    audit_chain,
    claims,
    encoding,
    handles,
    keyring,
    primitives,
    session_tokens,
)

HERE = Path(__file__).resolve().parent


def seeded_rand(seed: str) -> Callable[[int], bytes]:
    """A deterministic byte source: SHA-256(seed || counter) blocks. For tests only."""
    state = {"counter": 0, "buf": b""}

    def rand(n: int) -> bytes:
        buf = state["buf"]
        assert isinstance(buf, bytes)
        while len(buf) < n:
            counter = state["counter"]
            assert isinstance(counter, int)
            buf += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
            state["counter"] = counter + 1
        state["buf"] = buf[n:]
        return buf[:n]

    return rand


def fixed_rand(data: bytes) -> Callable[[int], bytes]:
    """A byte source that returns exactly ``data`` once (length must match the request)."""

    def rand(n: int) -> bytes:
        assert n == len(data), (n, len(data))
        return data

    return rand


def handle_vectors() -> dict[str, Any]:
    cases = []
    for kind, random_hex in [
        ("key", "00" * 16),
        ("ses", "ff" * 16),
        ("sec", "000102030405060708090a0b0c0d0e0f"),
        ("rcp", "8000000000000000000000000000000" + "1"),
        ("hdl", hashlib.sha256(b"zumik handle vector").hexdigest()[:32]),
        ("abcdefgh", "0123456789abcdef0123456789abcdef"),
    ]:
        handle = handles.new_handle(kind, fixed_rand(bytes.fromhex(random_hex)))
        cases.append({"kind": kind, "random": random_hex, "handle": handle})
    return {
        "description": "handle = kind '_' base62(16 random bytes, big-endian), '0'-padded to 22",
        "cases": cases,
        "invalid": [
            "key_" + "z" * 22,  # over 2**128
            "k_" + "0" * 22,
            "key_" + "0" * 21,
            "key-" + "0" * 22,
            "KEY_" + "0" * 22,
            "key_" + "0" * 21 + "!",
        ],
    }


def api_key_vectors() -> dict[str, Any]:
    cases = []
    for env, key_id, secret, salt_hex in [
        ("live", "0" * 22, "0" * 32, "00" * 16),
        ("test", "7Anz3BlOYp1XlUCXc0WLXX", "L41yAv3SryPQKOc3wWdHn9YIUrXQfoaW", "01" * 16),
        ("dev", "5Hh3ABcdEFgh1234567890", "abcdefghijklmnopqrstuvwxyzABCDEF", "ff" * 16),
        ("stagingx", "1" * 22, "Z" * 32, "000102030405060708090a0b0c0d0e0f"),
    ]:
        raw = api_keys.format_api_key(env, key_id, secret)
        salt = bytes.fromhex(salt_hex)
        cases.append(
            {
                "env": env,
                "key_id": key_id,
                "secret": secret,
                "salt": salt_hex,
                "raw": raw,
                "check": raw[-6:],
                "secret_hash": api_keys.hash_secret(salt, secret).hex(),
                "masked_prefix": api_keys.masked_prefix(env, key_id),
            }
        )
    generated = []
    for seed in ["api-key-1", "api-key-2"]:
        g = api_keys.generate_api_key("live", rand=seeded_rand(seed))
        generated.append(
            {
                "seed": seed,
                "env": "live",
                "raw": g.raw,
                "key_id": g.key_id,
                "salt": g.salt.hex(),
                "secret_hash": g.secret_hash.hex(),
                "masked_prefix": g.masked_prefix,
            }
        )
    return {
        "description": (
            "raw = zk_<env>_<id>_<secret><check>; check = base62(zlib.crc32(ascii of what "
            "precedes it)) padded to 6; secret_hash = SHA-256(salt || ascii(secret)); "
            "generated: rand = SHA-256(seed ':' counter) blocks"
        ),
        "cases": cases,
        "generated": generated,
    }


def session_token_vectors() -> dict[str, Any]:
    cases = []
    for random_hex in [
        "00" * 32,
        "ff" * 32,
        hashlib.sha256(b"zumik session vector").hexdigest(),
    ]:
        raw, token_hash = session_tokens.new_session_token(fixed_rand(bytes.fromhex(random_hex)))
        cases.append({"random": random_hex, "raw": raw, "token_hash": token_hash.hex()})
    return {
        "description": "raw = 'zs_' + base64url(32 random bytes) unpadded; token_hash = "
        "SHA-256(ascii(raw))",
        "cases": cases,
    }


KEYRING_TEXT = json.dumps(
    {
        "format": "zumik-keyring-v1",
        "primary": 2,
        "keys": [
            {
                "version": 1,
                "key": encoding.b64url_encode(bytes(range(32))),
                "state": "retired",
            },
            {
                "version": 2,
                "key": encoding.b64url_encode(bytes(range(32, 64))),
                "state": "active",
            },
        ],
    },
    indent=2,
)


def keyring_vectors() -> dict[str, Any]:
    cases = []
    # Version 2 is primary; version 1's blob is made with a keyring where 1 was primary.
    ring_v1_text = json.dumps(
        {
            "format": "zumik-keyring-v1",
            "primary": 1,
            "keys": [
                {"version": 1, "key": encoding.b64url_encode(bytes(range(32))), "state": "active"}
            ],
        }
    )
    for text, nonce_hex, plaintext_hex, aad in [
        (
            KEYRING_TEXT,
            "000102030405060708090a0b",
            "00" * 32,
            "tenant=acme;project=web;purpose=seal;v=1",
        ),
        (KEYRING_TEXT, "ffffffffffffffffffffffff", bytes(range(32)).hex(), ""),
        (
            ring_v1_text,
            "0a0b0c0d0e0f101112131415",
            "42" * 32,
            "tenant=acme;project=web;purpose=fingerprint;v=3",
        ),
    ]:
        ring = keyring.MasterKeyring.from_text(text, rand=fixed_rand(bytes.fromhex(nonce_hex)))
        blob = ring.wrap(bytes.fromhex(plaintext_hex), aad.encode())
        cases.append(
            {
                "version": ring.primary,
                "nonce": nonce_hex,
                "plaintext": plaintext_hex,
                "associated_data": aad,
                "blob": blob.hex(),
            }
        )
    ring = keyring.MasterKeyring.from_text(KEYRING_TEXT)
    return {
        "description": (
            "blob = 01 || u32 BE version || nonce || AES-256-GCM(key[version], nonce, plaintext, "
            "aad = blob[0:5] || associated_data); fingerprint = hex(SHA-256("
            "'zumik-keyring-fingerprint-v1' 00 || key)[0:4])"
        ),
        "keyring": KEYRING_TEXT,
        "fingerprints": {str(v): fp for v, fp in ring.fingerprints().items()},
        "cases": cases,
    }


def claim_vectors() -> dict[str, Any]:
    private_hex = hashlib.sha256(b"zumik claim signing key vector").hexdigest()
    cases = []
    for tenant, project, subject, scopes, now, ttl, jti_random_hex in [
        (
            "acme",
            "web",
            "key_7Anz3BlOYp1XlUCXc0WLXX",
            ["keys.read", "secrets:open"],
            1_700_000_000,
            300,
            "00" * 16,
        ),
        ("t-1", "p-2", "user-42", [], 1_800_000_000, 60, "ff" * 16),
    ]:
        signer = claims.ClaimSigner(
            "sk-2024-01",
            bytes.fromhex(private_hex),
            "zumik-secrets-keys",
            "zumik-secrets",
            rand=fixed_rand(bytes.fromhex(jti_random_hex)),
        )
        token, claim = signer.mint(tenant, project, subject, scopes, now, ttl)
        cases.append(
            {
                "tenant_id": tenant,
                "project_id": project,
                "subject": subject,
                "scopes": scopes,
                "now": now,
                "ttl_seconds": ttl,
                "jti_random": jti_random_hex,
                "jti": claim.jti,
                "token": token,
            }
        )
    return {
        "description": "compact JWS, EdDSA/Ed25519, canonical JSON (sorted keys, no spaces); "
        "jti = base62(16 random bytes) padded to 22",
        "kid": "sk-2024-01",
        "issuer": "zumik-secrets-keys",
        "audience": "zumik-secrets",
        "private_key": private_hex,
        "public_key": claims.ClaimSigner(
            "sk-2024-01", bytes.fromhex(private_hex), "i", "a"
        ).public_raw.hex(),
        "cases": cases,
    }


def checkpoint_vectors() -> dict[str, Any]:
    """Audit checkpoints: the canonical statement (see the Checkpoint message in
    audit_service.proto) and its Ed25519 signature from a fixed key (Ed25519 is deterministic)."""
    private = hashlib.sha256(b"zumik checkpoint vector key").digest()
    signer = primitives.Ed25519Signer(private)
    cases = []
    for tenant, sequence, head_seed, time in [
        ("acme", 42, "acme head", datetime(2026, 1, 31, 12, 0, 0, 123, tzinfo=UTC)),
        ("-", 1, "service head", datetime(2026, 12, 3, 23, 59, 59, 999999, tzinfo=UTC)),
        ("t-0", 9007199254740993, "big sequence", datetime(2030, 6, 1, tzinfo=UTC)),
    ]:
        head = hashlib.sha256(head_seed.encode()).digest()
        cp = audit_chain.sign_checkpoint(signer, "ckp_vector", tenant, sequence, head, time)
        cases.append(
            {
                "tenant": tenant,
                "sequence": sequence,
                "head_hash_hex": head.hex(),
                "time": {"seconds": int(time.timestamp()), "nanos": time.microsecond * 1000},
                "statement": cp.statement().decode("utf-8"),
                "kid": cp.kid,
                "signature_b64url": encoding.b64url_encode(cp.signature),
            }
        )
    return {
        "description": "Audit checkpoint statements (version 1) and their Ed25519 signatures",
        "private_key_hex": private.hex(),
        "public_key_b64url": encoding.b64url_encode(signer.public_raw),
        "cases": cases,
    }


BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "handles.json": handle_vectors,
    "api_keys.json": api_key_vectors,
    "session_tokens.json": session_token_vectors,
    "keyring.json": keyring_vectors,
    "claims.json": claim_vectors,
    "checkpoints.json": checkpoint_vectors,
}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    status = 0
    for name, build in BUILDERS.items():
        text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                print(f"{name}: differs from the generator", file=sys.stderr)
                status = 1
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
