"""Everything a server process holds: store, keyring, keys, caches, policy, and their wiring.

Built once at start-up by :meth:`Runtime.open`; the gRPC layer only sees the finished objects.
"""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from zumik_secrets.app.audit import AuditRecorder, LogAuditRecorder
from zumik_secrets.app.change_watcher import ChangeWatcher
from zumik_secrets.app.signing_keys import ISSUER, SigningKeys
from zumik_secrets.app.tenant_settings import TenantSettingsService
from zumik_secrets.core.claims import ClaimVerifier, TenantClaim
from zumik_secrets.core.keyring import MasterKeyring
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.config import ServerConfig
from zumik_secrets.storage.factory import open_store, redact_url
from zumik_secrets.storage.ports import Store

_LOG = logging.getLogger("zumik.server")


def load_keyring(config: ServerConfig) -> MasterKeyring:
    """The master keyring from ``ZUMIK_MASTER_KEYRING_FILE`` or ``ZUMIK_MASTER_KEYRING``.

    Raises:
        ValueError: the file cannot be read (the message names the file, never its content).
        InvalidArgument: the keyring is malformed.
    """
    if config.master_keyring:
        return MasterKeyring.from_text(config.master_keyring)
    path = Path(config.master_keyring_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read master keyring file {path}: {exc.strerror}") from None
    return MasterKeyring.from_text(text)


def load_policy(path: str) -> Policy:
    """The authorization policy from a TOML file.

    Raises:
        ValueError: unreadable or not TOML.
        InvalidArgument: reason ``POLICY_INVALID``.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read policy file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"policy file {path} is not valid TOML: {exc}") from None
    return Policy.from_mapping(data)


@dataclass
class Runtime:
    """The process-wide objects of a running server."""

    config: ServerConfig
    store: Store
    keyring: MasterKeyring
    policy: Policy
    claim_keys: SigningKeys
    claim_verifier: ClaimVerifier
    tenant_settings: TenantSettingsService
    audit: AuditRecorder
    watcher: ChangeWatcher

    @classmethod
    def open(cls, config: ServerConfig, *, migrate: bool = True) -> Runtime:
        """Open storage, apply migrations, load keys and policy, start the change watcher.

        Raises:
            Unavailable: storage is down.
            ValueError, InvalidArgument: configuration problems (policy, keyring).
        """
        policy = load_policy(config.policy_file)
        keyring = load_keyring(config)
        store = open_store(config.database_url)
        try:
            if migrate:
                applied = store.migrate()
                if applied:
                    _LOG.info("migrations applied", extra={"versions": applied})
            claim_keys = SigningKeys(
                store.signing_keys,
                keyring,
                purpose="claims",
                audience=config.audience,
                max_claim_ttl=config.claim_ttl_seconds,
            )
            claim_keys.load()
            verifier = ClaimVerifier(
                config.audience,
                claim_keys.public_key,
                max_lifetime=config.claim_ttl_seconds,
                issuer=ISSUER,
            )
            claim_keys.on_key_removed = verifier.forget_key
            tenant_settings = TenantSettingsService(store.tenants)
            watcher = ChangeWatcher(store.changes)
            watcher.subscribe("signing_key", lambda _record: claim_keys.refresh())
            watcher.subscribe("tenant_settings", tenant_settings.on_change)
            watcher.start()
        except BaseException:
            store.close()
            raise
        _LOG.info(
            "runtime ready",
            extra={
                "database": redact_url(config.database_url),
                "backend": store.backend,
                "keyring_primary": keyring.primary,
                "keyring_fingerprint": keyring.fingerprint(),
            },
        )
        return cls(
            config=config,
            store=store,
            keyring=keyring,
            policy=policy,
            claim_keys=claim_keys,
            claim_verifier=verifier,
            tenant_settings=tenant_settings,
            audit=LogAuditRecorder(),
            watcher=watcher,
        )

    def verify_claim(self, token: str) -> TenantClaim:
        """Verify a raw tenant claim now (cached after the first verification).

        Raises:
            Unauthenticated: with the claim's reason code.
        """
        return self.claim_verifier.verify(token, int(time.time()))

    def close(self) -> None:
        """Stop background work and close storage."""
        self.watcher.stop()
        self.store.close()
