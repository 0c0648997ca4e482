"""The Ed25519 keys that sign audit checkpoints (signing keys of purpose ``audit``).

Same lifecycle and storage as the claim-signing keys (:class:`SigningKeys`: wrapped by the master
keyring, created on first start, rotated with overlap), plus what checkpoints need: a raw signer
(checkpoints sign bytes, not JWTs) and every public key ever used, whatever its state, because a
checkpoint signed years ago must still verify after its key was retired.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from zumik_secrets.app.signing_keys import SigningKeys, signing_key_aad
from zumik_secrets.core import primitives
from zumik_secrets.core.errors import DecryptionFailed
from zumik_secrets.core.keyring import MasterKeyring
from zumik_secrets.storage.ports import SigningKeyStore
from zumik_secrets.storage.records import SigningKeyRecord

PURPOSE = "audit"
AUDIENCE = "zumik-secrets/audit-checkpoints"


def _now() -> datetime:
    return datetime.now(UTC)


class CheckpointKeys(SigningKeys):
    """Audit checkpoint keys as this process knows them. Thread-safe."""

    def __init__(
        self,
        store: SigningKeyStore,
        keyring: MasterKeyring,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the manager; call :meth:`load` before use."""
        super().__init__(store, keyring, purpose=PURPOSE, audience=AUDIENCE, clock=clock)
        self._raw: tuple[str, primitives.Ed25519Signer] | None = None
        self._raw_lock = threading.Lock()
        self._genuine: dict[tuple[str, bytes, bytes], bool] = {}

    def checkpoint_signer(self) -> tuple[str, primitives.Ed25519Signer]:
        """``(kid, signer)`` of the newest active key.

        Raises:
            RuntimeError: the keys were not loaded.
            DecryptionFailed: the key does not unwrap with this keyring.
        """
        kid = self.signer.kid
        with self._raw_lock:
            cached = self._raw
            if cached is not None and cached[0] == kid:
                return cached
            rec = next(r for r in self.records() if r.kid == kid)
            private = self._keyring.unwrap(rec.wrapped_private_key, signing_key_aad(PURPOSE, kid))
            cached = (kid, primitives.Ed25519Signer(private))
            self._raw = cached
            return cached

    def verification_keys(self, *, refresh_for: frozenset[str] = frozenset()) -> dict[str, bytes]:
        """Public keys by kid, in every state (retired keys still verify old checkpoints).

        Args:
            refresh_for: kids the caller needs; if one is unknown the keys are re-read once
                (another replica may have created it).
        """
        keys = {rec.kid: rec.public_key for rec in self.trusted_records()}
        if refresh_for - keys.keys():
            self.refresh()
            keys = {rec.kid: rec.public_key for rec in self.trusted_records()}
        return keys

    def trusted_records(self) -> tuple[SigningKeyRecord, ...]:
        """The keys whose public half is provably ours: the wrapped private key unwraps under
        the master keyring (AAD binds purpose and kid) and derives the stored public key.

        A database writer cannot wrap a key without the keyring, so a row they insert (their
        own public key beside any blob) is not trusted: it neither verifies checkpoints here
        nor is published by ListCheckpointKeys.
        """
        out = []
        for rec in self.records():
            marker = (rec.kid, rec.public_key, rec.wrapped_private_key)
            genuine = self._genuine.get(marker)
            if genuine is None:
                try:
                    private = self._keyring.unwrap(
                        rec.wrapped_private_key, signing_key_aad(PURPOSE, rec.kid)
                    )
                    genuine = primitives.Ed25519Signer(private).public_raw == rec.public_key
                except (DecryptionFailed, ValueError):
                    genuine = False
                self._genuine[marker] = genuine
            if genuine:
                out.append(rec)
        return tuple(out)
