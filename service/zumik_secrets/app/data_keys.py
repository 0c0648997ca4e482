"""Data keys: per-(tenant, project, purpose) AES-256 keys, versioned, stored only wrapped.

Used by sealing (purpose ``seal``, as :class:`Aead` keys) and fingerprinting (purpose
``fingerprint``, as keyed :class:`HmacSha256` states: :meth:`DataKeys.primary_mac` and
:meth:`DataKeys.mac_key`).

- **First use** creates version 1: the key is generated, wrapped, and inserted only if the triple
  has no key yet (a unique index allows one primary); the caller then re-reads the primary, so
  replicas racing on first use all end up with the winner's key.
- **Wrapping**: by the tenant's customer key when it configured one, else the master keyring,
  with associated data naming tenant, project, purpose and version
  (:func:`~zumik_secrets.core.sealing.data_key_aad`).
- **Cache**: unwrapped keys (as :class:`~zumik_secrets.core.primitives.Aead` or
  :class:`~zumik_secrets.core.primitives.HmacSha256` objects, never raw bytes) and each triple's
  primary version sit in bounded LRU caches with a TTL. A hit touches
  neither the database nor the wrapper. Rotations and destructions made by any replica reach every
  replica through the change feed (kind ``data_key``, entity ``tenant/project/purpose``), which
  drops the triple's entries; the TTL bounds how long a customer-key revocation takes to bite.
- **Misses** are single-flighted per key (one lock per key, made on demand: never a stripe
  shared with other tenants, since the miss may wait on a customer's key server), so a burst of
  calls after an expiry costs one unwrap (one KMS round trip for customer keys), not one per
  call. A waiter waits no longer than its caller's deadline, and a tenant with a customer key has
  at most ``ZUMIK_CUSTOMER_KEY_CONCURRENCY`` calls loading or waiting at once
  (:meth:`CustomerKeys.gate`). Rotation wraps the new key before its transaction, so no network
  call runs under the database's write lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from zumik_secrets.app.customer_keys import CustomerKeys
from zumik_secrets.app.key_wrappers import KIND_KEYRING
from zumik_secrets.app.outbound_limits import KeyedLocks
from zumik_secrets.app.ttl_cache import TtlLru
from zumik_secrets.core import primitives
from zumik_secrets.core.errors import DecryptionFailed, FailedPrecondition
from zumik_secrets.core.primitives import AES_KEY_SIZE, Aead, HmacSha256
from zumik_secrets.core.sealing import data_key_aad
from zumik_secrets.storage import outbox
from zumik_secrets.storage.ports import DataKeyStore
from zumik_secrets.storage.records import ChangeRecord, DataKeyRecord

REASON_DATA_KEY_DESTROYED = "DATA_KEY_DESTROYED"
DEFAULT_CACHE_ENTRIES = 10_000
DEFAULT_CACHE_TTL = 300.0
_ROTATE_ATTEMPTS = 3

Triple = tuple[str, str, str]
VersionKey = tuple[str, str, str, int]


def _now() -> datetime:
    return datetime.now(UTC)


def data_key_destroyed(version: int) -> FailedPrecondition:
    """The answer for data sealed under a crypto-shredded version."""
    return FailedPrecondition(
        f"data-key version {version} that protected this data was destroyed "
        "(crypto-shredded); it can never be recovered",
        reason=REASON_DATA_KEY_DESTROYED,
        metadata={"data_key_version": str(version)},
    )


class _VersionMoved(Exception):
    """A concurrent rotation took the version a pre-wrapped key was made for."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


@dataclass(frozen=True, slots=True)
class PrimaryKey:
    """The version new data is protected with, and its key."""

    version: int
    aead: Aead


