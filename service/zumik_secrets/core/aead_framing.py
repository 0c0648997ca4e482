"""The versioned AEAD framing shared by keyring wrapping and sealed secrets (format 1).

Blob::

    0x01 || key version (u32 BE) || nonce (12) || ciphertext || tag (16)

AES-256-GCM under the key of that version. The 5-byte header is prepended to the caller's
associated data before authentication, so neither the format byte nor the version can be altered
without the open failing. Like a Fernet token, the format is written once here;
:mod:`zumik_secrets.core.keyring` (KEK wrapping) and :mod:`zumik_secrets.core.sealing` (sealed
secrets under data keys) add only what the key version means to them.

Errors: every failure to read or open a blob (too short, unknown format, wrong key, wrong
associated data, tampering) raises :class:`~zumik_secrets.core.errors.DecryptionFailed` and says
nothing more.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from zumik_secrets.core.errors import DecryptionFailed
from zumik_secrets.core.primitives import GCM_NONCE_SIZE, GCM_TAG_SIZE, Aead, random_bytes

FORMAT_BYTE = 0x01
HEADER_SIZE = 5
MIN_SIZE = HEADER_SIZE + GCM_NONCE_SIZE + GCM_TAG_SIZE
MAX_VERSION = 2**32 - 1

_HEADER = struct.Struct(">BI")


def seal(
    aead: Aead,
    version: int,
    plaintext: bytes,
    associated_data: bytes,
    *,
    rand: Callable[[int], bytes] = random_bytes,
) -> bytes:
    """Encrypt ``plaintext`` under ``aead``, naming ``version`` in the authenticated header.

    Args:
        aead: The key of ``version``.
        version: Key version written in the header (callers check their own range).
        plaintext: What to encrypt.
        associated_data: The caller's binding (the header is prepended to it).
        rand: Nonce source (tests inject a fixed one for vectors).

    Returns:
        ``0x01 || version (u32 BE) || nonce || ciphertext || tag``.

    Raises:
        struct.error: ``version`` does not fit in a u32.
    """
    header = _HEADER.pack(FORMAT_BYTE, version)
    nonce = rand(GCM_NONCE_SIZE)
    return header + nonce + aead.encrypt(nonce, plaintext, header + associated_data)


def version(blob: bytes) -> int:
    """The key version named in a blob's header (decides which key opens it; may be 0).

    Raises:
        DecryptionFailed: The blob is too short or not format 0x01.
    """
    if len(blob) < MIN_SIZE:
        raise DecryptionFailed()
    fmt, found = _HEADER.unpack_from(blob)
    if fmt != FORMAT_BYTE:
        raise DecryptionFailed()
    return int(found)


def open_blob(aead: Aead, blob: bytes, associated_data: bytes) -> bytes:
    """Authenticate and decrypt a blob made by :func:`seal` (``aead`` is its version's key).

    Raises:
        DecryptionFailed: On any failure.
    """
    version(blob)
    nonce = blob[HEADER_SIZE : HEADER_SIZE + GCM_NONCE_SIZE]
    return aead.decrypt(
        nonce, blob[HEADER_SIZE + GCM_NONCE_SIZE :], blob[:HEADER_SIZE] + associated_data
    )
