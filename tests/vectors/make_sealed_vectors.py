"""Generate tests/vectors/sealed.json: pinned sealed-secret blobs (format 0x01) from fixed inputs.

Run once (and again only for a deliberate, versioned format change):

    PYTHONPATH=service:. .venv/bin/python tests/vectors/make_sealed_vectors.py

``--check`` compares without writing. The unit test recomputes every blob from the inputs, also
independently from the raw AES-GCM primitive, and opens the pinned blobs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.vectors.make_vectors import fixed_rand
from zumik_secrets.core import primitives, sealing

OUT = Path(__file__).resolve().parent / "sealed.json"


def build() -> dict[str, Any]:
    cases = []
    for key_hex, dek_version, nonce_hex, plaintext, aad_fields in [
        (
            bytes(range(32)).hex(),
            1,
            "000102030405060708090a0b",
            b"sk-test-provider-key",
            ("acme", "web", "sec_0000000000000000000001", 1),
        ),
        (
            ("ab" * 32),
            7,
            "ffffffffffffffffffffffff",
            bytes(range(256)),
            ("t-2", "p-9", "sec_7n42DGM5Tflk9n8mt7Fhc7", 12),
        ),
        (
            ("00" * 32),
            4294967295,
            "0a0b0c0d0e0f101112131415",
            b"x",
            ("a", "b", "sec_000000000000000000000z", 1),
        ),
    ]:
        tenant, project, secret_id, version = aad_fields
        aad = sealing.secret_aad(tenant, project, secret_id, version)
        blob = sealing.seal(
            primitives.Aead(bytes.fromhex(key_hex)),
            dek_version,
            plaintext,
            aad,
            rand=fixed_rand(bytes.fromhex(nonce_hex)),
        )
        cases.append(
            {
                "key": key_hex,
                "dek_version": dek_version,
                "nonce": nonce_hex,
                "plaintext": plaintext.hex(),
                "tenant": tenant,
                "project": project,
                "secret_id": secret_id,
                "secret_version": version,
                "purpose": "seal",
                "associated_data": aad.hex(),
                "blob": blob.hex(),
            }
        )
    return {
        "format": "0x01 || dek_version (u32 BE) || nonce (12) || ciphertext || tag (16)",
        "gcm_associated_data": "header (5 bytes) || associated_data",
        "associated_data": "'zumik-sealed-secret-v1' NUL tenant NUL project NUL secret_id NUL "
        "purpose NUL decimal(secret_version)",
        "data_key_associated_data": {
            "fields": ["acme", "web", "seal", 3],
            "hex": sealing.data_key_aad("acme", "web", "seal", 3).hex(),
        },
        "cases": cases,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(build(), indent=2) + "\n"
    if "--check" in argv:
        return 0 if OUT.read_text() == text else 1
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
