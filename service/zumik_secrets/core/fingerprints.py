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

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from zumik_secrets.core.encoding import b64url_decode, b64url_encode
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.primitives import constant_time_equal, hmac_sha256

FORMAT_PREFIX = "fp1"
_DOMAIN = b"zumik-fp-v1"
_MAC_LENGTH = 32
NAMESPACE_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_FINGERPRINT_RE = re.compile(r"fp1\.([1-9][0-9]{0,9})\.([A-Za-z0-9_-]{43})")
MAX_VALUE_BYTES = 64 * 1024
MAX_BATCH = 1000


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

    Built once per call (cheap), it precomputes the message prefix so each value costs one HMAC.
    The key is held only as long as the object lives; repr never shows it.
    """

    __slots__ = ("_key", "_prefix", "key_version")

    def __init__(
        self, key: bytes, key_version: int, tenant_id: str, project_id: str, namespace: str
    ) -> None:
        """Prepare to fingerprint.

        Raises:
            InvalidArgument: bad namespace.
            ValueError: key is not 32 bytes or version is not positive.
        """
        if len(key) != 32:
            raise ValueError("fingerprint key must be 32 bytes")
        if key_version < 1:
            raise ValueError("key version must be >= 1")
        self._key = key
        self.key_version = key_version
        self._prefix = (
            _DOMAIN
            + _field(tenant_id.encode())
            + _field(project_id.encode())
            + _field(validate_namespace(namespace))
        )

    def __repr__(self) -> str:
        return f"Fingerprinter(key_version={self.key_version})"

    def mac(self, value: bytes) -> bytes:
        """The raw 32-byte HMAC of ``value``."""
        return hmac_sha256(self._key, self._prefix + value)

    def fingerprint(self, value: bytes) -> str:
        """The ``fp1`` fingerprint of ``value``."""
        return f"{FORMAT_PREFIX}.{self.key_version}.{b64url_encode(self.mac(value))}"

    def fingerprint_all(self, values: Iterable[bytes]) -> list[str]:
        """Fingerprints of ``values``, in order."""
        head = f"{FORMAT_PREFIX}.{self.key_version}."
        key, prefix = self._key, self._prefix
        return [head + b64url_encode(hmac_sha256(key, prefix + v)) for v in values]

    def matches(self, value: bytes, parsed: ParsedFingerprint) -> bool:
        """Constant-time check that ``value`` has fingerprint ``parsed`` (same key version)."""
        if parsed.key_version != self.key_version:
            return False
        return constant_time_equal(self.mac(value), parsed.mac)


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
