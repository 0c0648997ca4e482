"""Cryptographic primitives: the only module that imports ``cryptography.hazmat``.

Everything else in the service calls these small functions and classes, so the choice of
algorithms and the mapping of library errors to ours happen in one place.

Errors:
    ``errors.DecryptionFailed`` when an AEAD ciphertext does not authenticate.
    ``InvalidSignature`` (defined here) when an Ed25519 signature does not verify or the public
    key is malformed. It is internal: callers translate it to their own domain error
    (``claims`` turns it into ``Unauthenticated`` with reason ``CLAIM_BAD_SIGNATURE``).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import secrets
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature as _LibInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zumik_secrets.core.errors import DecryptionFailed

AES_KEY_SIZE = 32
"""Bytes in an AES-256 key."""
GCM_NONCE_SIZE = 12
"""Bytes in an AES-GCM nonce (96 bits, the size GCM is designed for)."""
GCM_TAG_SIZE = 16
"""Bytes in an AES-GCM authentication tag."""
ED25519_KEY_SIZE = 32
"""Bytes in a raw Ed25519 private or public key."""
ED25519_SIGNATURE_SIZE = 64
"""Bytes in an Ed25519 signature."""


class InvalidSignature(Exception):
    """An Ed25519 signature did not verify, or the public key was malformed.

    Deliberately carries no detail; callers map it to their own domain error.
    """

    def __init__(self) -> None:
        super().__init__("invalid signature")


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG.

    Raises:
        ValueError: If ``n`` is negative.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    return secrets.token_bytes(n)


def sha256(data: bytes) -> bytes:
    """Return the SHA-256 digest (32 bytes) of ``data``."""
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """Return HMAC-SHA256(key, data) (32 bytes)."""
    return hmac.digest(key, data, "sha256")


def derive_key(key: bytes, label: bytes, length: int = 32) -> bytes:
    """A subkey of ``key`` for one purpose named by ``label`` (HKDF-SHA256, no salt).

    Raises:
        ValueError: If ``key`` is empty.
    """
    if not key:
        raise ValueError("key must not be empty")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(key)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in time independent of where they differ.

    Returns a bool because it is the building block for checks that raise; callers must not use
    ``==`` on secrets.
    """
    return hmac.compare_digest(a, b)


class HmacSha256:
    """HMAC-SHA256 under one key, holding the library's keyed state so the key schedule (and any
    common message prefix) is computed once and each message costs one copy and one update.

    Args:
        key: The HMAC key (32 bytes for our data keys).
        prefix: Bytes every message starts with, absorbed now.

    Raises:
        ValueError: If the key is empty.
    """

    __slots__ = ("_ctx",)

    def __init__(self, key: bytes, prefix: bytes = b"") -> None:
        if not key:
            raise ValueError("HMAC key must not be empty")
        ctx = _hmac.HMAC(key, hashes.SHA256())
        if prefix:
            ctx.update(prefix)
        self._ctx = ctx

    def __repr__(self) -> str:
        return "HmacSha256(<key hidden>)"

    def with_prefix(self, prefix: bytes) -> HmacSha256:
        """A new object under the same key whose messages start with this object's prefix and
        then ``prefix``."""
        out = HmacSha256.__new__(HmacSha256)
        ctx = self._ctx.copy()
        ctx.update(prefix)
        out._ctx = ctx
        return out

    def digest(self, data: bytes) -> bytes:
        """HMAC-SHA256 of the prefix followed by ``data`` (32 bytes)."""
        ctx = self._ctx.copy()
        ctx.update(data)
        return ctx.finalize()

    def digest_all(self, values: Iterable[bytes]) -> list[bytes]:
        """:meth:`digest` of each value, in order (the batch path: no per-value key setup)."""
        # Three C-level passes (copy, update, finalize) instead of a Python loop: the batch path
        # costs the library calls and almost no interpreter time per value.
        values = values if isinstance(values, Sequence) else list(values)
        cls = type(self._ctx)
        contexts = list(map(cls.copy, itertools.repeat(self._ctx, len(values))))
        collections.deque(map(cls.update, contexts, values), maxlen=0)
        return list(map(cls.finalize, contexts))


