"""The master keyring: versioned 256-bit key-encryption keys (KEKs).

Serialized form (JSON text, e.g. a mounted Kubernetes Secret)::

    {"format": "zumik-keyring-v1", "primary": 2,
     "keys": [{"version": 1, "key": "<base64url of 32 bytes>", "state": "retired"},
              {"version": 2, "key": "...", "state": "active"}]}

The primary version (which must be active) wraps; every listed version unwraps. Retired
versions only unwrap and cannot become primary again.

Wrapped blob: ``0x01 || version (u32 BE) || 12-byte nonce || ciphertext || 16-byte tag``,
AES-256-GCM: the framing of :mod:`zumik_secrets.core.aead_framing` (shared with sealed secrets),
whose 5-byte header is authenticated with the caller's associated data, so the version cannot be
altered without detection.

Errors: malformed keyring text raises ``InvalidArgument`` (reason ``KEYRING_INVALID``) whose
message says what is wrong and never echoes key material; key-state changes that make no sense
raise ``FailedPrecondition`` (reason ``KEYRING_STATE``); any unwrap failure raises
``DecryptionFailed``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zumik_secrets.core import aead_framing, encoding
from zumik_secrets.core.errors import DecryptionFailed, FailedPrecondition, InvalidArgument
from zumik_secrets.core.primitives import AES_KEY_SIZE, Aead, random_bytes, sha256

FORMAT = "zumik-keyring-v1"
STATE_ACTIVE = "active"
STATE_RETIRED = "retired"
WRAP_FORMAT_BYTE = aead_framing.FORMAT_BYTE
HEADER_SIZE = aead_framing.HEADER_SIZE
MAX_VERSION = aead_framing.MAX_VERSION
MAX_TEXT_LENGTH = 1 << 20

REASON_INVALID = "KEYRING_INVALID"
REASON_STATE = "KEYRING_STATE"

_FINGERPRINT_LABEL = b"zumik-keyring-fingerprint-v1\x00"


def _invalid(problem: str) -> InvalidArgument:
    return InvalidArgument(f"keyring is invalid: {problem}", reason=REASON_INVALID)


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of the keyring. The key bytes are hidden from repr."""

    version: int
    key: bytes = field(repr=False)
    state: str

    @property
    def fingerprint(self) -> str:
        """A non-secret identifier for logs: 8 hex chars of a domain-separated SHA-256."""
        return sha256(_FINGERPRINT_LABEL + self.key)[:4].hex()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _invalid(f"duplicate field {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise _invalid(f"{name} is not allowed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class MasterKeyring:
    """An immutable set of versioned KEKs with one primary.

    Build it with :meth:`from_text` or :func:`generate_keyring`. Mutating operations
    (:meth:`add_version`, :meth:`promote`, :meth:`retire`) return new keyring *text* for the
    operator to store; they never change this object.
    """

    __slots__ = ("_aeads", "_keys", "_primary", "_rand")

    def __init__(
        self,
        keys: Mapping[int, KeyVersion],
        primary: int,
        *,
        rand: Callable[[int], bytes] = random_bytes,
    ) -> None:
        """Build from already-validated versions; prefer :meth:`from_text`.

        Raises:
            InvalidArgument: Reason ``KEYRING_INVALID`` if the primary is missing or retired.
        """
        if primary not in keys:
            raise _invalid("primary names a version that is not in keys")
        if keys[primary].state != STATE_ACTIVE:
            raise _invalid("primary version must be active")
        self._keys: dict[int, KeyVersion] = dict(sorted(keys.items()))
        self._primary = primary
        self._aeads: dict[int, Aead] = {v: Aead(k.key) for v, k in self._keys.items()}
        self._rand = rand

    @classmethod
    def from_text(cls, text: str, *, rand: Callable[[int], bytes] = random_bytes) -> MasterKeyring:
        """Parse and strictly validate keyring JSON.

        Args:
            text: The serialized keyring.
            rand: Source of nonces (tests inject a fixed one for vectors).

        Raises:
            InvalidArgument: Reason ``KEYRING_INVALID``, saying what is wrong.
        """
        if not isinstance(text, str) or len(text) > MAX_TEXT_LENGTH:
            raise _invalid("text must be a string of at most 1 MiB")
        try:
            doc = json.loads(
                text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
            )
        except json.JSONDecodeError as exc:
            # exc.msg is the parser's description ("Expecting value"), never the input.
            raise _invalid(f"not JSON ({exc.msg} at position {exc.pos})") from None
        except RecursionError:
            raise _invalid("JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise _invalid("top level must be an object")
        if set(doc) != {"format", "primary", "keys"}:
            raise _invalid("top level must have exactly the fields format, primary, keys")
        if doc["format"] != FORMAT:
            raise _invalid(f"format must be {FORMAT!r}")
        primary = doc["primary"]
        if not _is_int(primary):
            raise _invalid("primary must be an integer")
        entries = doc["keys"]
        if not isinstance(entries, list) or not entries:
            raise _invalid("keys must be a non-empty list")
        keys: dict[int, KeyVersion] = {}
        for i, entry in enumerate(entries):
            where = f"keys[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"version", "key", "state"}:
                raise _invalid(f"{where} must have exactly the fields version, key, state")
            version = entry["version"]
            if not _is_int(version) or not 1 <= version <= MAX_VERSION:
                raise _invalid(f"{where}.version must be an integer from 1 to {MAX_VERSION}")
            if version in keys:
                raise _invalid(f"{where}.version {version} appears twice")
            state = entry["state"]
            if state not in (STATE_ACTIVE, STATE_RETIRED):
                raise _invalid(f"{where}.state must be 'active' or 'retired'")
            raw_key = entry["key"]
            if not isinstance(raw_key, str):
                raise _invalid(f"{where}.key must be a base64url string")
            try:
                key = encoding.b64url_decode(raw_key)
            except ValueError:
                raise _invalid(f"{where}.key is not unpadded base64url") from None
            if len(key) != AES_KEY_SIZE:
                raise _invalid(f"{where}.key must decode to 32 bytes")
            keys[version] = KeyVersion(version, key, state)
        return cls(keys, primary, rand=rand)

    def to_text(self) -> str:
        """Serialize to keyring JSON (contains key material: store it as a secret)."""
        return _dump(self._keys.values(), self._primary)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k.version}:{k.state}:{k.fingerprint}" for k in self._keys.values())
        return f"MasterKeyring(primary={self._primary}, versions=[{parts}])"

    __str__ = __repr__

    @property
    def primary(self) -> int:
        """The version that wraps new data."""
        return self._primary

    @property
    def versions(self) -> tuple[KeyVersion, ...]:
        """All versions, in ascending order."""
        return tuple(self._keys.values())

    def fingerprint(self, version: int | None = None) -> str:
        """Non-secret identifier of a version (default: the primary), for logs.

        Raises:
            KeyError: If the version is not in the keyring.
        """
        return self._keys[self._primary if version is None else version].fingerprint

    def fingerprints(self) -> dict[int, str]:
        """Fingerprint of every version."""
        return {v: k.fingerprint for v, k in self._keys.items()}

    def add_version(self, *, make_primary: bool = True) -> str:
        """Return keyring text with a new random active version (max + 1).

        Args:
            make_primary: Whether the new version becomes primary at once. Pass False to roll
                the new key out to every replica first, then :meth:`promote` it.

        Raises:
            FailedPrecondition: Reason ``KEYRING_STATE`` if versions are exhausted.
        """
        new = max(self._keys) + 1
        if new > MAX_VERSION:
            raise FailedPrecondition("keyring versions exhausted", reason=REASON_STATE)
        keys = [*self._keys.values(), KeyVersion(new, random_bytes(AES_KEY_SIZE), STATE_ACTIVE)]
        return _dump(keys, new if make_primary else self._primary)

    def promote(self, version: int) -> str:
        """Return keyring text with ``version`` as primary.

        Raises:
            FailedPrecondition: Reason ``KEYRING_STATE`` if it is unknown or retired.
        """
        k = self._keys.get(version)
        if k is None or k.state != STATE_ACTIVE:
            raise FailedPrecondition(
                "only an active version in the keyring can become primary",
                reason=REASON_STATE,
                metadata={"version": str(version)},
            )
        return _dump(self._keys.values(), version)

    def retire(self, version: int) -> str:
        """Return keyring text with ``version`` retired (it will only unwrap).

        Raises:
            FailedPrecondition: Reason ``KEYRING_STATE`` if it is unknown or the primary.
        """
        if version not in self._keys or version == self._primary:
            raise FailedPrecondition(
                "only a non-primary version in the keyring can be retired",
                reason=REASON_STATE,
                metadata={"version": str(version)},
            )
        keys = [
            KeyVersion(k.version, k.key, STATE_RETIRED) if k.version == version else k
            for k in self._keys.values()
        ]
        return _dump(keys, self._primary)

    def drop(self, version: int) -> str:
        """Return keyring text without ``version`` (after a compromise or a completed rotation).

        Whatever that version wrapped can never be unwrapped again with the new text; the caller
        checks first that nothing stored is wrapped under it (``keygen --drop-version``).

        Raises:
            FailedPrecondition: Reason ``KEYRING_STATE`` unless the version is in the keyring
                and retired (the primary is never retired).
        """
        k = self._keys.get(version)
        if k is None or k.state != STATE_RETIRED:
            raise FailedPrecondition(
                "only a retired version in the keyring can be dropped (retire it first)",
                reason=REASON_STATE,
                metadata={"version": str(version)},
            )
        return _dump([k for k in self._keys.values() if k.version != version], self._primary)

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt under the primary version.

        Returns:
            ``0x01 || version (u32 BE) || nonce (12) || ciphertext || tag (16)``.
        """
        return aead_framing.seal(
            self._aeads[self._primary], self._primary, plaintext, associated_data, rand=self._rand
        )

    def unwrap(self, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a blob made by :meth:`wrap` with any version in the keyring.

        Raises:
            DecryptionFailed: On any failure: short or malformed blob, unknown version,
                wrong associated data, tampering.
        """
        version = blob_version(blob)
        aead = self._aeads.get(version)
        if aead is None:
            raise DecryptionFailed()
        return aead_framing.open_blob(aead, blob, associated_data)

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether a blob was wrapped by a version other than the primary (KEK rotation).

        Raises:
            DecryptionFailed: If the blob is malformed.
        """
        return blob_version(blob) != self._primary

    def rewrap(self, blob: bytes, associated_data: bytes) -> bytes:
        """Unwrap with its version and wrap again under the primary.

        Raises:
            DecryptionFailed: As :meth:`unwrap`.
        """
        return self.wrap(self.unwrap(blob, associated_data), associated_data)


def blob_version(blob: bytes) -> int:
    """Return the keyring version named in a wrapped blob's header.

    Raises:
        DecryptionFailed: If the blob is too short or not format 0x01.
    """
    return aead_framing.version(blob)


def _dump(keys: Iterable[KeyVersion], primary: int) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "primary": primary,
            "keys": [
                {"version": k.version, "key": encoding.b64url_encode(k.key), "state": k.state}
                for k in sorted(keys, key=lambda k: k.version)
            ],
        },
        indent=2,
    )


def generate_keyring() -> str:
    """Return the text of a new keyring with one random active version, 1, as primary."""
    return _dump([KeyVersion(1, random_bytes(AES_KEY_SIZE), STATE_ACTIVE)], 1)
