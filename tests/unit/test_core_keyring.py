"""Master keyring: pinned vectors, strict loading, rotation and unwrap failures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors.make_vectors import fixed_rand
from zumik_secrets.core import keyring, primitives
from zumik_secrets.core.errors import DecryptionFailed, FailedPrecondition, InvalidArgument

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "keyring.json").read_text())
RING = keyring.MasterKeyring.from_text(VECTORS["keyring"])
KEYS = {k["version"]: k["key"] for k in json.loads(VECTORS["keyring"])["keys"]}


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["nonce"][:6])
def test_vectors(case: dict[str, Any]) -> None:
    blob = bytes.fromhex(case["blob"])
    aad = case["associated_data"].encode()
    plaintext = bytes.fromhex(case["plaintext"])
    # Independent construction from the primitives.
    header = b"\x01" + case["version"].to_bytes(4, "big")
    key = RING.versions[case["version"] - 1].key
    nonce = bytes.fromhex(case["nonce"])
    assert blob == header + nonce + primitives.aes_gcm_encrypt(key, nonce, plaintext, header + aad)
    # The pinned blob unwraps with the current keyring (version 1 is retired, still unwraps).
    assert RING.unwrap(blob, aad) == plaintext
    assert keyring.blob_version(blob) == case["version"]
    if case["version"] == RING.primary:
        ring = keyring.MasterKeyring.from_text(VECTORS["keyring"], rand=fixed_rand(nonce))
        assert ring.wrap(plaintext, aad) == blob


def test_fingerprints() -> None:
    for version, fp in VECTORS["fingerprints"].items():
        key = RING.versions[int(version) - 1].key
        expected = hashlib.sha256(b"zumik-keyring-fingerprint-v1\x00" + key).hexdigest()[:8]
        assert fp == expected == RING.fingerprint(int(version))
    assert RING.fingerprint() == VECTORS["fingerprints"][str(RING.primary)]


def test_repr_hides_keys() -> None:
    for text in (repr(RING), str(RING), repr(RING.versions)):
        for key in KEYS.values():
            assert key not in text
        for k in RING.versions:
            assert k.key.hex() not in text
    assert "primary=2" in repr(RING)


def test_wrap_unwrap_roundtrip_and_fresh_nonces() -> None:
    ring = keyring.MasterKeyring.from_text(keyring.generate_keyring())
    a = ring.wrap(b"data key", b"aad")
    b = ring.wrap(b"data key", b"aad")
    assert a != b
    assert ring.unwrap(a, b"aad") == ring.unwrap(b, b"aad") == b"data key"
    assert len(a) == 5 + 12 + 8 + 16


def tamper(blob: bytes, i: int) -> bytes:
    return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :]


@pytest.mark.parametrize(
    ("blob_fn", "aad"),
    [
        pytest.param(lambda b: tamper(b, 0), b"aad", id="format-byte"),
        pytest.param(lambda b: tamper(b, 4), b"aad", id="version-to-retired"),
        pytest.param(
            lambda b: b[:1] + (9).to_bytes(4, "big") + b[5:], b"aad", id="unknown-version"
        ),
        pytest.param(lambda b: tamper(b, 8), b"aad", id="nonce"),
        pytest.param(lambda b: tamper(b, 20), b"aad", id="ciphertext"),
        pytest.param(lambda b: tamper(b, len(b) - 1), b"aad", id="tag"),
        pytest.param(lambda b: b, b"aae", id="aad"),
        pytest.param(lambda b: b[:32], b"aad", id="truncated"),
        pytest.param(lambda b: b"", b"aad", id="empty"),
    ],
)
def test_unwrap_failures(blob_fn: Any, aad: bytes) -> None:
    blob = RING.wrap(b"k" * 32, b"aad")
    with pytest.raises(DecryptionFailed) as info:
        RING.unwrap(blob_fn(blob), aad)
    assert str(info.value) == "decryption failed"


def test_rotation_lifecycle() -> None:
    ring1 = keyring.MasterKeyring.from_text(keyring.generate_keyring())
    old = ring1.wrap(b"dek", b"a")
    ring2 = keyring.MasterKeyring.from_text(ring1.add_version())
    assert ring2.primary == 2
    assert ring2.needs_rewrap(old)
    new = ring2.rewrap(old, b"a")
    assert not ring2.needs_rewrap(new)
    assert keyring.blob_version(new) == 2
    ring3 = keyring.MasterKeyring.from_text(ring2.retire(1))
    assert [k.state for k in ring3.versions] == ["retired", "active"]
    assert ring3.unwrap(old, b"a") == b"dek"  # retired keys still unwrap
    with pytest.raises(FailedPrecondition) as info:
        ring3.retire(2)
    assert info.value.reason == "KEYRING_STATE"
    with pytest.raises(FailedPrecondition):
        ring3.promote(1)
    with pytest.raises(FailedPrecondition):
        ring3.retire(7)
    # Roll out a key first, then promote it.
    ring4 = keyring.MasterKeyring.from_text(ring3.add_version(make_primary=False))
    assert ring4.primary == 2 and len(ring4.versions) == 3
    ring5 = keyring.MasterKeyring.from_text(ring4.promote(3))
    assert ring5.primary == 3
    assert ring5.unwrap(new, b"a") == b"dek"
    assert keyring.MasterKeyring.from_text(ring5.to_text()).fingerprints() == ring5.fingerprints()


def good() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VECTORS["keyring"])
    return doc


def edit(fn: Any) -> str:
    doc = good()
    fn(doc)
    return json.dumps(doc)


K = KEYS[1]
INVALID = [
    ("not json", "not JSON"),
    ("[]", "top level"),
    ('{"format":"zumik-keyring-v1","primary":1,"primary":2,"keys":[]}', "duplicate"),
    (edit(lambda d: d.update(format="zumik-keyring-v2")), "format"),
    (edit(lambda d: d.update(extra=1)), "exactly the fields"),
    (edit(lambda d: d.pop("primary")), "exactly the fields"),
    (edit(lambda d: d.update(primary="2")), "primary must be an integer"),
    (edit(lambda d: d.update(primary=True)), "primary must be an integer"),
    (edit(lambda d: d.update(primary=3)), "not in keys"),
    (edit(lambda d: d.update(primary=1)), "must be active"),
    (edit(lambda d: d.update(keys=[])), "non-empty list"),
    (edit(lambda d: d.update(keys={})), "non-empty list"),
    (edit(lambda d: d["keys"][0].update(version=2)), "appears twice"),
    (edit(lambda d: d["keys"][0].update(version=0)), "keys[0].version"),
    (edit(lambda d: d["keys"][0].update(version=2**32)), "keys[0].version"),
    (edit(lambda d: d["keys"][0].update(version=1.0)), "keys[0].version"),
    (edit(lambda d: d["keys"][1].update(state="disabled")), "keys[1].state"),
    (edit(lambda d: d["keys"][1].update(key=d["keys"][1]["key"] + "=")), "base64url"),
    (edit(lambda d: d["keys"][1].update(key=d["keys"][1]["key"][:-2])), "base64url"),
    (edit(lambda d: d["keys"][1].update(key="A" * 42)), "32 bytes"),
    (edit(lambda d: d["keys"][1].update(key="+" + d["keys"][1]["key"][1:])), "base64url"),
    (edit(lambda d: d["keys"][1].update(key=5)), "base64url string"),
    (edit(lambda d: d["keys"][1].update(note="x")), "exactly the fields"),
    ('{"format":"zumik-keyring-v1","primary":NaN,"keys":[]}', "NaN"),
    ("[" * 100_000, "nested"),
]


@pytest.mark.parametrize(("text", "expect"), INVALID)
def test_from_text_rejects(text: str, expect: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        keyring.MasterKeyring.from_text(text)
    err = info.value
    assert err.reason == "KEYRING_INVALID"
    assert expect in err.message, err.message
    for key in KEYS.values():
        assert key not in err.message
        assert key[:-2] not in err.message


def test_from_text_rejects_oversized() -> None:
    with pytest.raises(InvalidArgument):
        keyring.MasterKeyring.from_text(" " * (keyring.MAX_TEXT_LENGTH + 1))


@settings(max_examples=200)
@given(
    st.one_of(
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: (
                st.lists(c, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["format", "primary", "keys", "version", "key", "state"]),
                    c,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_from_text_only_raises_invalid_argument(text: str) -> None:
    try:
        keyring.MasterKeyring.from_text(text)
    except InvalidArgument as exc:
        assert exc.reason == "KEYRING_INVALID"


@given(st.binary(max_size=80), st.binary(max_size=20))
def test_unwrap_garbage_only_raises_decryption_failed(blob: bytes, aad: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        RING.unwrap(blob, aad)
