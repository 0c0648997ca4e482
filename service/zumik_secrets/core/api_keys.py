"""API key format: ``zk_<env>_<id>_<secret><check>``.

- ``env``: ``^[a-z]{2,8}$`` (``live``, ``test``, ``dev``).
- ``id``: the 22-character base62 body of the key's handle (handle ``key_<id>``); public.
- ``secret``: 32 base62 characters (about 190 bits) drawn uniformly from the CSPRNG.
- ``check``: CRC32 (``zlib.crc32``) of everything before it, as 6 base62 characters
  left-padded with '0'. It catches typos and scanner false positives before any database read;
  CRC32 detects every single-character substitution.

Stored: the id, a random 16-byte salt, ``SHA-256(salt || secret)`` (the secret's 32 ASCII
bytes) and the masked prefix ``zk_<env>_<id>…``. The raw key leaves the service once.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from zumik_secrets.core import encoding, handles
from zumik_secrets.core.errors import FieldViolation, InvalidArgument, Unauthenticated
from zumik_secrets.core.primitives import constant_time_equal, random_bytes, sha256

REASON_MALFORMED = "API_KEY_MALFORMED"
REASON_CHECKSUM_MISMATCH = "API_KEY_CHECKSUM_MISMATCH"
REASON_INVALID = "API_KEY_INVALID"

PREFIX = "zk_"
SECRET_LENGTH = 32
CHECK_LENGTH = 6
SALT_LENGTH = 16
MAX_RAW_LENGTH = 200
"""Inputs longer than this are rejected before any regex work (a valid key is <= 73)."""
ELLIPSIS = "\u2026"

ENV_RE = re.compile(r"[a-z]{2,8}")
_KEY_RE = re.compile(r"zk_([a-z]{2,8})_([0-9A-Za-z]{22})_([0-9A-Za-z]{32})([0-9A-Za-z]{6})")
_EXPECTED = "zk_<env>_<22 base62 id>_<32 base62 secret><6 base62 check>"


class ApiKeyMismatch(Unauthenticated):
    """The presented secret does not match the stored hash (reason ``API_KEY_INVALID``)."""

    default_reason = REASON_INVALID

    def __init__(self) -> None:
        super().__init__("API key is not valid")


@dataclass(frozen=True, slots=True)
class ParsedApiKey:
    """A structurally valid API key whose checksum matched. ``secret`` is hidden from repr."""

    env: str
    key_id: str
    secret: str = field(repr=False)

    @property
    def handle(self) -> str:
        """The key's handle, ``key_<key_id>``."""
        return f"{handles.KIND_API_KEY}_{self.key_id}"

    @property
    def masked_prefix(self) -> str:
        """``zk_<env>_<id>…``, safe to show and store."""
        return masked_prefix(self.env, self.key_id)


@dataclass(frozen=True, slots=True)
class GeneratedApiKey:
    """A new API key: ``raw`` goes to the caller once; the rest is stored.

    ``raw`` and ``secret_hash`` are hidden from repr.
    """

    raw: str = field(repr=False)
    env: str
    key_id: str
    salt: bytes = field(repr=False)
    secret_hash: bytes = field(repr=False)
    masked_prefix: str

    @property
    def handle(self) -> str:
        """The key's handle, ``key_<key_id>``."""
        return f"{handles.KIND_API_KEY}_{self.key_id}"


def _malformed() -> InvalidArgument:
    message = f"API key must look like {_EXPECTED}"
    return InvalidArgument(
        message,
        reason=REASON_MALFORMED,
        metadata={"field": "api_key"},
        violations=[FieldViolation("api_key", message)],
    )


def checksum(prefix: str) -> str:
    """Return the 6-character base62 CRC32 of ``prefix`` (the key text before the check)."""
    return encoding.base62_encode_int(zlib.crc32(prefix.encode("ascii")), CHECK_LENGTH)


def masked_prefix(env: str, key_id: str) -> str:
    """Return ``zk_<env>_<id>…``."""
    return f"{PREFIX}{env}_{key_id}{ELLIPSIS}"


