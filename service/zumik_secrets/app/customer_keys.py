"""Customer-managed keys: a tenant's data keys wrapped by its own OpenBao/Vault Transit key.

The configuration (address, mount, key name, CA) is stored per tenant; the access token is stored
only wrapped by the master keyring, bound to the tenant. Configuring verifies the key with a
wrap/unwrap round trip, then rewraps every existing data key of the tenant under the customer key
in the same transaction that stores the configuration, so no data key stays wrapped by a key the
tenant does not control.

If the customer disables or deletes the key (or revokes the token), unwrapping that tenant's data
keys fails with ``CUSTOMER_KEY_UNAVAILABLE`` once their cached copies expire (the data-key cache
TTL bounds it); other tenants are untouched.

Bounded (issue 15, finding 3): every call to a key server has an overall deadline (the configured
timeout, or the caller's gRPC deadline when nearer), each server has a circuit breaker (UNAVAILABLE
at once while it keeps failing), and :meth:`CustomerKeys.gate` caps how many calls of one tenant
wait on its key at once (RESOURCE_EXHAUSTED ``CUSTOMER_KEY_BUSY`` beyond), so one tenant's slow
key server holds at most that many workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditRecorder, audited_change, event
from zumik_secrets.app.key_wrappers import (
    KIND_KEYRING,
    KeyringWrapper,
    KeyWrapper,
    customer_key_unavailable,
)
from zumik_secrets.app.openbao import OpenBaoTransit
from zumik_secrets.app.outbound_limits import Breakers, TenantGate
from zumik_secrets.app.ttl_cache import TtlLru
from zumik_secrets.core import primitives
from zumik_secrets.core.errors import DecryptionFailed
from zumik_secrets.core.keyring import MasterKeyring
from zumik_secrets.core.names import validate_tenant_id
from zumik_secrets.core.sealing import data_key_aad
from zumik_secrets.storage.ports import CustomerKeyStore, DataKeyId, DataKeyStore
from zumik_secrets.storage.records import ChangeRecord, CustomerKeyRecord

_LOG = logging.getLogger("zumik.customer_keys")
_PROBE_AAD = b"zumik-customer-key-probe-v1"

WrapperFactory = Callable[[CustomerKeyRecord, str], KeyWrapper]


def token_aad(tenant_id: str) -> bytes:
    """Associated data binding a wrapped customer-key token to its tenant."""
    return b"zumik-customer-key-token-v1\x00" + tenant_id.encode()


def _now() -> datetime:
    return datetime.now(UTC)


class CustomerKeys:
    """Per-tenant customer-key configuration and the wrappers built from it."""

    def __init__(
        self,
        store: CustomerKeyStore,
        data_keys: DataKeyStore,
        keyring: MasterKeyring,
        audit: AuditRecorder,
        *,
        timeout: float = 5.0,
        cache_ttl: float = 300.0,
        allow_http: bool = False,
        clock: Callable[[], datetime] = _now,
        concurrency: int = 4,
        breaker_failures: int = 3,
        breaker_seconds: float = 10.0,
    ) -> None:
        """Create the service.

        Args:
            store: Where configurations live.
            data_keys: The data keys to rewrap when a tenant configures its key.
            keyring: Wraps the tokens (and unwraps keyring-wrapped data keys).
            audit: Where configuration changes are recorded.
            timeout: Seconds for each whole call to a customer's KMS (less when the caller's
                deadline is nearer).
            cache_ttl: How long a tenant's wrapper (or its absence) is remembered.
            allow_http: Accept http:// addresses (tests only).
            clock: Current time.
            concurrency: Calls of one tenant that may wait on its key at once (:meth:`gate`).
            breaker_failures: Consecutive failures that open a key server's circuit.
            breaker_seconds: How long an open circuit fails calls before one probe.
        """
        self._store = store
        self._data_keys = data_keys
        self._keyring = keyring
        self._keyring_wrapper = KeyringWrapper(keyring)
        self._audit = audit
        self._timeout = timeout
        self._allow_http = allow_http
        self._clock = clock
        self._wrappers: TtlLru[str, KeyWrapper] = TtlLru(10_000, cache_ttl)
        self.breakers = Breakers(breaker_failures, breaker_seconds)
        self.tenant_gate = TenantGate(concurrency)

    def _build(self, rec: CustomerKeyRecord, token: str) -> KeyWrapper:
        return OpenBaoTransit(
            rec.address,
            rec.mount,
            rec.key_name,
            token,
            rec.ca_certificate_pem,
            timeout=self._timeout,
            allow_http=self._allow_http,
            breakers=self.breakers,
        )

    def gate(self, tenant_id: str) -> AbstractContextManager[None]:
        """Hold one of the tenant's customer-key slots, if it has a customer key (else a no-op):
        the data-key service holds it while it loads or waits for a key of the tenant.

        Raises:
            ResourceExhausted: ``CUSTOMER_KEY_BUSY`` (entering).
            Unavailable: storage is down.
        """
        if self.customer_wrapper(tenant_id) is None:
            return nullcontext()
        return self.tenant_gate.enter(tenant_id)

    def customer_wrapper(self, tenant_id: str) -> KeyWrapper | None:
        """The tenant's customer-key wrapper, or None if it has not configured one.

        Raises:
            Unavailable: storage is down.
            DecryptionFailed: the stored token does not unwrap (keyring lost a version).
        """
        cached = self._wrappers.get(tenant_id)
        if cached is not None:
            return cached
        rec = self._store.get(tenant_id)
        wrapper: KeyWrapper | None = None
        if rec is not None:
            token = self._keyring.unwrap(rec.wrapped_token, token_aad(tenant_id)).decode()
            wrapper = self._build(rec, token)
            self._wrappers.put(tenant_id, wrapper)
        return wrapper

    def wrapper_for_new_keys(self, tenant_id: str) -> KeyWrapper:
        """What wraps a new data key of the tenant: its own key if configured, else the keyring.

        Raises:
            Unavailable: storage is down.
        """
        return self.customer_wrapper(tenant_id) or self._keyring_wrapper

    def wrapper_named(self, tenant_id: str, kind: str) -> KeyWrapper:
        """The wrapper that made a stored blob (``wrapped_by`` of the data-key row).

        Raises:
            FailedPrecondition: Reason ``CUSTOMER_KEY_UNAVAILABLE``: a customer-wrapped key but
                no configuration any more.
        """
        if kind == KIND_KEYRING:
            return self._keyring_wrapper
        wrapper = self.customer_wrapper(tenant_id)
        if wrapper is None:
            raise customer_key_unavailable()
        return wrapper

    def is_configured(self, tenant_id: str) -> bool:
        """Whether the tenant's data keys are wrapped by its own key.

        Raises:
            Unavailable: storage is down.
        """
        return self._store.get(tenant_id) is not None

    def configure(
        self,
        tenant_id: str,
        *,
        address: str,
        mount: str,
        key_name: str,
        token: str,
        ca_certificate_pem: str,
        actor: Actor,
    ) -> None:
        """Bind the tenant's data keys to its Transit key (see the module docstring).

        Raises:
            InvalidArgument: Reason ``INVALID_CUSTOMER_KEY`` naming the bad field.
            FailedPrecondition: ``CUSTOMER_KEY_UNAVAILABLE`` (the key refused the probe, or an
                existing data key's current wrapper refused), ``DATA_KEYS_CHANGED`` (retry).
            Unavailable: the KMS or storage did not answer.
        """
        validate_tenant_id(tenant_id)
        rec = CustomerKeyRecord(
            tenant_id=tenant_id,
            address=address,
            mount=mount or "transit",
            key_name=key_name,
            wrapped_token=self._keyring.wrap(token.encode(), token_aad(tenant_id)),
            ca_certificate_pem=ca_certificate_pem,
            updated_at=self._clock(),
        )
        new = self._build(rec, token)
        probe = primitives.random_bytes(32)
        try:
            if new.unwrap(new.wrap(probe, _PROBE_AAD), _PROBE_AAD) != probe:
                raise DecryptionFailed()
        except DecryptionFailed:
            raise customer_key_unavailable() from None
        rewrapped: list[tuple[DataKeyId, bytes, bytes]] = []
        for dk in self._data_keys.list_tenant(tenant_id):
            if dk.wrapped_key is None:
                continue
            aad = data_key_aad(dk.tenant_id, dk.project_id, dk.purpose, dk.version)
            key = self.wrapper_named(tenant_id, dk.wrapped_by).unwrap(dk.wrapped_key, aad)
            rewrapped.append(
                (
                    (dk.tenant_id, dk.project_id, dk.purpose, dk.version),
                    dk.wrapped_key,
                    new.wrap(key, aad),
                )
            )
            del key
        entry = event(
            actor,
            tenant_id,
            "customer_key.configure",
            f"tenants/{tenant_id}/settings",
            attributes={"data_keys_rewrapped": str(len(rewrapped))},
        )
        with audited_change(self._audit, entry):
            self._store.put(rec, rewrapped)
        self._wrappers.pop(tenant_id)

    def on_change(self, record: ChangeRecord) -> None:
        """Change-feed subscriber (``customer_key``): forget the tenant's wrapper."""
        self._wrappers.pop(record.entity_id)
