"""The ``KeyWrapper`` port: what wraps data keys, and the errors a wrapper may raise.

Two adapters: :class:`KeyringWrapper` (the service's master keyring) and, for tenants who bring
their own key, :class:`~zumik_secrets.app.openbao.OpenBaoTransit` (OpenBao/Vault Transit).
A wrapped blob is opaque to callers; ``kind`` is what the data-key row records in
``wrapped_by`` so the right wrapper is chosen to unwrap it.
"""

from __future__ import annotations

from typing import Protocol

from zumik_secrets.core.errors import FailedPrecondition, Unavailable
from zumik_secrets.core.keyring import MasterKeyring

KIND_KEYRING = "keyring"
KIND_CUSTOMER = "customer"

REASON_CUSTOMER_KEY_UNAVAILABLE = "CUSTOMER_KEY_UNAVAILABLE"
REASON_CUSTOMER_KEY_UNREACHABLE = "CUSTOMER_KEY_UNREACHABLE"


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys, binding each to associated data."""

    @property
    def kind(self) -> str:
        """``keyring`` or ``customer`` (stored with each wrapped key)."""
        ...

    def wrap(self, plaintext_key: bytes, associated_data: bytes, /) -> bytes:
        """Encrypt a data key.

        Raises:
            FailedPrecondition: Reason ``CUSTOMER_KEY_UNAVAILABLE``: the customer's key refused.
            Unavailable: Reason ``CUSTOMER_KEY_UNREACHABLE``: the customer's KMS did not answer.
        """
        ...

    def unwrap(self, blob: bytes, associated_data: bytes, /) -> bytes:
        """Decrypt a data key wrapped by :meth:`wrap` with the same associated data.

        Raises:
            DecryptionFailed: The blob or associated data does not authenticate.
            FailedPrecondition: Reason ``CUSTOMER_KEY_UNAVAILABLE``.
            Unavailable: Reason ``CUSTOMER_KEY_UNREACHABLE``.
        """
        ...


class KeyringWrapper:
    """The master keyring as a :class:`KeyWrapper` (wraps under its primary version)."""

    kind = KIND_KEYRING

    def __init__(self, keyring: MasterKeyring) -> None:
        """Wrap with ``keyring``."""
        self.keyring = keyring

    def __repr__(self) -> str:
        return f"KeyringWrapper(primary={self.keyring.primary})"

    def wrap(self, plaintext_key: bytes, associated_data: bytes, /) -> bytes:
        """Wrap under the keyring's primary version."""
        return self.keyring.wrap(plaintext_key, associated_data)

    def unwrap(self, blob: bytes, associated_data: bytes, /) -> bytes:
        """Unwrap with whichever keyring version the blob names.

        Raises:
            DecryptionFailed: As :meth:`MasterKeyring.unwrap`.
        """
        return self.keyring.unwrap(blob, associated_data)


def customer_key_unavailable() -> FailedPrecondition:
    """The customer's key refused (disabled, deleted, or the token lost its permission)."""
    return FailedPrecondition(
        "the tenant's customer-managed key refused to unwrap or wrap the data key (it is "
        "disabled, deleted, or the token lost permission); restore it in the tenant's KMS",
        reason=REASON_CUSTOMER_KEY_UNAVAILABLE,
    )


def customer_key_unreachable() -> Unavailable:
    """The customer's KMS did not answer in time (retry later)."""
    return Unavailable(
        "the tenant's customer-managed key service did not answer; retry later",
        reason=REASON_CUSTOMER_KEY_UNREACHABLE,
    )