class Aead:
    """AES-256-GCM under one key, holding the library key object so it is built once.

    Args:
        key: 32 bytes.

    Raises:
        ValueError: If the key is not 32 bytes.
    """

    __slots__ = ("_aesgcm",)

    def __init__(self, key: bytes) -> None:
        if len(key) != AES_KEY_SIZE:
            raise ValueError("AES-256-GCM key must be 32 bytes")
        self._aesgcm = AESGCM(key)

    def __repr__(self) -> str:
        return "Aead(<AES-256-GCM key hidden>)"

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        """Encrypt and authenticate; return ciphertext with the 16-byte tag appended.

        Raises:
            ValueError: If the nonce is not 12 bytes.
        """
        if len(nonce) != GCM_NONCE_SIZE:
            raise ValueError("AES-GCM nonce must be 12 bytes")
        return self._aesgcm.encrypt(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        """Authenticate and decrypt ``data`` (ciphertext || tag).

        Raises:
            DecryptionFailed: If the tag does not verify, or nonce or data are malformed.
        """
        if len(nonce) != GCM_NONCE_SIZE or len(data) < GCM_TAG_SIZE:
            raise DecryptionFailed()
        try:
            return self._aesgcm.decrypt(nonce, data, associated_data)
        except InvalidTag:
            raise DecryptionFailed() from None


def aes_gcm_encrypt(key: bytes, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
    """One-shot AES-256-GCM encryption; prefer holding an :class:`Aead` on hot paths.

    Raises:
        ValueError: If the key is not 32 bytes or the nonce not 12 bytes.
    """
    return Aead(key).encrypt(nonce, data, associated_data)


def aes_gcm_decrypt(key: bytes, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
    """One-shot AES-256-GCM decryption; prefer holding an :class:`Aead` on hot paths.

    Raises:
        ValueError: If the key is not 32 bytes.
        DecryptionFailed: If the ciphertext does not authenticate.
    """
    return Aead(key).decrypt(nonce, data, associated_data)


def generate_ed25519() -> bytes:
    """Generate an Ed25519 private key and return its raw 32 bytes (the RFC 8032 seed)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _private_key(private_raw: bytes) -> Ed25519PrivateKey:
    if len(private_raw) != ED25519_KEY_SIZE:
        raise ValueError("Ed25519 private key must be 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(private_raw)


def ed25519_public(private_raw: bytes) -> bytes:
    """Return the raw 32-byte public key of a raw Ed25519 private key.

    Raises:
        ValueError: If ``private_raw`` is not 32 bytes.
    """
    return (
        _private_key(private_raw)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


class Ed25519Signer:
    """Signs with one Ed25519 private key, held as a library key object.

    Args:
        private_raw: The raw 32-byte private key.

    Raises:
        ValueError: If ``private_raw`` is not 32 bytes.
    """

    __slots__ = ("_key", "public_raw")

    def __init__(self, private_raw: bytes) -> None:
        self._key = _private_key(private_raw)
        self.public_raw: bytes = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def __repr__(self) -> str:
        return "Ed25519Signer(<private key hidden>)"

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)


class Ed25519Verifier:
    """Verifies with one Ed25519 public key, held as a library key object.

    Args:
        public_raw: The raw 32-byte public key.

    Raises:
        InvalidSignature: If ``public_raw`` is not a valid Ed25519 public key.
    """

    __slots__ = ("_key", "public_raw")

    def __init__(self, public_raw: bytes) -> None:
        if len(public_raw) != ED25519_KEY_SIZE:
            raise InvalidSignature()
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_raw)
        except ValueError:
            raise InvalidSignature() from None
        self.public_raw = public_raw

    def __repr__(self) -> str:
        return f"Ed25519Verifier(public={self.public_raw.hex()[:16]}...)"

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check ``signature`` over ``data``.

        Raises:
            InvalidSignature: If the signature does not verify.
        """
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise InvalidSignature()
        try:
            self._key.verify(signature, data)
        except _LibInvalidSignature:
            raise InvalidSignature() from None


def ed25519_verify(public_raw: bytes, signature: bytes, data: bytes) -> None:
    """One-shot Ed25519 verification; prefer holding an :class:`Ed25519Verifier`.

    Raises:
        InvalidSignature: If the key is malformed or the signature does not verify.
    """
    Ed25519Verifier(public_raw).verify(signature, data)
