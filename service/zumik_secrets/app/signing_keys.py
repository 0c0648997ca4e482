"""Lifecycle of the Ed25519 keys that sign tenant claims (and, later, audit checkpoints).

Private halves are stored only wrapped by the master keyring, with associated data binding the
key's purpose and kid, so a wrapped key copied to another row does not unwrap. On first start
a key is generated (serialised in the store, so replicas starting together on an empty database
agree on one). Rotation makes a new key active and moves the previous one to ``retiring``
until every claim it signed has expired (claim lifetime plus leeway); after that it is retired
and no longer verifies anything.

Other replicas learn about rotations through the store's change feed (:meth:`refresh`), and an
unknown ``kid`` triggers at most one reload per second, so a claim signed by a key another
replica just created verifies everywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from zumik_secrets.core import primitives
from zumik_secrets.core.claims import ClaimSigner
from zumik_secrets.core.errors import AlreadyExists
from zumik_secrets.core.handles import new_handle
from zumik_secrets.core.keyring import MasterKeyring, blob_version
from zumik_secrets.storage.ports import SigningKeyStore
from zumik_secrets.storage.records import SigningKeyRecord

ISSUER = "zumik-secrets"
_LEEWAY = timedelta(seconds=30)


def signing_key_aad(purpose: str, kid: str) -> bytes:
    """Associated data binding a wrapped signing key to its purpose and kid."""
    return f"zumik/signing-key/v1|{purpose}|{kid}".encode()


def _now() -> datetime:
    return datetime.now(UTC)


class SigningKeys:
    """The signing keys of one purpose, as this process knows them.

    Thread-safe: the key table is replaced wholesale under a lock and read without one.
    """

    def __init__(
        self,
        store: SigningKeyStore,
        keyring: MasterKeyring,
        *,
        purpose: str,
        audience: str,
        max_claim_ttl: int = 300,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the manager; call :meth:`load` before use.

        Args:
            store: Where the wrapped keys live.
            keyring: Unwraps and wraps private halves.
            purpose: ``claims`` or ``audit``.
            audience: ``aud`` of the claims minted.
            max_claim_ttl: Longest claim lifetime, which bounds the retiring overlap.
            clock: Current time (tests inject their own).
        """
        self._store = store
        self._keyring = keyring
        self._purpose = purpose
        self._audience = audience
        self._overlap = timedelta(seconds=max_claim_ttl) + _LEEWAY
        self._clock = clock
        self._lock = threading.Lock()
        self._public: dict[str, bytes] = {}
        self._records: tuple[SigningKeyRecord, ...] = ()
        self._signer: ClaimSigner | None = None
        self._last_miss_reload = 0.0
        self.on_key_removed: Callable[[str], None] = lambda kid: None

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the keys, creating the first active key if there is none.

        Raises:
            Unavailable: storage is down.
            DecryptionFailed: the active key does not unwrap with this keyring.
        """
        self._reload()
        if self._signer is None:
            # Serialised in the store: replicas starting together on an empty database agree
            # on one first key (each signing with its own left the others' claims unknown).
            self._create_key(first=True)
            self._reload()

    def refresh(self) -> None:
        """Re-read the keys (after a change-feed notice, or periodically)."""
        self._reload()

    def _reload(self) -> None:
        now = self._clock()
        records = self._store.list(self._purpose)
        for rec in records:
            if rec.state == "retiring" and rec.retire_after is not None and rec.retire_after <= now:
                self._store.set_state(rec.kid, "retired", rec.retire_after)
        records = self._store.list(self._purpose)
        public = {
            rec.kid: rec.public_key
            for rec in records
            if rec.state == "active"
            or (rec.state == "retiring" and (rec.retire_after is None or rec.retire_after > now))
        }
        active = [rec for rec in records if rec.state == "active"]
        signer: ClaimSigner | None = None
        current = self._signer
        if active and current is not None and current.kid == active[-1].kid:
            signer = current  # unchanged: no unwrap (reloads follow unknown kids, at most 1/s)
        elif active:
            newest = active[-1]
            private = self._keyring.unwrap(
                newest.wrapped_private_key, signing_key_aad(self._purpose, newest.kid)
            )
            signer = ClaimSigner(newest.kid, private, ISSUER, self._audience)
        with self._lock:
            removed = set(self._public) - set(public)
            self._public = public
            self._records = tuple(records)
            if signer is not None:
                self._signer = signer
        for kid in removed:
            self.on_key_removed(kid)

    def _create_key(self, *, first: bool = False) -> SigningKeyRecord:
        private = primitives.generate_ed25519()
        kid = new_handle("sk")
        wrapped = self._keyring.wrap(private, signing_key_aad(self._purpose, kid))
        rec = SigningKeyRecord(
            kid=kid,
            purpose=self._purpose,
            public_key=primitives.ed25519_public(private),
            wrapped_private_key=wrapped,
            keyring_version=blob_version(wrapped),
            state="active",
            created_at=self._clock(),
            retire_after=None,
        )
        try:
            if first:
                self._store.add_first(rec)  # False: another replica's key is active; reload
            else:
                self._store.add(rec)
        except AlreadyExists:  # a 128-bit collision: practically impossible; try once more
            return self._create_key(first=first)
        return rec

    # -- use ------------------------------------------------------------------------------------

    @property
    def signer(self) -> ClaimSigner:
        """The signer of the newest active key."""
        signer = self._signer
        if signer is None:
            raise RuntimeError("signing keys not loaded")
        return signer

    def public_key(self, kid: str) -> bytes | None:
        """Public key of a kid that verifies now; reloads (at most once a second) on a miss."""
        key = self._public.get(kid)
        if key is None and time.monotonic() - self._last_miss_reload > 1.0:
            # Only reloads caused by an unknown kid are limited (a caller inventing kids costs
            # at most one read a second); a change-feed refresh does not delay the next one.
            self._last_miss_reload = time.monotonic()
            self._reload()
            key = self._public.get(kid)
        return key

    def records(self) -> tuple[SigningKeyRecord, ...]:
        """Every key of the purpose, oldest first, as last loaded."""
        return self._records

    def rotate(self) -> tuple[SigningKeyRecord, SigningKeyRecord | None]:
        """Create a new active key and move the previous active ones to ``retiring``.

        Returns:
            ``(new, previous)``; previous is None when there was no active key.
        """
        previous = [rec for rec in self._store.list(self._purpose) if rec.state == "active"]
        new = self._create_key()
        retire_after = self._clock() + self._overlap
        for rec in previous:
            self._store.set_state(rec.kid, "retiring", retire_after)
        self._reload()
        latest = {rec.kid: rec for rec in self._records}
        return latest.get(new.kid, new), (latest.get(previous[-1].kid) if previous else None)
