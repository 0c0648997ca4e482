"""Session tokens: ``zs_`` + unpadded base64url of 256 random bits (46 characters).

Only ``SHA-256(token as ASCII)`` is stored; it is the lookup key, so a database leak does not
reveal usable tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from zumik_secrets.core import encoding
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.primitives import random_bytes, sha256

REASON_MALFORMED = "SESSION_TOKEN_MALFORMED"

PREFIX = "zs_"
TOKEN_RANDOM_BYTES = 32
TOKEN_LENGTH = len(PREFIX) + 43
_TOKEN_RE = re.compile(r"zs_[A-Za-z0-9_-]{43}")


def _malformed(field: str) -> InvalidArgument:
    message = f"{field} must look like zs_<43 base64url characters>"
    return InvalidArgument(
        message,
        reason=REASON_MALFORMED,
        metadata={"field": field},
        violations=[FieldViolation(field, message)],
    )


def new_session_token(rand: Callable[[int], bytes] = random_bytes) -> tuple[str, bytes]:
    """Mint a session token.

    Args:
        rand: Source of random bytes (tests inject a seeded one).

    Returns:
        ``(raw, token_hash)``: the raw token, returned to the user once, and its SHA-256.

    Raises:
        ValueError: If ``rand`` returns the wrong number of bytes.
    """
    data = rand(TOKEN_RANDOM_BYTES)
    if len(data) != TOKEN_RANDOM_BYTES:
        raise ValueError("random source returned the wrong number of bytes")
    raw = PREFIX + encoding.b64url_encode(data)
    return raw, sha256(raw.encode("ascii"))


def validate_session_token(raw: str, *, field: str = "session_token") -> None:
    """Check the format of a presented token (no database involved).

    Raises:
        InvalidArgument: Reason ``SESSION_TOKEN_MALFORMED``; the message never holds the input.
    """
    if not isinstance(raw, str) or len(raw) != TOKEN_LENGTH or _TOKEN_RE.fullmatch(raw) is None:
        raise _malformed(field)
    try:
        encoding.b64url_decode(raw[len(PREFIX) :])
    except ValueError:
        raise _malformed(field) from None


def hash_session_token(raw: str, *, field: str = "session_token") -> bytes:
    """Validate a presented token and return its SHA-256, the storage lookup key.

    Raises:
        InvalidArgument: Reason ``SESSION_TOKEN_MALFORMED``.
    """
    validate_session_token(raw, field=field)
    return sha256(raw.encode("ascii"))
