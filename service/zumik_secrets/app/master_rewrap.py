"""Master-key (KEK) rotation: rewrap every keyring-wrapped key under the keyring's primary.

After ``zumik-secrets keygen --add-version`` has been rolled out to every replica, this rewraps
the data keys and the signing keys' private halves that an older keyring version wrapped. Nothing
sealed is re-encrypted: the data keys themselves do not change, only their wrapping. Each row is
swapped with a compare-and-swap on its old blob, so running it twice, or while servers run, is
safe. Once it reports nothing left, the old version can be retired (``keygen --retire``).

Data keys wrapped by a tenant's customer key are not touched: that key is the tenant's to rotate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from zumik_secrets.app.key_wrappers import KIND_KEYRING
from zumik_secrets.app.signing_keys import signing_key_aad
from zumik_secrets.core.keyring import MasterKeyring, blob_version
from zumik_secrets.core.sealing import data_key_aad
from zumik_secrets.storage.ports import DataKeyId, Store
from zumik_secrets.storage.records import SIGNING_KEY_PURPOSES, DataKeyRecord


@dataclass(frozen=True, slots=True)
class RewrapReport:
    """What a KEK rewrap did.

    Attributes:
        data_keys_rewrapped: Data-key versions moved to the primary keyring version.
        signing_keys_rewrapped: Signing keys moved to the primary keyring version.
        already_current: Keys already under the primary (left alone).
        customer_wrapped: Data keys wrapped by a tenant's own key (left alone).
        raced: Rows that changed while being rewrapped (run again to pick them up).
    """

    data_keys_rewrapped: int
    signing_keys_rewrapped: int
    already_current: int
    customer_wrapped: int
    raced: int


def _data_keys(store: Store, batch: int) -> Iterator[DataKeyRecord]:
    """Every data key version, read ``batch`` at a time in key order."""
    after: DataKeyId | None = None
    while True:
        page = store.data_keys.list_wrapped(after=after, limit=batch)
        yield from page
        if len(page) < batch:
            return
        last = page[-1]
        after = (last.tenant_id, last.project_id, last.purpose, last.version)


def rewrap_under_primary(store: Store, keyring: MasterKeyring, batch: int = 500) -> RewrapReport:
    """Rewrap every keyring-wrapped data key and signing key under ``keyring.primary``.

    Raises:
        DecryptionFailed: a key does not unwrap with this keyring (a version is missing).
        Unavailable: storage is down.
    """
    data_done = signing_done = current = customer = raced = 0
    for rec in _data_keys(store, batch):
        if rec.wrapped_key is None:
            continue
        if rec.wrapped_by != KIND_KEYRING:
            customer += 1
            continue
        if not keyring.needs_rewrap(rec.wrapped_key):
            current += 1
            continue
        aad = data_key_aad(rec.tenant_id, rec.project_id, rec.purpose, rec.version)
        new = keyring.rewrap(rec.wrapped_key, aad)
        key = (rec.tenant_id, rec.project_id, rec.purpose, rec.version)
        if store.data_keys.replace_wrapped(key, rec.wrapped_key, new, KIND_KEYRING):
            data_done += 1
        else:
            raced += 1
    for purpose in SIGNING_KEY_PURPOSES:
        for sk in store.signing_keys.list(purpose):
            if not keyring.needs_rewrap(sk.wrapped_private_key):
                current += 1
                continue
            new = keyring.rewrap(sk.wrapped_private_key, signing_key_aad(sk.purpose, sk.kid))
            if store.signing_keys.replace_wrapped(
                sk.kid, sk.wrapped_private_key, new, blob_version(new)
            ):
                signing_done += 1
            else:
                raced += 1
    return RewrapReport(data_done, signing_done, current, customer, raced)


@dataclass(frozen=True, slots=True)
class VersionUsage:
    """What the store still holds wrapped under one master-keyring version.

    Attributes:
        data_keys: Keyring-wrapped data-key versions (seal and fingerprint).
        signing_keys: Claim and audit-checkpoint signing keys.
        customer_key_tokens: Tenants whose customer-key access token it wraps.
    """

    data_keys: int
    signing_keys: int
    customer_key_tokens: int

    @property
    def total(self) -> int:
        """Everything that would become unreadable if the version were dropped."""
        return self.data_keys + self.signing_keys + self.customer_key_tokens


def usage_of_version(store: Store, version: int, batch: int = 500) -> VersionUsage:
    """Count what is still wrapped under keyring ``version`` (reads only).

    Raises:
        DecryptionFailed: A stored blob is malformed.
        Unavailable: storage is down.
    """
    signing = tokens = 0
    data = sum(
        1
        for rec in _data_keys(store, batch)
        if rec.wrapped_key is not None
        and rec.wrapped_by == KIND_KEYRING
        and blob_version(rec.wrapped_key) == version
    )
    for purpose in SIGNING_KEY_PURPOSES:
        for sk in store.signing_keys.list(purpose):
            signing += blob_version(sk.wrapped_private_key) == version
    tokens = sum(
        1 for _, blob in store.customer_keys.wrapped_tokens() if blob_version(blob) == version
    )
    return VersionUsage(data, signing, tokens)
