"""Sealed-secret format: pinned vectors, independent construction, and every way to fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors.make_sealed_vectors import build
from tests.vectors.make_vectors import fixed_rand
from zumik_secrets.core import primitives, sealing
from zumik_secrets.core.errors import DecryptionFailed

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "sealed.json").read_text())


def test_vectors_file_is_current() -> None:
    assert build() == VECTORS


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: str(c["dek_version"]))
def test_vectors(case: dict[str, Any]) -> None:
    key = bytes.fromhex(case["key"])
    nonce = bytes.fromhex(case["nonce"])
    plaintext = bytes.fromhex(case["plaintext"])
    blob = bytes.fromhex(case["blob"])
    aad = sealing.secret_aad(
        case["tenant"], case["project"], case["secret_id"], case["secret_version"], case["purpose"]
    )
    assert aad.hex() == case["associated_data"]
    expected_aad = b"\x00".join(
        s.encode()
        for s in (
            "zumik-sealed-secret-v1",
            case["tenant"],
            case["project"],
            case["secret_id"],
            case["purpose"],
            str(case["secret_version"]),
        )
    )
    assert aad == expected_aad
    # Independent construction from the raw primitive.
    header = b"\x01" + case["dek_version"].to_bytes(4, "big")
    assert blob == header + nonce + primitives.aes_gcm_encrypt(key, nonce, plaintext, header + aad)
    assert sealing.sealed_version(blob) == case["dek_version"]
    assert sealing.open_sealed(primitives.Aead(key), blob, aad) == plaintext
    assert (
        sealing.seal(
            primitives.Aead(key), case["dek_version"], plaintext, aad, rand=fixed_rand(nonce)
        )
        == blob
    )


def test_data_key_aad() -> None:
    fields = VECTORS["data_key_associated_data"]
    assert sealing.data_key_aad(*fields["fields"]).hex() == fields["hex"]


CASE = VECTORS["cases"][0]
KEY = primitives.Aead(bytes.fromhex(CASE["key"]))
BLOB = bytes.fromhex(CASE["blob"])
AAD = bytes.fromhex(CASE["associated_data"])


def _flip(data: bytes, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 1
    return bytes(out)


@pytest.mark.parametrize(
    ("blob", "aad", "key"),
    [
        (BLOB[:-1], AAD, KEY),  # truncated tag
        (BLOB[: sealing.MIN_SEALED_SIZE - 1], AAD, KEY),  # too short
        (b"\x02" + BLOB[1:], AAD, KEY),  # unknown format
        (_flip(BLOB, 4), AAD, KEY),  # header version altered
        (BLOB[:1] + b"\x00\x00\x00\x00" + BLOB[5:], AAD, KEY),  # version 0
        (_flip(BLOB, 10), AAD, KEY),  # nonce
        (_flip(BLOB, 20), AAD, KEY),  # ciphertext
        (_flip(BLOB, len(BLOB) - 1), AAD, KEY),  # tag
        (BLOB, sealing.secret_aad("acme", "web", "sec_0000000000000000000002", 1), KEY),
        (BLOB, sealing.secret_aad("acme", "api", "sec_0000000000000000000001", 1), KEY),
        (BLOB, sealing.secret_aad("acmf", "web", "sec_0000000000000000000001", 1), KEY),
        (BLOB, sealing.secret_aad("acme", "web", "sec_0000000000000000000001", 2), KEY),
        (
            BLOB,
            sealing.secret_aad("acme", "web", "sec_0000000000000000000001", 1, "fingerprint"),
            KEY,
        ),
        (BLOB, AAD, primitives.Aead(bytes(32))),  # another key
    ],
)
def test_every_alteration_fails_as_decryption_failed(
    blob: bytes, aad: bytes, key: primitives.Aead
) -> None:
    with pytest.raises(DecryptionFailed) as caught:
        sealing.open_sealed(key, blob, aad)
    assert str(caught.value) == "decryption failed"


def test_seal_uses_fresh_nonces_and_checks_the_version() -> None:
    a = sealing.seal(KEY, 1, b"same", AAD)
    b = sealing.seal(KEY, 1, b"same", AAD)
    assert a != b and a[5:17] != b[5:17]
    for bad in (0, 2**32):
        with pytest.raises(ValueError):
            sealing.seal(KEY, bad, b"x", AAD)
    with pytest.raises(ValueError):
        sealing.secret_aad("a\x00b", "p", "sec_x", 1)


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=4096), version=st.integers(1, 2**32 - 1))
def test_round_trip(plaintext: bytes, version: int) -> None:
    blob = sealing.seal(KEY, version, plaintext, AAD)
    assert len(blob) == sealing.MIN_SEALED_SIZE + len(plaintext)
    assert sealing.sealed_version(blob) == version
    assert sealing.open_sealed(KEY, blob, AAD) == plaintext
