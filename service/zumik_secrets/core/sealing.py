"""Sealed-secret format and the associated data that binds ciphertexts to where they belong.

Sealed blob (format 1)::

    0x01 || dek_version (u32 BE) || nonce (12) || ciphertext || tag (16)

AES-256-GCM under the (tenant, project) ``seal`` data key of version ``dek_version``: the framing
of :mod:`zumik_secrets.core.aead_framing` (shared with the keyring), whose 5-byte header is
authenticated with the associated data, so the version cannot be altered without the open failing.

Associated data of a sealed secret (:func:`secret_aad`) names the tenant, project, secret handle,
purpose and the secret's version, so a ciphertext copied or moved to another row, project or
tenant, or an older version put back, fails to open. Associated data of a wrapped data key
(:func:`data_key_aad`) names tenant, project, purpose and data-key version the same way.

Both encodings are a fixed label followed by NUL-separated fields; none of the fields can hold a
NUL (their grammars are in :mod:`zumik_secrets.core.names`), so the encoding is unambiguous.

Errors: every open failure (short or malformed blob, unknown format, wrong key, wrong associated
data, tampering) raises :class:`~zumik_secrets.core.errors.DecryptionFailed` and says nothing more.
"""

from __future__ import annotations

from collections.abc import Callable

from zumik_secrets.core import aead_framing
from zumik_secrets.core.errors import DecryptionFailed
from zumik_secrets.core.primitives import Aead, random_bytes

SEALED_FORMAT_BYTE = aead_framing.FORMAT_BYTE
HEADER_SIZE = aead_framing.HEADER_SIZE
MIN_SEALED_SIZE = aead_framing.MIN_SIZE
MAX_DATA_KEY_VERSION = aead_framing.MAX_VERSION

PURPOSE_SEAL = "seal"
PURPOSE_FINGERPRINT = "fingerprint"
PURPOSES = (PURPOSE_SEAL, PURPOSE_FINGERPRINT)

_SECRET_LABEL = b"zumik-sealed-secret-v1"
_DATA_KEY_LABEL = b"zumik-data-key-v1"


def _fields(label: bytes, *parts: str) -> bytes:
    for part in parts:
        if "\x00" in part:
            raise ValueError("associated-data fields cannot contain NUL")
    return b"\x00".join([label, *(p.encode("utf-8") for p in parts)])


def secret_aad(
    tenant_id: str, project_id: str, secret_id: str, secret_version: int, purpose: str = "seal"
) -> bytes:
    """Associated data binding a sealed secret to its tenant, project, handle, purpose, version.

    Raises:
        ValueError: A field holds a NUL (never the case for validated identifiers).
    """
    return _fields(
        _SECRET_LABEL, tenant_id, project_id, secret_id, purpose, str(int(secret_version))
    )


def data_key_aad(tenant_id: str, project_id: str, purpose: str, version: int) -> bytes:
    """Associated data binding a wrapped data key to its tenant, project, purpose and version.

    Raises:
        ValueError: A field holds a NUL (never the case for validated identifiers).
    """
    return _fields(_DATA_KEY_LABEL, tenant_id, project_id, purpose, str(int(version)))


def seal(
    aead: Aead,
    dek_version: int,
    plaintext: bytes,
    associated_data: bytes,
    *,
    rand: Callable[[int], bytes] = random_bytes,
) -> bytes:
    """Encrypt ``plaintext`` under a data key of version ``dek_version``.

    Args:
        aead: The data key.
        dek_version: Its version, written in the header (1 to 2**32-1).
        plaintext: What to seal.
        associated_data: From :func:`secret_aad`.
        rand: Nonce source (tests inject a fixed one for vectors).

    Returns:
        ``0x01 || dek_version (u32 BE) || nonce || ciphertext || tag``.

    Raises:
        ValueError: ``dek_version`` is out of range or the nonce source misbehaves.
    """
    if not 1 <= dek_version <= MAX_DATA_KEY_VERSION:
        raise ValueError("data-key version out of range")
    return aead_framing.seal(aead, dek_version, plaintext, associated_data, rand=rand)


def sealed_version(blob: bytes) -> int:
    """The data-key version named in a sealed blob's header (decides which key opens it).

    Raises:
        DecryptionFailed: The blob is too short or not format 0x01.
    """
    version = aead_framing.version(blob)
    if version == 0:
        raise DecryptionFailed()
    return version


def open_sealed(aead: Aead, blob: bytes, associated_data: bytes) -> bytes:
    """Authenticate and decrypt a blob made by :func:`seal`.

    Raises:
        DecryptionFailed: On any failure.
    """
    sealed_version(blob)
    return aead_framing.open_blob(aead, blob, associated_data)
