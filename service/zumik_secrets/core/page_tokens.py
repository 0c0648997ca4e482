"""The one page-token codec (AIP-158): authenticated, bound to its listing, range-checked.

Every listing (``ListApiKeys``, ``ListSecrets``, ``ListDataKeyVersions``, the rewrap pages,
``QueryEvents``) resumes from a position carried in an opaque token. The token used to be bound
to its listing with an unkeyed hash anyone could recompute, so a caller could forge any position:
an offset of 2^63 or more made SQLite raise ``OverflowError`` (answered INTERNAL). Now:

- a token is ``version (1) | position (8) | extra (4) | tag (16)``, base64url, where the tag is
  HMAC-SHA256 under a server key (derived from the master keyring, so every replica accepts every
  replica's tokens) over the version, position, extra, the listing's kind and its binding (parent,
  filter); a token from another listing, parent or filter, or altered, does not verify;
- positions are range-checked on both sides (``0 <= position < 2^63``, ``0 <= extra < 2^31``), and
  the text is length-checked before it is decoded;
- every refusal is INVALID_ARGUMENT ``INVALID_PAGE_TOKEN`` naming ``page_token``.

Tokens do not survive a change of the keyring's primary version (AIP-158 lets tokens expire).
"""

from __future__ import annotations

import threading

from zumik_secrets.core.encoding import b64url_decode, b64url_encode
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.primitives import (
    HmacSha256,
    constant_time_equal,
    derive_key,
    random_bytes,
)

REASON_INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 (a reason code)
MAX_POSITION = 2**63 - 1
MAX_EXTRA = 2**31 - 1
MAX_TOKEN_CHARS = 64
_VERSION = 2
_TAG_BYTES = 16
_LENGTH = 1 + 8 + 4 + _TAG_BYTES
_KEY_LABEL = b"zumik-page-token-key-v2"


def invalid_page_token(
    problem: str = "is not a token from a previous call of this listing",
) -> InvalidArgument:
    """The one refusal of a page token."""
    return InvalidArgument(
        f"page_token {problem}",
        reason=REASON_INVALID_PAGE_TOKEN,
        metadata={"field": "page_token"},
        violations=[FieldViolation("page_token", problem)],
    )


def _part(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return len(raw).to_bytes(4, "big") + raw


class PageTokenCodec:
    """Encodes and checks page tokens under one key."""

    def __init__(self, key: bytes) -> None:
        """Use ``key`` (a 32-byte server secret) for the tags."""
        self._mac = HmacSha256(derive_key(key, _KEY_LABEL), prefix=b"zumik-page-token\x00")

    def __repr__(self) -> str:
        return "PageTokenCodec(<key hidden>)"

    def _tag(self, body: bytes, kind: str, binding: str) -> bytes:
        return self._mac.digest(body + _part(kind) + _part(binding))[:_TAG_BYTES]

    def encode(self, kind: str, binding: str, position: int, extra: int = 0) -> str:
        """The token that resumes listing ``kind`` of ``binding`` after ``position``.

        Raises:
            ValueError: ``position`` or ``extra`` out of range (a server bug, not input).
        """
        if not (0 <= position <= MAX_POSITION and 0 <= extra <= MAX_EXTRA):
            raise ValueError("page token position out of range")
        body = bytes([_VERSION]) + position.to_bytes(8, "big") + extra.to_bytes(4, "big")
        return b64url_encode(body + self._tag(body, kind, binding))

    def decode(self, kind: str, binding: str, token: str) -> tuple[int, int]:
        """``(position, extra)`` of a token :meth:`encode` made for the same kind and binding.

        Raises:
            InvalidArgument: ``INVALID_PAGE_TOKEN``: too long, malformed, altered, from another
                listing, or out of range.
        """
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise invalid_page_token()
        try:
            data = b64url_decode(token)
        except ValueError:
            raise invalid_page_token() from None
        if len(data) != _LENGTH or data[0] != _VERSION:
            raise invalid_page_token()
        body, tag = data[:13], data[13:]
        if not constant_time_equal(tag, self._tag(body, kind, binding)):
            raise invalid_page_token()
        position = int.from_bytes(body[1:9], "big")
        extra = int.from_bytes(body[9:13], "big")
        if position > MAX_POSITION or extra > MAX_EXTRA:
            raise invalid_page_token()
        return position, extra


_lock = threading.Lock()
_codec = PageTokenCodec(random_bytes(32))


def configure(key: bytes) -> None:
    """Install the server key (the runtime derives it from the master keyring at start-up, so
    all replicas agree). Until then a random per-process key is used."""
    global _codec
    with _lock:
        _codec = PageTokenCodec(key)


def codec() -> PageTokenCodec:
    """The process's codec."""
    return _codec
