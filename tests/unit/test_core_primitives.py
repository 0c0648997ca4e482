"""Primitives against published vectors (RFC 8032, McGrew-Viega GCM, RFC 4231, FIPS 180-2)."""

from __future__ import annotations

from typing import Any

import pytest

from zumik_secrets.core import primitives
from zumik_secrets.core.errors import DecryptionFailed

# RFC 8032 section 7.1, TEST 1 and TEST 2.
RFC8032 = [
    pytest.param(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        id="rfc8032-test1",
    ),
    pytest.param(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        id="rfc8032-test2",
    ),
]

# McGrew & Viega, "The Galois/Counter Mode of Operation", Test Case 16 (AES-256, 96-bit IV,
# with AAD).
GCM_KEY = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
GCM_IV = "cafebabefacedbaddecaf888"
GCM_PT = (
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM_AAD = "feedfacedeadbeeffeedfacedeadbeefabaddad2"
GCM_CT = (
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
)
GCM_TAG = "76fc6ece0f4e1768cddf8853bb2d551b"


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_ed25519_rfc8032(secret: str, public: str, message: str, signature: str) -> None:
    sk, pk, msg, sig = (bytes.fromhex(x) for x in (secret, public, message, signature))
    assert primitives.ed25519_public(sk) == pk
    signer = primitives.Ed25519Signer(sk)
    assert signer.public_raw == pk
    assert signer.sign(msg) == sig
    primitives.ed25519_verify(pk, sig, msg)
    primitives.Ed25519Verifier(pk).verify(sig, msg)


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_ed25519_rejects_tampering(secret: str, public: str, message: str, signature: str) -> None:
    pk, msg, sig = (bytes.fromhex(x) for x in (public, message, signature))
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(primitives.InvalidSignature):
        primitives.ed25519_verify(pk, bad_sig, msg)
    with pytest.raises(primitives.InvalidSignature):
        primitives.ed25519_verify(pk, sig, msg + b"x")
    with pytest.raises(primitives.InvalidSignature):
        primitives.ed25519_verify(pk, sig[:63], msg)
    with pytest.raises(primitives.InvalidSignature):
        primitives.ed25519_verify(pk[:31], sig, msg)


def test_ed25519_generate_and_repr() -> None:
    sk = primitives.generate_ed25519()
    assert len(sk) == 32
    signer = primitives.Ed25519Signer(sk)
    assert sk.hex() not in repr(signer)
    primitives.ed25519_verify(primitives.ed25519_public(sk), signer.sign(b"m"), b"m")
    with pytest.raises(ValueError):
        primitives.Ed25519Signer(sk[:31])


def test_aes_gcm_mcgrew_viega_case16() -> None:
    key, iv, pt, aad = (bytes.fromhex(x) for x in (GCM_KEY, GCM_IV, GCM_PT, GCM_AAD))
    expected = bytes.fromhex(GCM_CT + GCM_TAG)
    assert primitives.aes_gcm_encrypt(key, iv, pt, aad) == expected
    assert primitives.aes_gcm_decrypt(key, iv, expected, aad) == pt
    aead = primitives.Aead(key)
    assert aead.encrypt(iv, pt, aad) == expected
    assert aead.decrypt(iv, expected, aad) == pt
    assert GCM_KEY not in repr(aead)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c, a: (bytes([c[0] ^ 1]) + c[1:], a), id="ciphertext"),
        pytest.param(lambda c, a: (c[:-1] + bytes([c[-1] ^ 1]), a), id="tag"),
        pytest.param(lambda c, a: (c, a + b"x"), id="aad"),
        pytest.param(lambda c, a: (c[:15], a), id="short"),
    ],
)
def test_aes_gcm_rejects(mutate: Any) -> None:
    key, iv, pt, aad = (bytes.fromhex(x) for x in (GCM_KEY, GCM_IV, GCM_PT, GCM_AAD))
    ct, aad2 = mutate(primitives.aes_gcm_encrypt(key, iv, pt, aad), aad)
    with pytest.raises(DecryptionFailed) as info:
        primitives.Aead(key).decrypt(iv, ct, aad2)
    assert str(info.value) == "decryption failed"


def test_aes_gcm_argument_checks() -> None:
    with pytest.raises(ValueError):
        primitives.Aead(b"k" * 16)
    with pytest.raises(ValueError):
        primitives.Aead(b"k" * 32).encrypt(b"n" * 8, b"", b"")
    with pytest.raises(DecryptionFailed):
        primitives.Aead(b"k" * 32).decrypt(b"n" * 8, b"x" * 32, b"")


def test_hashes_published_vectors() -> None:
    # FIPS 180-2 "abc"; RFC 4231 test case 1.
    assert primitives.sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert primitives.hmac_sha256(b"\x0b" * 20, b"Hi There").hex() == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )


def test_random_and_compare() -> None:
    assert len(primitives.random_bytes(16)) == 16
    assert primitives.random_bytes(16) != primitives.random_bytes(16)
    assert primitives.random_bytes(0) == b""
    with pytest.raises(ValueError):
        primitives.random_bytes(-1)
    assert primitives.constant_time_equal(b"ab", b"ab")
    assert not primitives.constant_time_equal(b"ab", b"ac")
    assert not primitives.constant_time_equal(b"ab", b"abc")


def test_only_primitives_imports_hazmat() -> None:
    import ast
    import pathlib

    core = pathlib.Path(primitives.__file__).parent
    offenders = []
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            if any(m.split(".")[0] == "cryptography" for m in modules):
                offenders.append(path.name)
    offenders = [name for name in offenders if name != "primitives.py"]
    assert offenders == []
