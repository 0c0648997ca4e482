"""The credential headers of a call, read from its metadata: exactly one of each, or none.

Two metadata headers carry authority: ``zumik-claim`` (the tenant claim) and ``zumik-grant``
(the id of a break-glass grant). gRPC metadata may repeat a key, and what a proxy or gateway in
front of the server does with a repeated header (first, last, joined) is its own choice.
Reading "the first one" would let a call mean one claim or grant to the server and another to
whatever stands in front of it; reading an empty first header as "none" turned a call carrying
a claim into one without (and ``WatchRevocations``, which refuses calls carrying a claim,
served it). So the shape of both headers is checked before anything else of the call, on every
method, and any doubt refuses it:

* more than one entry of the header;
* an empty (or blank) entry;
* any ``<header>-bin`` entry (a binary header of the same name: claims and grant ids are text,
  and a caller or proxy that sends one binary means a value the server would otherwise ignore).

A claim header is refused UNAUTHENTICATED ``CLAIM_MALFORMED`` (the claim is the credential); a
grant header PERMISSION_DENIED ``GRANT_MALFORMED`` (like every refusal of a grant: the caller is
authenticated by its certificate). The message names the header, never its value (a claim is a
bearer token).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zumik_secrets.core.break_glass import GRANT_METADATA_KEY
from zumik_secrets.core.errors import PermissionDenied, Unauthenticated, ZumikError

CLAIM_METADATA_KEY = "zumik-claim"
CLAIM_BINARY_KEY = CLAIM_METADATA_KEY + "-bin"
"""A binary header of the claim's name: never a valid way to send a claim (refused)."""
GRANT_BINARY_KEY = GRANT_METADATA_KEY + "-bin"
"""A binary header of the grant's name: never a valid way to send a grant id (refused)."""
REASON_CLAIM_MALFORMED = "CLAIM_MALFORMED"
REASON_GRANT_MALFORMED = "GRANT_MALFORMED"


def _refuse_claim(message: str) -> ZumikError:
    return Unauthenticated(
        message, reason=REASON_CLAIM_MALFORMED, metadata={"header": CLAIM_METADATA_KEY}
    )


def _refuse_grant(message: str) -> ZumikError:
    return PermissionDenied(
        message, reason=REASON_GRANT_MALFORMED, metadata={"header": GRANT_METADATA_KEY}
    )


def single_header(
    metadata: Any, key: str, what: str, refuse: Callable[[str], ZumikError]
) -> str | None:
    """The call's one text ``key`` value, or None when the call carries no such header.

    Args:
        metadata: The call's invocation metadata (items with ``key`` and ``value``; gRPC
            lowercases keys).
        key: The header (``zumik-claim``, ``zumik-grant``).
        what: What the header carries, for the messages ("tenant claim").
        refuse: Builds the error for a malformed header from its message.

    Raises:
        ZumikError: from ``refuse``: several ``key`` headers, an empty one, or a ``key-bin``
            header.
    """
    binary = key + "-bin"
    found: str | None = None
    for item in metadata or ():
        name = item.key
        if name == binary:
            raise refuse(
                f"the {what} must be sent as the text metadata {key!r}, never as {binary!r}"
            )
        if name != key:
            continue
        if found is not None:
            raise refuse(
                f"the call carries more than one {key!r} metadata entry; send exactly one {what}"
            )
        value = item.value
        found = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if not found.strip():
            raise refuse(f"the {key!r} metadata entry is empty")
    return found


def claim_header(metadata: Any) -> str | None:
    """The call's one ``zumik-claim`` value, or None when the call carries no claim header.

    Raises:
        Unauthenticated: reason ``CLAIM_MALFORMED``: several ``zumik-claim`` headers, an empty
            one, or a ``zumik-claim-bin`` header.
    """
    return single_header(metadata, CLAIM_METADATA_KEY, "tenant claim", _refuse_claim)


def grant_header(metadata: Any) -> str | None:
    """The call's one ``zumik-grant`` value, or None when the call carries no grant header.

    Raises:
        PermissionDenied: reason ``GRANT_MALFORMED``: several ``zumik-grant`` headers, an empty
            one, or a ``zumik-grant-bin`` header.
    """
    return single_header(metadata, GRANT_METADATA_KEY, "break-glass grant id", _refuse_grant)


def carries_claim_header(metadata: Any) -> bool:
    """Whether the call carries any claim header at all (text or binary, empty or not)."""
    return any(item.key in (CLAIM_METADATA_KEY, CLAIM_BINARY_KEY) for item in metadata or ())
