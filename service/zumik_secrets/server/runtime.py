"""Everything a server process holds: store, keyring, keys, caches, policy, and their wiring.

Built once at start-up by :meth:`Runtime.open`; the gRPC layer only sees the finished objects.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from opentelemetry.sdk.metrics.export import MetricReader

from zumik_secrets.app import metrics as app_metrics
from zumik_secrets.app.api_keys import ApiKeyService
from zumik_secrets.app.audit import AuditRecorder
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.app.audit_witness import FileWitness
from zumik_secrets.app.change_watcher import ChangeWatcher
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.app.claim_issuer import ClaimIssuer
from zumik_secrets.app.claim_revocations import ClaimRevocations
from zumik_secrets.app.customer_keys import CustomerKeys
from zumik_secrets.app.data_keys import DataKeys
from zumik_secrets.app.fingerprints import Fingerprints, sweeper
from zumik_secrets.app.grants import BreakGlass
from zumik_secrets.app.handles import Handles
from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.app.purge import PurgeService
from zumik_secrets.app.rate_limit import BucketSpec
from zumik_secrets.app.retention import Retention, scheduler
from zumik_secrets.app.revocation_feed import KINDS as FEED_KINDS
from zumik_secrets.app.revocation_feed import RevocationFeed, position_tag
from zumik_secrets.app.sealed_secrets import SealedSecrets
from zumik_secrets.app.sessions import SessionService
from zumik_secrets.app.signing_keys import ISSUER, SigningKeys
from zumik_secrets.app.tenant_settings import RetentionDefaults, TenantSettingsService
from zumik_secrets.app.usage_recorder import UsageFlusher
from zumik_secrets.app.verification import FailureGuard
from zumik_secrets.core import page_tokens
from zumik_secrets.core.claims import ClaimVerifier, TenantClaim
from zumik_secrets.core.handles import KIND_SESSION
from zumik_secrets.core.keyring import MasterKeyring
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.config import ServerConfig
from zumik_secrets.server.metrics import ServerMetrics, create_metrics
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


def _apply_changes(watcher: ChangeWatcher, revocations: ClaimRevocations) -> None:
    watcher.poll_once()
    revocations.reload_tombstones()


@dataclass
class Runtime:
    """The process-wide objects of a running server."""

    config: ServerConfig
    store: Store
    keyring: MasterKeyring
    policy: Policy
    claim_keys: SigningKeys
    claim_verifier: ClaimVerifier
    revocations: ClaimRevocations
    tenant_settings: TenantSettingsService
    audit: AuditRecorder
    watcher: ChangeWatcher
    api_keys: ApiKeyService
    sessions: SessionService
    usage: UsageFlusher
    customer_keys: CustomerKeys
    data_keys: DataKeys
    sealed_secrets: SealedSecrets
    audit_log: AuditLog
    fingerprints: Fingerprints
    fingerprint_sweeper: PeriodicJob
    handles: Handles
    purges: PurgeService
    retention: Retention
    retention_scheduler: PeriodicJob
    metrics: ServerMetrics
    break_glass: BreakGlass
    revocation_feed: RevocationFeed

    @classmethod
    def open(
        cls,
        config: ServerConfig,
        *,
        migrate: bool = True,
        metric_readers: Sequence[MetricReader] = (),
    ) -> Runtime:
        """Open storage, apply migrations, load keys and policy, start the change watcher.

        Args:
            config: The settings.
            migrate: Apply pending migrations first.
            metric_readers: Extra metric readers (tests), besides those the settings and the
                ``OTEL_*`` variables configure.

        Raises:
            Unavailable: storage is down.
            ValueError, InvalidArgument: configuration problems (policy, keyring).
        """
        policy = load_policy(config.policy_file)
        keyring = load_keyring(config)
        # Page tokens are authenticated under a key every replica derives alike (finding 6).
        page_tokens.configure(next(v.key for v in keyring.versions if v.version == keyring.primary))
        metrics = create_metrics(config, extra_readers=metric_readers)
        if metrics.otel is not None:
            # Code far from the runtime (customer-key client, breakers) records through it.
            app_metrics.install(metrics.otel)
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
            tenant_settings = TenantSettingsService(
                store.tenants,
                defaults=RetentionDefaults(
                    audit_retention=timedelta(days=config.audit_retention_days),
                    revoked_key_retention=timedelta(days=config.revoked_key_retention_days),
                    session_absolute_lifetime=timedelta(seconds=config.session_absolute_timeout),
                ),
                receipts=store.purges,
            )
            audit_keys = CheckpointKeys(store.signing_keys, keyring)
            audit_keys.load()
            audit_log = AuditLog(
                store.audit,
                audit_keys,
                durable_timeout=config.audit_durable_timeout,
                linger=config.audit_linger_ms / 1000,
                checkpoint_every=config.audit_checkpoint_events,
                checkpoint_interval=config.audit_checkpoint_seconds,
                retention=timedelta(days=config.audit_retention_days),
                retention_for=tenant_settings.audit_retention_for,
                witness=FileWitness(Path(config.audit_witness_dir))
                if config.audit_witness_dir
                else None,
            )
            if not config.audit_witness_dir:
                _LOG.warning(
                    "no audit witness (ZUMIK_AUDIT_WITNESS_DIR): checkpoints live only in the "
                    "database, so a database writer can rewrite the audit chain undetected"
                )
            audit_log.start()
            audit: AuditRecorder = audit_log
            tenant_settings.audit = audit
            claims = ClaimIssuer(lambda: claim_keys.signer, config.claim_ttl_seconds)
            guard = FailureGuard(
                identity=BucketSpec(
                    config.verify_identity_failure_rate, config.verify_identity_failure_burst
                ),
                credential=BucketSpec(
                    config.verify_key_failure_rate, config.verify_key_failure_burst
                ),
            )
            api_keys = ApiKeyService(store.api_keys, claims, audit, guard)
            sessions = SessionService(
                store.sessions,
                claims,
                audit,
                guard,
                idle_timeout=timedelta(seconds=config.session_idle_timeout),
                absolute_timeout=timedelta(seconds=config.session_absolute_timeout),
                absolute_timeout_for=tenant_settings.session_absolute_lifetime,
            )
            usage = UsageFlusher(
                [api_keys.flush_last_used, sessions.flush_touches],
                [sessions.sweep],
                flush_interval=config.usage_flush_interval,
                sweep_interval=config.session_sweep_interval,
            )
            customer_keys = CustomerKeys(
                store.customer_keys,
                store.data_keys,
                keyring,
                audit,
                timeout=config.customer_key_timeout,
                cache_ttl=config.data_key_cache_ttl,
                concurrency=config.customer_key_concurrency,
                breaker_failures=config.customer_key_breaker_failures,
                breaker_seconds=config.customer_key_breaker_seconds,
            )
            data_keys = DataKeys(
                store.data_keys,
                customer_keys,
                cache_entries=config.data_key_cache_size,
                cache_ttl=config.data_key_cache_ttl,
            )
            sealed_secrets = SealedSecrets(
                store.sealed_secrets,
                data_keys,
                audit,
                max_plaintext_bytes=config.seal_max_plaintext_bytes,
            )
            fingerprints = Fingerprints(
                data_keys,
                store.fingerprint_schedule,
                audit,
                cache_entries=config.data_key_cache_size,
                cache_ttl=config.data_key_cache_ttl,
            )
            fingerprint_sweeper = sweeper(fingerprints, config.fingerprint_sweep_interval)
            handles = Handles(store.handles, audit)
            watcher = ChangeWatcher(store.changes)
            watcher.subscribe("data_key", data_keys.on_change)
            watcher.subscribe("customer_key", customer_keys.on_change)
            watcher.subscribe("signing_key", lambda _record: claim_keys.refresh())
            watcher.subscribe("signing_key", lambda _record: audit_keys.refresh())
            watcher.subscribe("tenant_settings", tenant_settings.on_change)
            watcher.subscribe("api_key", api_keys.on_change)
            watcher.subscribe("session", sessions.on_change)
            # Open's rows are dropped through the feed (any replica's delete, update, rewrap,
            # purge or data-key change) and bypassed while the feed is not read (see
            # app/sealed_secrets.py): the revocation bound, whatever the rows' TTL.
            sealed_secrets.enable_row_cache(config.open_cache_entries, watcher.caught_up)
            for kind in ("sealed_secret", "purge", "data_key"):
                watcher.subscribe(kind, sealed_secrets.on_change)
            revocations = ClaimRevocations(
                store.api_keys,
                store.sessions,
                store.purges,
                max_claim_lifetime=config.claim_ttl_seconds + verifier.leeway,
                accept_without_credential=config.accept_claims_without_credential,
            )
            if config.accept_claims_without_credential:
                _LOG.warning(
                    "ZUMIK_ACCEPT_CLAIMS_WITHOUT_CREDENTIAL is on: claims of the previous "
                    "release are accepted and cannot be revoked before they expire; turn it "
                    "off once every replica runs this release"
                )
            for kind in ("api_key", "session", "purge"):
                watcher.subscribe(kind, revocations.on_change)
            # After the revocation set, which works out each credential's cut-off first.
            revocation_feed = RevocationFeed(
                revocations,
                last_feed_read=lambda: watcher.last_success,
                poll_interval=watcher.poll_interval,
                record_at=store.changes.at,
            )
            for kind in FEED_KINDS:
                watcher.subscribe(kind, revocation_feed.on_change)
            # A revoking or rotating call applies its change here before it answers, as a
            # purge does: no claim of the credential is accepted once the caller was told.
            api_keys.after_change = watcher.poll_once_quietly
            sessions.after_change = watcher.poll_once_quietly
            # A process that fell behind the feed (paused, starved) reads it before it answers
            # a verification or accepts a claim from memory (see ChangeWatcher.catch_up).
            api_keys.before_verify = watcher.catch_up
            sessions.before_verify = watcher.catch_up
            sessions.claim_floor = revocations.issue_floor
            purges = PurgeService(
                store.purges,
                audit_log,
                audit_keys,
                tenant_settings,
                # The feed's poll may race the watcher thread's (which then applies the records
                # a moment later): the tombstones are read here too, so this replica refuses the
                # purged scope's claims before the purge answers.
                after_change=lambda: _apply_changes(watcher, revocations),
                pause_after=config.test_purge_pause_after,
            )
            retention = Retention(
                sessions=store.sessions,
                api_keys=store.api_keys,
                changes=store.changes,
                audit_store=store.audit,
                audit_log=audit_log,
                settings=tenant_settings,
                before_session_sweep=sessions.flush_touches,
            )
            retention_scheduler = scheduler(retention, config.retention_interval)
            break_glass = BreakGlass(store.grants, policy.break_glass, policy.trust_domain, audit)
            watcher.start()
            # After the watcher took its starting point, so no change falls between the two.
            revocations.load(store.changes)
            # Every change after this position reaches the feed (it subscribed before start).
            latest = store.changes.latest()
            if latest is not None:
                revocation_feed.open_at(latest.seq, position_tag(latest))
            else:
                revocation_feed.open_at(0)
            usage.start()
            fingerprint_sweeper.start()
            retention_scheduler.start()
        except BaseException:
            store.close()
            metrics.shutdown()
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
        runtime = cls(
            config=config,
            store=store,
            keyring=keyring,
            policy=policy,
            claim_keys=claim_keys,
            claim_verifier=verifier,
            revocations=revocations,
            tenant_settings=tenant_settings,
            audit=audit,
            watcher=watcher,
            api_keys=api_keys,
            sessions=sessions,
            usage=usage,
            customer_keys=customer_keys,
            data_keys=data_keys,
            sealed_secrets=sealed_secrets,
            audit_log=audit_log,
            fingerprints=fingerprints,
            fingerprint_sweeper=fingerprint_sweeper,
            handles=handles,
            purges=purges,
            retention=retention,
            retention_scheduler=retention_scheduler,
            metrics=metrics,
            break_glass=break_glass,
            revocation_feed=revocation_feed,
        )
        metrics.observe(runtime)
        return runtime

    def verify_claim(self, token: str) -> TenantClaim:
        """Verify a raw tenant claim now (the signature is cached after the first verification;
        revocation and purge are checked on every call).

        Raises:
            Unauthenticated: with the claim's reason code (``CLAIM_REVOKED`` and
                ``CLAIM_NO_CREDENTIAL`` included).
        """
        self.watcher.catch_up()
        now = time.time()
        return self.revocations.check_claim(self.claim_verifier.verify(token, int(now)), now)

    def minting_bound(self, claim: TenantClaim) -> datetime | None:
        """The lifetime bound of a claim's authority on the minting methods: the expiry of the
        API key it was minted from, or of a machine's session (see
        :meth:`SessionService.minting_bound`); None when unbounded."""
        if claim.credential_id.partition("_")[0] == KIND_SESSION:
            return self.sessions.minting_bound(claim)
        return self.api_keys.minting_bound(claim)

    def close(self) -> None:
        """Stop background work (flushing pending usage) and close storage."""
        self.usage.stop()
        self.retention_scheduler.stop()
        self.fingerprint_sweeper.stop()
        self.watcher.stop()
        self.audit_log.stop()
        self.store.close()
        if self.metrics.otel is not None and app_metrics.recorder() is self.metrics.otel:
            app_metrics.install(app_metrics.NOOP)
        self.metrics.shutdown()