def format_api_key(env: str, key_id: str, secret: str) -> str:
    """Assemble a raw key from its parts, computing the checksum.

    Raises:
        InvalidArgument: Reason ``API_KEY_MALFORMED`` if a part is malformed.
    """
    body = f"{PREFIX}{env}_{key_id}_{secret}"
    raw = body + checksum(body) if body.isascii() else ""
    parse_api_key(raw)  # one grammar: whatever we format must parse
    return raw


def _random_secret(rand: Callable[[int], bytes]) -> str:
    # Rejection sampling keeps each character uniform: bytes >= 248 (4 * 62) are discarded.
    out: list[str] = []
    while len(out) < SECRET_LENGTH:
        for b in rand(SECRET_LENGTH):
            if b < 248:
                out.append(encoding.BASE62_ALPHABET[b % 62])
                if len(out) == SECRET_LENGTH:
                    break
    return "".join(out)


def generate_api_key(
    env: str, key_id: str | None = None, *, rand: Callable[[int], bytes] = random_bytes
) -> GeneratedApiKey:
    """Create a new API key.

    Args:
        env: ``^[a-z]{2,8}$``, e.g. ``live``.
        key_id: The 22-character handle body to use; a new one is minted if None.
        rand: Source of random bytes (tests inject a seeded one).

    Raises:
        InvalidArgument: Reason ``API_KEY_MALFORMED`` if ``env`` or ``key_id`` is malformed.
    """
    if not isinstance(env, str) or ENV_RE.fullmatch(env) is None:
        message = "env must be 2 to 8 lower-case letters"
        raise InvalidArgument(
            message,
            reason=REASON_MALFORMED,
            metadata={"field": "env"},
            violations=[FieldViolation("env", message)],
        )
    if key_id is None:
        key_id = handles.new_handle(handles.KIND_API_KEY, rand).split("_", 1)[1]
    secret = _random_secret(rand)
    raw = format_api_key(env, key_id, secret)
    salt = rand(SALT_LENGTH)
    return GeneratedApiKey(
        raw=raw,
        env=env,
        key_id=key_id,
        salt=salt,
        secret_hash=hash_secret(salt, secret),
        masked_prefix=masked_prefix(env, key_id),
    )


def parse_api_key(raw: str) -> ParsedApiKey:
    """Parse a raw key and check its checksum. No database is involved.

    Raises:
        InvalidArgument: Reason ``API_KEY_MALFORMED`` if the structure is wrong (too long,
            bad characters, id over 128 bits), ``API_KEY_CHECKSUM_MISMATCH`` if the check
            characters do not match. The message never contains the input.
    """
    if not isinstance(raw, str) or len(raw) > MAX_RAW_LENGTH:
        raise _malformed()
    m = _KEY_RE.fullmatch(raw)
    if m is None:
        raise _malformed()
    env, key_id, secret, check = m.groups()
    if not constant_time_equal(
        checksum(raw[:-CHECK_LENGTH]).encode("ascii"), check.encode("ascii")
    ):
        raise InvalidArgument(
            "API key checksum does not match; check for a typo",
            reason=REASON_CHECKSUM_MISMATCH,
            metadata={"field": "api_key"},
            violations=[FieldViolation("api_key", "checksum does not match")],
        )
    if not handles.body_is_canonical(key_id):
        raise _malformed()
    return ParsedApiKey(env=env, key_id=key_id, secret=secret)


def hash_secret(salt: bytes, secret: str) -> bytes:
    """Return ``SHA-256(salt || secret)`` with the secret as ASCII bytes.

    Raises:
        ValueError: If ``salt`` is not 16 bytes or ``secret`` is not ASCII.
    """
    if len(salt) != SALT_LENGTH:
        raise ValueError("salt must be 16 bytes")
    return sha256(salt + secret.encode("ascii"))


def check_secret(stored_hash: bytes, salt: bytes, secret: str) -> None:
    """Check a presented secret against the stored hash in constant time.

    Raises:
        ApiKeyMismatch: (an ``Unauthenticated``, reason ``API_KEY_INVALID``) if it differs.
        ValueError: If ``salt`` is not 16 bytes.
    """
    if not constant_time_equal(hash_secret(salt, secret), stored_hash):
        raise ApiKeyMismatch()
