"""The aggregates every SQL store is made of, wired once for both backends.

``SqliteStore`` and ``PgStore`` (the composition roots in ``storage/<backend>/store.py``) build
their kernel and hand it here; they add only what is their own (migrations, readiness, close).
A new aggregate module is wired in this one place.
"""

from __future__ import annotations

from zumik_secrets.storage.aggregates.api_keys import SqlApiKeyStore
from zumik_secrets.storage.aggregates.audit import SqlAuditStore
from zumik_secrets.storage.aggregates.changes import SqlChangeFeed
from zumik_secrets.storage.aggregates.fingerprints import (
    SqlFingerprintScheduleStore,
    SqlHandleStore,
)
from zumik_secrets.storage.aggregates.grants import SqlGrantStore
from zumik_secrets.storage.aggregates.purge import SqlPurgeStore
from zumik_secrets.storage.aggregates.sealing import (
    SqlCustomerKeyStore,
    SqlDataKeyStore,
    SqlSealedSecretStore,
)
from zumik_secrets.storage.aggregates.sessions import SqlSessionStore
from zumik_secrets.storage.aggregates.signing_keys import SqlSigningKeyStore
from zumik_secrets.storage.aggregates.tenant_settings import SqlTenantSettingsStore
from zumik_secrets.storage.sql.kernel import Kernel


class SqlAggregates:
    """Every aggregate store of :class:`~zumik_secrets.storage.ports.Store` over ``db``."""

    def __init__(self, db: Kernel) -> None:
        self.tenants = SqlTenantSettingsStore(db)
        self.signing_keys = SqlSigningKeyStore(db)
        self.api_keys = SqlApiKeyStore(db)
        self.sessions = SqlSessionStore(db)
        self.changes = SqlChangeFeed(db)
        self.grants = SqlGrantStore(db)
        self.fingerprint_schedule = SqlFingerprintScheduleStore(db)
        self.handles = SqlHandleStore(db)
        self.audit = SqlAuditStore(db)
        self.data_keys = SqlDataKeyStore(db)
        self.sealed_secrets = SqlSealedSecretStore(db)
        self.customer_keys = SqlCustomerKeyStore(db)
        self.purges = SqlPurgeStore(db)
