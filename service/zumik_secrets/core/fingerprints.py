"""Keyed fingerprints: HMAC-SHA256 under a per-(tenant, project) key, versioned output.

Format: ``fp1.<key version>.<base64url(HMAC-SHA256(key, message))>`` where the message binds the
tenant, project and caller-given namespace to the value, each length-prefixed so no two
(tenant, project, namespace, value) tuples share a message::

    b"zumik-fp-v1" || u16(len(tenant)) || tenant || u16(len(project)) || project
                   || u16(len(namespace)) || namespace || value

Same value, tenant, project, namespace and key version: same fingerprint. Any other tenant (its
own key, and its id in the message), namespace, or key version: unrelated output. Destroying a
key version makes its fingerprints unlinkable to anything computed afterwards.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from zumik_secrets.core.encoding import b64url_decode, b64url_encode
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.primitives import HmacSha256, constant_time_equal

FORMAT_PREFIX = "fp1"
_DOMAIN = b"zumik-fp-v1"
_MAC_LENGTH = 32
NAMESPACE_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_FINGERPRINT_RE = re.compile(r"fp1\.([1-9][0-9]{0,9})\.([A-Za-z0-9_-]{43})")
MAX_VALUE_BYTES = 64 * 1024
MAX_BATCH = 1000
_URLSAFE = bytes.maketrans(b"+/", b"-_")


@dataclass(frozen=True, slots=True)
class ParsedFingerprint:
    """A parsed ``fp1`` fingerprint."""

    key_version: int
    mac: bytes = b""


def _field(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def validate_namespace(namespace: str, *, field: str = "namespace") -> bytes:
    """The namespace as bytes.

    Raises:
        InvalidArgument: reason ``INVALID_NAMESPACE``.
    """
    if not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidArgument(
            f"{field} must match ^[a-z][a-z0-9_.-]{{0,63}}$ (for example email or prompt)",
            reason="INVALID_NAMESPACE",
            metadata={"field": field},
            violations=[FieldViolation(field, "expected ^[a-z][a-z0-9_.-]{0,63}$")],
        )
    return namespace.encode("ascii")


class Fingerprinter:
    """Fingerprints values under one key version for one (tenant, project, namespace).

    Built once per call (cheap), it absorbs the message prefix into the HMAC state once, so each
    value costs one state copy, one update and one finalize. The key is held only as long as the
    object lives, inside the library's HMAC state; repr never shows it.
    """

    __slots__ = ("_base", "_head", "key_version")

    def __init__(
        self,
        key: bytes | HmacSha256,
        key_version: int,
        tenant_id: str,
        project_id: str,
        namespace: str,
    ) -> None:
        """Prepare to fingerprint.

        Args:
            key: The 32-byte key, or an :class:`HmacSha256` already keyed with it (the server
                caches those so no call pays the key schedule).
            key_version: The key's version (>= 1), written into every fingerprint.
            tenant_id: Bound into every message.
            project_id: Bound into every message.
            namespace: Caller-given domain separator.

        Raises:
            InvalidArgument: bad namespace.
            ValueError: key is not 32 bytes or version is not positive.
        """
        if isinstance(key, bytes):
            if len(key) != 32:
                raise ValueError("fingerprint key must be 32 bytes")
            key = HmacSha256(key)
        if key_version < 1:
            raise ValueError("key version must be >= 1")
        self.key_version = key_version
        self._head = f"{FORMAT_PREFIX}.{key_version}."
        self._base = key.with_prefix(
            _DOMAIN
            + _field(tenant_id.encode())
            + _field(project_id.encode())
            + _field(validate_namespace(namespace))
        )

    def __repr__(self) -> str:
        return f"Fingerprinter(key_version={self.key_version})"

    def mac(self, value: bytes) -> bytes:
        """The raw 32-byte HMAC of ``value``."""
        return self._base.digest(value)

    def fingerprint(self, value: bytes) -> str:
        """The ``fp1`` fingerprint of ``value``."""
        return self._head + b64url_encode(self._base.digest(value))

    def fingerprint_all(self, values: Iterable[bytes]) -> list[str]:
        """Fingerprints of ``values``, in order."""
        macs = self._base.digest_all(values)
        if not macs:
            return []
        # One base64 pass over every MAC: each 32-byte MAC plus a zero byte is 33 bytes, a
        # whole number of 3-byte groups, so it encodes to 44 characters whose first 43 are
        # exactly the unpadded encoding of the MAC alone.
        text = (
            binascii.b2a_base64(b"\0".join(macs) + b"\0", newline=False)
            .translate(_URLSAFE)
            .decode("ascii")
        )
        head = self._head
        return [head + text[i : i + 43] for i in range(0, len(text), 44)]

    def matches(self, value: bytes, parsed: ParsedFingerprint) -> bool:
        """Constant-time check that ``value`` has fingerprint ``parsed`` (same key version)."""
        if parsed.key_version != self.key_version:
            return False
        return constant_time_equal(self._base.digest(value), parsed.mac)


def parse_fingerprint(text: str, *, field: str = "fingerprint") -> ParsedFingerprint:
    """Parse ``fp1.<version>.<base64url>``.

    Raises:
        InvalidArgument: reason ``FINGERPRINT_MALFORMED`` (the input is never echoed).
    """
    match = _FINGERPRINT_RE.fullmatch(text) if len(text) <= 64 else None
    mac = b""
    if match is not None:
        try:
            mac = b64url_decode(match.group(2))
        except ValueError:
            match = None
    if match is None or len(mac) != _MAC_LENGTH:
        raise InvalidArgument(
            f"{field} must look like fp1.<version>.<43 base64url characters>",
            reason="FINGERPRINT_MALFORMED",
            metadata={"field": field},
            violations=[FieldViolation(field, "expected fp1.<version>.<base64url>")],
        )
    return ParsedFingerprint(int(match.group(1)), mac)
