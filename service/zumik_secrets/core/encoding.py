"""Text encodings used by identifiers and tokens: base62 and unpadded base64url.

Both decoders are strict so that each value has exactly one textual form: a token or handle
that decodes must re-encode to the same string. They raise ``ValueError`` with a short message
that never repeats the input; parsers in other modules translate it to a domain error.
"""

from __future__ import annotations

import base64
import binascii
import re

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""Digits, then upper case, then lower case: '0' is the zero digit, so left-padding with '0'
does not change the value."""

_B62_INDEX = {c: i for i, c in enumerate(BASE62_ALPHABET)}
_PAIR_BASE = 62 * 62
_B62_PAIRS = [a + b for a in BASE62_ALPHABET for b in BASE62_ALPHABET]
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def base62_encode_int(n: int, width: int | None = None) -> str:
    """Encode a non-negative integer in base62, left-padded with '0' to ``width`` if given.

    Raises:
        ValueError: If ``n`` is negative or does not fit in ``width`` characters.
    """
    if n < 0:
        raise ValueError("base62 encodes non-negative integers only")
    # Two digits per division (handles and keys are minted on hot paths).
    pairs: list[str] = []
    while n >= _PAIR_BASE:
        n, r = divmod(n, _PAIR_BASE)
        pairs.append(_B62_PAIRS[r])
    head = _B62_PAIRS[n].lstrip("0") if n else ("" if pairs else "0")
    text = head + "".join(reversed(pairs))
    if width is not None:
        if len(text) > width:
            raise ValueError("value does not fit the base62 width")
        text = text.rjust(width, "0")
    return text


def base62_decode_int(text: str, width: int | None = None) -> int:
    """Decode a base62 string to an integer.

    Args:
        text: Base62 digits.
        width: If given, ``text`` must be exactly this long.

    Raises:
        ValueError: If ``text`` is empty, has a character outside the alphabet, or has the
            wrong length.
    """
    if not text:
        raise ValueError("empty base62 string")
    if width is not None and len(text) != width:
        raise ValueError("base62 string has the wrong length")
    n = 0
    for c in text:
        d = _B62_INDEX.get(c)
        if d is None:
            raise ValueError("invalid base62 character")
        n = n * 62 + d
    return n


def base62_encode(data: bytes, width: int | None = None) -> str:
    """Encode bytes (as a big-endian unsigned integer) in base62.

    Leading zero bytes are not preserved unless ``width`` fixes the length; use a width when
    the byte length is fixed (handles: 16 bytes -> 22 characters).

    Raises:
        ValueError: If the value does not fit in ``width`` characters.
    """
    return base62_encode_int(int.from_bytes(data, "big"), width)


def base62_decode(text: str, length: int, width: int | None = None) -> bytes:
    """Decode base62 text to exactly ``length`` bytes (big-endian).

    Raises:
        ValueError: If the text is invalid (see :func:`base62_decode_int`) or its value does
            not fit in ``length`` bytes.
    """
    n = base62_decode_int(text, width)
    if n.bit_length() > 8 * length:
        raise ValueError("base62 value too large")
    return n.to_bytes(length, "big")


def b64url_encode(data: bytes) -> str:
    """Encode bytes as base64url (RFC 4648 section 5) without '=' padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly.

    Rejects padding, characters outside ``[A-Za-z0-9_-]``, impossible lengths and
    non-canonical encodings (non-zero unused bits in the last character), so that
    ``b64url_encode(b64url_decode(s)) == s`` for every accepted ``s``.

    Raises:
        ValueError: If ``text`` is not canonical unpadded base64url.
    """
    if _B64URL_RE.fullmatch(text) is None:
        raise ValueError("invalid base64url character")
    if len(text) % 4 == 1:
        raise ValueError("invalid base64url length")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64url") from None
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data
