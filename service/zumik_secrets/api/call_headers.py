"""The tenant claim of a call, read from its metadata: exactly one ``zumik-claim`` header or none.

gRPC metadata may repeat a key, and what a proxy or gateway in front of the server does with a
repeated header (first, last, joined) is its own choice. Reading "the first one" would let a
call mean one claim to the server and another to whatever stands in front of it; reading an
empty first header as "no claim" turned a call carrying a claim into one without (and
``WatchRevocations``, which refuses calls carrying a claim, served it). So the shape of the
claim headers is checked before anything else of the call, and any doubt refuses it with
UNAUTHENTICATED ``CLAIM_MALFORMED`` (the closest reason of the contract: the claim sent is not
one well-formed token):

* more than one ``zumik-claim`` header;
* an empty (or blank) ``zumik-claim`` header;
* any ``zumik-claim-bin`` header (a binary header of the same name: the claim is text, and a
  caller or proxy that sends it binary means a claim the server would otherwise ignore).

The message names the header, never its value (a claim is a bearer token).
"""

from __future__ import annotations

from typing import Any

from zumik_secrets.core.errors import Unauthenticated

CLAIM_METADATA_KEY = "zumik-claim"
CLAIM_BINARY_KEY = CLAIM_METADATA_KEY + "-bin"
"""A binary header of the claim's name: never a valid way to send a claim (refused)."""
REASON_CLAIM_MALFORMED = "CLAIM_MALFORMED"


def _refuse(message: str) -> Unauthenticated:
    return Unauthenticated(
        message, reason=REASON_CLAIM_MALFORMED, metadata={"header": CLAIM_METADATA_KEY}
    )


def claim_header(metadata: Any) -> str | None:
    """The call's one ``zumik-claim`` value, or None when the call carries no claim header.

    Args:
        metadata: The call's invocation metadata (items with ``key`` and ``value``; gRPC
            lowercases keys).

    Raises:
        Unauthenticated: reason ``CLAIM_MALFORMED``: several ``zumik-claim`` headers, an empty
            one, or a ``zumik-claim-bin`` header.
    """
    found: str | None = None
    for item in metadata or ():
        key = item.key
        if key == CLAIM_BINARY_KEY:
            raise _refuse(
                f"the tenant claim must be sent as the text metadata {CLAIM_METADATA_KEY!r}, "
                f"never as {CLAIM_BINARY_KEY!r}"
            )
        if key != CLAIM_METADATA_KEY:
            continue
        if found is not None:
            raise _refuse(
                f"the call carries more than one {CLAIM_METADATA_KEY!r} metadata entry; "
                "send exactly one tenant claim"
            )
        value = item.value
        found = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if not found.strip():
            raise _refuse(f"the {CLAIM_METADATA_KEY!r} metadata entry is empty")
    return found


def carries_claim_header(metadata: Any) -> bool:
    """Whether the call carries any claim header at all (text or binary, empty or not)."""
    return any(item.key in (CLAIM_METADATA_KEY, CLAIM_BINARY_KEY) for item in metadata or ())
