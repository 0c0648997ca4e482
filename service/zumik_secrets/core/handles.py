"""Opaque handles: ``<kind>_<22 base62 chars>`` carrying 128 random bits.

Handles are never derived from content. The random source is injectable so that tests can
force collisions with a seeded generator.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from zumik_secrets.core import encoding
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.primitives import random_bytes

HANDLE_RANDOM_BYTES = 16
"""128 bits of randomness per handle."""
HANDLE_BODY_LENGTH = 22
"""Base62 characters needed for 128 bits (62**22 > 2**128)."""
MAX_HANDLE_LENGTH = 8 + 1 + HANDLE_BODY_LENGTH

KIND_API_KEY = "key"
KIND_SESSION = "ses"
KIND_SECRET = "sec"  # noqa: S105 (a handle kind, not a password)
KIND_PURGE_RECEIPT = "rcp"

REASON_INVALID_HANDLE = "INVALID_HANDLE"

ID_GRAMMAR = "22 base62 characters (0-9, A-Z, a-z; most significant first) encoding 128 bits"
"""What the ``{id}`` of a handle is (the contract's comments say the same)."""
LARGEST_ID = "7n42DGM5Tflk9n8mt7Fhc7"
"""2**128 - 1 in base62: every minted id is at most this."""
ID_TOO_LARGE = f"{{id}} encodes a number of 2^128 or more (the largest id is {LARGEST_ID})"
"""Why a well-shaped id is refused (the message never echoes the id itself)."""

KIND_RE = re.compile(r"[a-z]{2,8}")
HANDLE_RE = re.compile(r"([a-z]{2,8})_([0-9A-Za-z]{22})")
"""A whole handle (use with ``fullmatch``); groups: kind, body."""


def validate_kind(kind: str, *, field: str = "kind") -> str:
    """Return ``kind`` if it matches ``^[a-z]{2,8}$``.

    Raises:
        InvalidArgument: Reason ``INVALID_HANDLE`` if it does not.
    """
    if not isinstance(kind, str) or KIND_RE.fullmatch(kind) is None:
        message = f"{field} must be 2 to 8 lower-case letters"
        raise InvalidArgument(
            message,
            reason=REASON_INVALID_HANDLE,
            metadata={"field": field},
            violations=[FieldViolation(field, message)],
        )
    return kind


def body_is_canonical(body: str) -> bool:
    """Whether a 22-char base62 body encodes a value below 2**128 (the only ones we mint)."""
    return encoding.base62_decode_int(body).bit_length() <= 8 * HANDLE_RANDOM_BYTES


def new_handle(kind: str, rand: Callable[[int], bytes] = random_bytes) -> str:
    """Mint a new handle of ``kind``.

    Args:
        kind: ``^[a-z]{2,8}$``, e.g. ``key``, ``ses``, ``sec``, ``rcp``.
        rand: Source of random bytes (tests inject a seeded one).

    Raises:
        InvalidArgument: Reason ``INVALID_HANDLE`` if ``kind`` is malformed.
        ValueError: If ``rand`` returns the wrong number of bytes.
    """
    validate_kind(kind)
    raw = rand(HANDLE_RANDOM_BYTES)
    if len(raw) != HANDLE_RANDOM_BYTES:
        raise ValueError("random source returned the wrong number of bytes")
    return f"{kind}_{encoding.base62_encode(raw, HANDLE_BODY_LENGTH)}"


def parse_handle(
    text: str, expected_kind: str | None = None, *, field: str = "handle"
) -> tuple[str, str]:
    """Split a handle into ``(kind, body)``.

    Args:
        text: The handle, e.g. ``key_0aB...``.
        expected_kind: If given, the handle must be of this kind.
        field: Request field name used in the error.

    Raises:
        InvalidArgument: Reason ``INVALID_HANDLE`` if malformed, of another kind, or its body
            encodes more than 128 bits.
    """
    pattern = f"{expected_kind or '<kind>'}_<22 base62 characters>"
    m = (
        HANDLE_RE.fullmatch(text)
        if isinstance(text, str) and len(text) <= MAX_HANDLE_LENGTH
        else None
    )
    if (
        m is None
        or (expected_kind is not None and m.group(1) != expected_kind)
        or not body_is_canonical(m.group(2))
    ):
        message = f"{field} must look like {pattern}"
        if m is not None and (expected_kind is None or m.group(1) == expected_kind):
            message = f"{message}: {ID_TOO_LARGE}"  # the shape is right, the number too large
        raise InvalidArgument(
            message,
            reason=REASON_INVALID_HANDLE,
            metadata={"field": field},
            violations=[FieldViolation(field, message)],
        )
    return m.group(1), m.group(2)