class DataKeys:
    """Data-key lifecycle and the cached unwrapped keys."""

    def __init__(
        self,
        store: DataKeyStore,
        customer_keys: CustomerKeys,
        *,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the service.

        Args:
            store: Where wrapped keys live.
            customer_keys: Chooses the wrapper per tenant and per stored key.
            cache_entries: Most unwrapped keys (and, separately, primary versions) kept.
            cache_ttl: Seconds an unwrapped key or primary version is trusted without a reload.
            clock: Current time.
        """
        self._store = store
        self._customer_keys = customer_keys
        self._clock = clock
        self._keys: TtlLru[VersionKey, Aead] = TtlLru(cache_entries, cache_ttl)
        self._primary: TtlLru[Triple, int] = TtlLru(cache_entries, cache_ttl)
        self._macs: TtlLru[VersionKey, HmacSha256] = TtlLru(cache_entries, cache_ttl)
        self._locks = KeyedLocks()
        self._forget_listeners: list[Callable[[Triple], None]] = []

    @property
    def cache(self) -> TtlLru[VersionKey, Aead]:
        """The unwrapped-key cache (size and TTL are reported by the benchmark)."""
        return self._keys

    # -- the hot path ----------------------------------------------------------------------------

    def primary(self, tenant_id: str, project_id: str, purpose: str) -> PrimaryKey:
        """The primary version and key, creating version 1 on first use.

        Raises:
            Unavailable: storage or the customer's KMS is down.
            FailedPrecondition: ``CUSTOMER_KEY_UNAVAILABLE``.
            DecryptionFailed: the stored key does not unwrap.
        """
        version = self._primary_version((tenant_id, project_id, purpose), self._remember)
        return PrimaryKey(version, self.key(tenant_id, project_id, purpose, version))

    def key(self, tenant_id: str, project_id: str, purpose: str, version: int) -> Aead:
        """The key of one version.

        Raises:
            FailedPrecondition: ``DATA_KEY_DESTROYED`` (crypto-shredded) or
                ``CUSTOMER_KEY_UNAVAILABLE``.
            DecryptionFailed: no such version, or it does not unwrap for this triple.
            Unavailable: storage or the customer's KMS is down.
        """
        vkey = (tenant_id, project_id, purpose, version)
        aead = self._keys.get(vkey)
        if aead is not None:
            return aead
        with self._customer_keys.gate(tenant_id), self._locks.hold(vkey):
            aead = self._keys.get(vkey)
            if aead is not None:
                return aead
            rec = self._store.get(*vkey)
            if rec is None:
                raise DecryptionFailed()
            return self._remember(rec)

    def primary_mac(self, tenant_id: str, project_id: str, purpose: str) -> tuple[int, HmacSha256]:
        """The primary version and its key as a keyed HMAC state, creating version 1 on first
        use (fingerprint keys). A warm call touches neither the database nor the wrapper.

        Raises:
            Unavailable: storage or the customer's KMS is down.
            FailedPrecondition: ``CUSTOMER_KEY_UNAVAILABLE``.
            DecryptionFailed: the stored key does not unwrap.
        """
        version = self._primary_version((tenant_id, project_id, purpose), self._remember_mac)
        mac = self.mac_key(tenant_id, project_id, purpose, version)
        if mac is None:  # the primary row cannot vanish; storage is broken
            raise DecryptionFailed()
        return version, mac

    def mac_key(
        self, tenant_id: str, project_id: str, purpose: str, version: int
    ) -> HmacSha256 | None:
        """The key of one version as a keyed HMAC state, or None if the version never existed.

        Raises:
            FailedPrecondition: ``DATA_KEY_DESTROYED`` (crypto-shredded) or
                ``CUSTOMER_KEY_UNAVAILABLE``.
            DecryptionFailed: it does not unwrap for this triple.
            Unavailable: storage or the customer's KMS is down.
        """
        vkey = (tenant_id, project_id, purpose, version)
        mac = self._macs.get(vkey)
        if mac is not None:
            return mac
        with self._customer_keys.gate(tenant_id), self._locks.hold(vkey):
            mac = self._macs.get(vkey)
            if mac is not None:
                return mac
            rec = self._store.get(*vkey)
            if rec is None:
                return None
            return self._remember_mac(rec)

    def _unwrap(self, rec: DataKeyRecord) -> bytes:
        if rec.state == "destroyed" or rec.wrapped_key is None:
            raise data_key_destroyed(rec.version)
        wrapper = self._customer_keys.wrapper_named(rec.tenant_id, rec.wrapped_by)
        raw = wrapper.unwrap(
            rec.wrapped_key, data_key_aad(rec.tenant_id, rec.project_id, rec.purpose, rec.version)
        )
        if len(raw) != AES_KEY_SIZE:
            raise DecryptionFailed()
        return raw

    def _remember_mac(self, rec: DataKeyRecord) -> HmacSha256:
        raw = self._unwrap(rec)
        mac = HmacSha256(raw)
        del raw
        self._macs.put((rec.tenant_id, rec.project_id, rec.purpose, rec.version), mac)
        return mac

    def _remember(self, rec: DataKeyRecord) -> Aead:
        raw = self._unwrap(rec)
        aead = Aead(raw)
        del raw
        self._keys.put((rec.tenant_id, rec.project_id, rec.purpose, rec.version), aead)
        return aead

    def _new_wrapped(
        self, tenant_id: str, project_id: str, purpose: str, version: int
    ) -> tuple[bytes, str]:
        wrapper = self._customer_keys.wrapper_for_new_keys(tenant_id)
        raw = primitives.random_bytes(AES_KEY_SIZE)
        wrapped = wrapper.wrap(raw, data_key_aad(tenant_id, project_id, purpose, version))
        del raw
        return wrapped, wrapper.kind

    def _primary_version(self, triple: Triple, remember: Callable[[DataKeyRecord], object]) -> int:
        """The primary version of ``triple`` (cached; version 1 created on first use), its key
        handed to ``remember`` when this call read or created it."""
        version = self._primary.get(triple)
        if version is None:
            with self._customer_keys.gate(triple[0]), self._locks.hold(triple):
                version = self._primary.get(triple)
                if version is None:
                    rec = self._store.primary(*triple) or self._create_first(*triple)
                    version = rec.version
                    self._primary.put(triple, version)
                    if rec.wrapped_key is not None:
                        remember(rec)
        return version

    def _create_first(self, tenant_id: str, project_id: str, purpose: str) -> DataKeyRecord:
        wrapped, kind = self._new_wrapped(tenant_id, project_id, purpose, 1)
        self._store.insert_first(
            DataKeyRecord(
                tenant_id=tenant_id,
                project_id=project_id,
                purpose=purpose,
                version=1,
                state="primary",
                wrapped_key=wrapped,
                wrapped_by=kind,
                created_at=self._clock(),
                destroyed_at=None,
            )
        )
        rec = self._store.primary(tenant_id, project_id, purpose)
        if rec is None:  # a rotation or purge cannot remove the only primary; storage is broken
            raise RuntimeError("data key vanished right after it was created")
        return rec

    # -- lifecycle -------------------------------------------------------------------------------

    def existing_primary(self, tenant_id: str, project_id: str, purpose: str) -> int | None:
        """The primary version without creating one (None if the triple has no key).

        Raises:
            Unavailable: storage is down.
        """
        rec = self._store.primary(tenant_id, project_id, purpose)
        return None if rec is None else rec.version

    def rotate(self, tenant_id: str, project_id: str, purpose: str) -> DataKeyRecord:
        """Make a new version primary (the old one stays enabled and keeps opening).

        Raises:
            Unavailable, FailedPrecondition: as the wrapper or storage raise them.
        """
        if self._customer_keys.wrapper_for_new_keys(tenant_id).kind == KIND_KEYRING:

            def make_wrapped(version: int) -> tuple[bytes, str]:
                outbox.annotate("version", str(version))  # the rotation's audit event, if any
                return self._new_wrapped(tenant_id, project_id, purpose, version)

            rec = self._store.rotate(tenant_id, project_id, purpose, make_wrapped, self._clock())
        else:
            rec = self._rotate_customer(tenant_id, project_id, purpose)
        self._forget((tenant_id, project_id, purpose))
        return rec

    def _rotate_customer(self, tenant_id: str, project_id: str, purpose: str) -> DataKeyRecord:
        """Rotate with the new key wrapped by the customer's key server *before* the store's
        transaction (which holds the database's write lock): the version is read first and the
        transaction checks it; a concurrent rotation makes it retry."""
        expected = (self.existing_primary(tenant_id, project_id, purpose) or 0) + 1
        for _ in range(_ROTATE_ATTEMPTS):
            with self._customer_keys.gate(tenant_id):
                made = self._new_wrapped(tenant_id, project_id, purpose, expected)

            def prepared(
                version: int, made: tuple[bytes, str] = made, want: int = expected
            ) -> tuple[bytes, str]:
                if version != want:
                    raise _VersionMoved(version)
                outbox.annotate("version", str(version))  # the rotation's audit event, if any
                return made

            try:
                return self._store.rotate(tenant_id, project_id, purpose, prepared, self._clock())
            except _VersionMoved as moved:
                expected = moved.version
        raise FailedPrecondition(
            "data keys of this triple changed during the rotation; retry",
            reason="DATA_KEYS_CHANGED",
        )

    def destroy(
        self, tenant_id: str, project_id: str, purpose: str, version: int
    ) -> DataKeyRecord | None:
        """Crypto-shred one non-primary version (idempotent).

        Raises:
            FailedPrecondition: ``DATA_KEY_PRIMARY``.
            Unavailable: storage is down.
        """
        rec = self._store.destroy(tenant_id, project_id, purpose, version, self._clock())
        self._forget((tenant_id, project_id, purpose))
        return rec

    def versions(self, tenant_id: str, project_id: str, purpose: str) -> list[DataKeyRecord]:
        """Every version of the triple, oldest first (there are few)."""
        out: list[DataKeyRecord] = []
        after = 0
        while True:
            page = self._store.list(
                tenant_id, project_id, purpose, page_size=1000, after_version=after
            )
            out.extend(page)
            if len(page) < 1000:
                return out
            after = page[-1].version

    def list_page(
        self, tenant_id: str, project_id: str, purpose: str, *, page_size: int, after_version: int
    ) -> list[DataKeyRecord]:
        """One page of versions."""
        return self._store.list(
            tenant_id, project_id, purpose, page_size=page_size, after_version=after_version
        )

    def on_forget(self, listener: Callable[[Triple], None]) -> None:
        """Call ``listener(triple)`` whenever a triple's cached keys are dropped: after a local
        rotation or destruction (by any service) and on every change-feed ``data_key`` record, so
        caches built over these keys stay exactly as fresh as this one."""
        self._forget_listeners.append(listener)

    def _forget(self, triple: Triple) -> None:
        self._primary.pop(triple)
        self._keys.pop_where(lambda k: k[:3] == triple)
        self._macs.pop_where(lambda k: k[:3] == triple)
        for listener in self._forget_listeners:
            listener(triple)

    def on_change(self, record: ChangeRecord) -> None:
        """Change-feed subscriber (``data_key``): drop the triple's cached entries."""
        parts = record.entity_id.split("/")
        if len(parts) == 3:
            self._forget((parts[0], parts[1], parts[2]))
