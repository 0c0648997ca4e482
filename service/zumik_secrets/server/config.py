"""Server configuration: `ZUMIK_*` environment variables over an optional TOML file.

Precedence: environment variable, then the TOML file named by ``ZUMIK_CONFIG`` (keys are the
field names below), then the default. With ``ZUMIK_DEV=1`` the defaults point at the files that
``zumik-secrets dev-setup`` writes under ``var/dev/`` and at the packaged development policy;
without it, TLS files, the policy and the keyring must be configured explicitly (fail closed).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from zumik_secrets.app.purge import PAUSE_PHASES
from zumik_secrets.storage.factory import redact_url

DEV_DIR = Path("var/dev")


def dev_witness_dir(database_url: str) -> Path:
    """The development witness of one database: ``var/dev/audit-witness/<16 hex digits of the
    URL's SHA-256>``. A witness pins the chains of one database; two dev servers on different
    databases sharing one directory made each other's checkpoints look like a rewrite
    (VerifyChain CHECKPOINT_MISMATCH, a false tamper alarm; noticed by the 2026-12-04
    adversary). Replicas of one database share it, as they should. The digest is of the URL
    without its password."""
    digest = hashlib.sha256(redact_url(database_url).encode()).hexdigest()[:16]
    return DEV_DIR / "audit-witness" / digest


DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///var/zumik.db"
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF"})


@dataclass(frozen=True, slots=True)
class Setting:
    """Documentation of one configuration field."""

    env: str
    help: str


def setting(default: Any, env: str, help: str, *, repr: bool = True) -> Any:
    """Declare one setting in one line: its default, its env var and its ``--help`` text.

    (The older spelling, ``field(default=..., metadata={"setting": Setting(env, help)})``, is the
    same declaration and still works.)
    """
    return field(default=default, repr=repr, metadata={"setting": Setting(env, help)})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server reads at start-up. Every field has an env var."""

    listen: str = setting(DEFAULT_LISTEN, "ZUMIK_LISTEN", "host:port to serve gRPC on (mTLS only)")
    database_url: str = setting(
        DEFAULT_DATABASE_URL,
        "ZUMIK_DATABASE_URL",
        "sqlite:///path (embedded, default) or postgresql://user@host/db",
    )
    tls_cert_file: str = setting("", "ZUMIK_TLS_CERT", "server certificate chain (PEM)")
    tls_key_file: str = setting("", "ZUMIK_TLS_KEY", "server private key (PEM)")
    tls_client_ca_file: str = setting(
        "", "ZUMIK_TLS_CLIENT_CA", "CA bundle that client certificates chain to"
    )
    policy_file: str = setting("", "ZUMIK_POLICY_FILE", "authorization policy (TOML)")
    master_keyring_file: str = setting(
        "", "ZUMIK_MASTER_KEYRING_FILE", "master keyring file (JSON, mounted read-only)"
    )
    master_keyring: str = setting(
        "", "ZUMIK_MASTER_KEYRING", "master keyring JSON inline (development only)", repr=False
    )
    reflection: bool = setting(True, "ZUMIK_REFLECTION", "serve gRPC reflection (true/false)")
    workers: int = setting(16, "ZUMIK_WORKERS", "handler threads per process")
    processes: int = setting(
        0,
        "ZUMIK_PROCESSES",
        "server processes sharing the port under one supervisor (`serve --processes`;"
        " 0: one per usable core on PostgreSQL, 1 on SQLite)",
    )
    max_message_bytes: int = setting(
        8 * 1024 * 1024, "ZUMIK_MAX_MESSAGE_BYTES", "largest request or response"
    )
    max_concurrent_rpcs: int = setting(
        1024, "ZUMIK_MAX_CONCURRENT_RPCS", "calls beyond this are refused RESOURCE_EXHAUSTED"
    )
    max_calls_per_peer: int = setting(
        0,
        "ZUMIK_MAX_CALLS_PER_PEER",
        "slow (>= 0.5 s) unary calls one peer may hold at once (0: 3/4 of ZUMIK_WORKERS)",
    )
    max_streams_per_peer: int = setting(
        8,
        "ZUMIK_MAX_STREAMS_PER_PEER",
        "streams one peer identity may hold open at once, per process",
    )
    stream_workers: int = setting(
        32, "ZUMIK_STREAM_WORKERS", "threads for blocking streams (reflection, export)"
    )
    max_queued_calls: int = setting(
        64,
        "ZUMIK_MAX_QUEUED_CALLS",
        "unary calls that may wait for a worker; beyond, RESOURCE_EXHAUSTED at once",
    )
    max_connection_age_seconds: float = setting(
        1800.0, "ZUMIK_MAX_CONNECTION_AGE", "seconds before a connection is asked to go away"
    )
    max_connection_idle_seconds: float = setting(
        300.0, "ZUMIK_MAX_CONNECTION_IDLE", "seconds a connection without calls stays open"
    )
    customer_key_concurrency: int = setting(
        4,
        "ZUMIK_CUSTOMER_KEY_CONCURRENCY",
        "calls of one tenant that may wait on its customer key server at once",
    )
    customer_key_breaker_failures: int = setting(
        3,
        "ZUMIK_CUSTOMER_KEY_BREAKER_FAILURES",
        "consecutive failures that open a customer key server's circuit",
    )
    customer_key_breaker_seconds: float = setting(
        10.0,
        "ZUMIK_CUSTOMER_KEY_BREAKER_SECONDS",
        "seconds an open circuit fails calls fast before one probe is let through",
    )
    denial_audit_interval: float = setting(
        10.0,
        "ZUMIK_DENIAL_AUDIT_INTERVAL",
        "seconds over which repeated denials fold into one audit event",
    )
    denial_audit_budget: int = setting(
        100,
        "ZUMIK_DENIAL_AUDIT_BUDGET",
        "denial audit events one identity may cause per interval (then one summary)",
    )
    claim_ttl_seconds: int = setting(300, "ZUMIK_CLAIM_TTL", "lifetime of minted claims (<= 300)")
    audience: str = setting(
        "zumik-secrets", "ZUMIK_AUDIENCE", "claim audience (`aud`) to mint and accept"
    )
    session_idle_timeout: int = setting(
        1800,
        "ZUMIK_SESSION_IDLE_TIMEOUT",
        "default session idle timeout in seconds (60..604800; sliding)",
    )
    session_absolute_timeout: int = setting(
        43200,
        "ZUMIK_SESSION_ABSOLUTE_TIMEOUT",
        "default session absolute lifetime in seconds (60..2592000)",
    )
    verify_identity_failure_rate: float = setting(
        50.0,
        "ZUMIK_VERIFY_IDENTITY_FAILURE_RATE",
        "failed key/session verifications per second one calling identity may cause",
    )
    verify_identity_failure_burst: float = setting(
        100.0,
        "ZUMIK_VERIFY_IDENTITY_FAILURE_BURST",
        "burst of failed verifications per calling identity",
    )
    verify_key_failure_rate: float = setting(
        5.0, "ZUMIK_VERIFY_KEY_FAILURE_RATE", "failed verifications per second of one API key id"
    )
    verify_key_failure_burst: float = setting(
        10.0, "ZUMIK_VERIFY_KEY_FAILURE_BURST", "burst of failed verifications per API key id"
    )
    usage_flush_interval: float = setting(
        1.0,
        "ZUMIK_USAGE_FLUSH_INTERVAL",
        "seconds between batched writes of key last-used and session last-seen times",
    )
    session_sweep_interval: float = setting(
        300.0, "ZUMIK_SESSION_SWEEP_INTERVAL", "seconds between sweeps of dead sessions"
    )
    seal_max_plaintext_bytes: int = setting(
        64 * 1024, "ZUMIK_SEAL_MAX_PLAINTEXT_BYTES", "largest plaintext Seal accepts (bytes)"
    )
    data_key_cache_size: int = setting(
        10_000, "ZUMIK_DATA_KEY_CACHE_SIZE", "unwrapped data keys kept in memory (LRU)"
    )
    data_key_cache_ttl: float = setting(
        300.0,
        "ZUMIK_DATA_KEY_CACHE_TTL",
        "seconds an unwrapped data key is kept (bounds customer-key revocation delay)",
    )
    open_cache_entries: int = setting(
        4096,
        "ZUMIK_OPEN_CACHE_ENTRIES",
        "sealed rows Open keeps, up to 300 s; changes drop them via the change feed (0: none)",
    )
    fingerprint_sweep_interval: float = setting(
        5.0,
        "ZUMIK_FINGERPRINT_SWEEP_INTERVAL",
        "seconds between sweeps destroying fingerprint keys whose rotation overlap ended",
    )
    customer_key_timeout: float = setting(
        5.0,
        "ZUMIK_CUSTOMER_KEY_TIMEOUT",
        "seconds for each whole call to a tenant's OpenBao/Vault"
        " (less when the caller's deadline is nearer)",
    )
    audit_retention_days: int = setting(
        400,
        "ZUMIK_AUDIT_RETENTION_DAYS",
        "default days audit events are kept (tenants may set their own, 1 to 3650)",
    )
    audit_checkpoint_seconds: float = setting(
        60.0, "ZUMIK_AUDIT_CHECKPOINT_SECONDS", "seconds between signed audit checkpoints"
    )
    accept_claims_without_credential: bool = setting(
        False,
        "ZUMIK_ACCEPT_CLAIMS_WITHOUT_CREDENTIAL",
        "upgrade window only: accept claims minted by the previous release, which name no "
        "source credential (cid) and so cannot be revoked before they expire (at most "
        "the claim lifetime); turn off once every replica runs this release",
    )
    audit_witness_dir: str = setting(
        "",
        "ZUMIK_AUDIT_WITNESS_DIR",
        "append-only directory every signed audit checkpoint is also written to, out of "
        "the database writer's reach (empty: no witness; a warning at start)",
    )
    audit_checkpoint_events: int = setting(
        1000, "ZUMIK_AUDIT_CHECKPOINT_EVENTS", "events of a tenant that trigger a checkpoint"
    )
    audit_durable_timeout: float = setting(
        3.0,
        "ZUMIK_AUDIT_DURABLE_TIMEOUT",
        "seconds a sensitive call waits for its audit event to commit (then UNAVAILABLE;"
        " never past the caller's deadline; below the client's 5 s default deadline)",
    )
    audit_linger_ms: float = setting(
        20.0,
        "ZUMIK_AUDIT_LINGER_MS",
        "ms the audit writer gathers non-durable events before a commit (0: at once)",
    )
    revoked_key_retention_days: int = setting(
        30,
        "ZUMIK_REVOKED_KEY_RETENTION_DAYS",
        "default days revoked or expired API keys are kept (tenants may set their own)",
    )
    retention_interval: float = setting(
        3600.0,
        "ZUMIK_RETENTION_INTERVAL",
        "seconds between retention runs (sessions, revoked keys, old audit events)",
    )
    test_purge_pause_after: str = setting(
        "",
        "ZUMIK_TEST_PURGE_PAUSE_AFTER",
        "tests only: 'shred' or 'delete' makes a purge sleep 60 s after that phase"
        " commits, so a test can kill the process there (empty: off)",
    )
    drain_seconds: float = setting(
        10.0, "ZUMIK_DRAIN_SECONDS", "grace for in-flight calls on SIGTERM"
    )
    log_level: str = setting("INFO", "ZUMIK_LOG_LEVEL", "log level")
    access_log_level: str = setting(
        "INFO",
        "ZUMIK_ACCESS_LOG_LEVEL",
        "level of the per-call access log, apart from ZUMIK_LOG_LEVEL (INFO: one line"
        " per call; WARNING or OFF: none)",
    )
    metrics_listen: str = setting(
        "",
        "ZUMIK_METRICS_LISTEN",
        "host:port of the plain-HTTP scrape endpoint (/metrics, /healthz, /livez only; empty: off)",
    )
    metrics_tenant_limit: int = setting(
        100,
        "ZUMIK_METRICS_TENANT_LIMIT",
        "tenants (rich telemetry mode only) labelled on zumik.tenant.rpc.calls per"
        " process; later ones count as _OTHER (0: no tenant labels)",
    )
    health_listen: str = setting(
        "",
        "ZUMIK_HEALTH_LISTEN",
        "host:port of the health-only gRPC listener for Kubernetes grpc probes"
        " (plaintext, grpc.health.v1.Health/Check only; empty: off)",
    )
    dev: bool = setting(False, "ZUMIK_DEV", "use the var/dev/ PKI, keyring and dev policy")
    bench_empty_rpc: bool = setting(
        False,
        "ZUMIK_BENCH_EMPTY_RPC",
        "serve zumik.bench.v1.BenchService/Empty, the benchmarks' no-op ceiling",
    )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> ServerConfig:
        """Read the configuration.

        Raises:
            ValueError: a value cannot be parsed or a required file is not configured.
        """
        env = os.environ if env is None else env
        file_values: dict[str, Any] = {}
        config_path = env.get("ZUMIK_CONFIG", "")
        if config_path:
            with open(config_path, "rb") as fh:
                file_values = tomllib.load(fh)
            unknown = set(file_values) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"{config_path}: unknown settings {sorted(unknown)}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            setting: Setting = f.metadata["setting"]
            raw: Any = env.get(setting.env)
            if raw is None and f.name in file_values:
                raw = file_values[f.name]
            if raw is None:
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        config = cls(**values)
        if config.dev:
            config = config._with_dev_defaults()
        config.validate()
        return config

    @property
    def port_fixed(self) -> bool:
        """``ZUMIK_LISTEN`` names a port (not 0, which picks a free one)."""
        return not self.listen.endswith(":0")

    def _with_dev_defaults(self) -> ServerConfig:
        pki = DEV_DIR / "pki"
        defaults = {
            "tls_cert_file": str(pki / "server.crt"),
            "tls_key_file": str(pki / "server.key"),
            "tls_client_ca_file": str(pki / "ca.crt"),
            "policy_file": str(dev_policy_path()),
            "master_keyring_file": str(DEV_DIR / "keyring.json"),
            "audit_witness_dir": str(dev_witness_dir(self.database_url)),
        }
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in defaults.items():
            if not values[name] and not (name == "master_keyring_file" and self.master_keyring):
                values[name] = value
        return ServerConfig(**values)

    def validate(self) -> None:
        """Check cross-field rules.

        Raises:
            ValueError: naming the setting (by env var) that is wrong.
        """
        missing = [
            _env_of(name)
            for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "policy_file")
            if not getattr(self, name)
        ]
        if not (self.master_keyring_file or self.master_keyring):
            missing.append("ZUMIK_MASTER_KEYRING_FILE (or ZUMIK_MASTER_KEYRING)")
        if missing:
            raise ValueError(
                "not configured: " + ", ".join(missing) + " (set ZUMIK_DEV=1 for the dev setup)"
            )
        if not 1 <= self.claim_ttl_seconds <= 300:
            raise ValueError("ZUMIK_CLAIM_TTL must be between 1 and 300 seconds")
        if not 60 <= self.session_idle_timeout <= 7 * 86400:
            raise ValueError("ZUMIK_SESSION_IDLE_TIMEOUT must be between 60 and 604800 seconds")
        if not 60 <= self.session_absolute_timeout <= 30 * 86400:
            raise ValueError(
                "ZUMIK_SESSION_ABSOLUTE_TIMEOUT must be between 60 and 2592000 seconds"
            )
        for name in ("verify_identity_failure_rate", "verify_key_failure_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{_env_of(name)} must be positive")
        for name in ("verify_identity_failure_burst", "verify_key_failure_burst"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{_env_of(name)} must be at least 1")
        if not 0.05 <= self.usage_flush_interval <= 60:
            raise ValueError("ZUMIK_USAGE_FLUSH_INTERVAL must be between 0.05 and 60 seconds")
        if not 1 <= self.session_sweep_interval <= 86400:
            raise ValueError("ZUMIK_SESSION_SWEEP_INTERVAL must be between 1 and 86400 seconds")
        if self.workers < 1:
            raise ValueError("ZUMIK_WORKERS must be at least 1")
        if not 0 <= self.processes <= 256:
            raise ValueError("ZUMIK_PROCESSES must be between 0 (one per core) and 256")
        if self.max_calls_per_peer < 0:
            raise ValueError("ZUMIK_MAX_CALLS_PER_PEER must be 0 (default) or positive")
        if self.max_streams_per_peer < 1 or self.stream_workers < 1:
            raise ValueError("ZUMIK_MAX_STREAMS_PER_PEER and ZUMIK_STREAM_WORKERS must be >= 1")
        if self.max_queued_calls < 0:
            raise ValueError("ZUMIK_MAX_QUEUED_CALLS must be at least 0")
        if not 1 <= self.max_connection_age_seconds <= 30 * 86400:
            raise ValueError("ZUMIK_MAX_CONNECTION_AGE must be between 1 and 2592000 seconds")
        if not 1 <= self.max_connection_idle_seconds <= 30 * 86400:
            raise ValueError("ZUMIK_MAX_CONNECTION_IDLE must be between 1 and 2592000 seconds")
        if self.customer_key_concurrency < 1 or self.customer_key_breaker_failures < 1:
            raise ValueError(
                "ZUMIK_CUSTOMER_KEY_CONCURRENCY and ZUMIK_CUSTOMER_KEY_BREAKER_FAILURES"
                " must be at least 1"
            )
        if not 0.1 <= self.customer_key_breaker_seconds <= 3600:
            raise ValueError("ZUMIK_CUSTOMER_KEY_BREAKER_SECONDS must be between 0.1 and 3600")
        if not 0.1 <= self.denial_audit_interval <= 3600 or self.denial_audit_budget < 1:
            raise ValueError(
                "ZUMIK_DENIAL_AUDIT_INTERVAL must be between 0.1 and 3600 seconds and"
                " ZUMIK_DENIAL_AUDIT_BUDGET at least 1"
            )
        if self.audit_retention_days < 1:
            raise ValueError("ZUMIK_AUDIT_RETENTION_DAYS must be at least 1")
        if not 0.1 <= self.audit_checkpoint_seconds <= 86400:
            raise ValueError("ZUMIK_AUDIT_CHECKPOINT_SECONDS must be between 0.1 and 86400")
        if self.audit_checkpoint_events < 1:
            raise ValueError("ZUMIK_AUDIT_CHECKPOINT_EVENTS must be at least 1")
        if not 0.1 <= self.audit_durable_timeout <= 60:
            raise ValueError("ZUMIK_AUDIT_DURABLE_TIMEOUT must be between 0.1 and 60 seconds")
        if not 0 <= self.audit_linger_ms <= 1000:
            raise ValueError("ZUMIK_AUDIT_LINGER_MS must be between 0 and 1000")
        if self.max_message_bytes < 64 * 1024:
            raise ValueError("ZUMIK_MAX_MESSAGE_BYTES must be at least 65536")
        if not 1 <= self.seal_max_plaintext_bytes <= self.max_message_bytes - 4096:
            raise ValueError(
                "ZUMIK_SEAL_MAX_PLAINTEXT_BYTES must be positive and leave 4 KiB of"
                " ZUMIK_MAX_MESSAGE_BYTES for the rest of the message"
            )
        if self.data_key_cache_size < 1:
            raise ValueError("ZUMIK_DATA_KEY_CACHE_SIZE must be at least 1")
        if not 0 <= self.open_cache_entries <= 1_000_000:
            raise ValueError("ZUMIK_OPEN_CACHE_ENTRIES must be between 0 and 1000000")
        if not 0.1 <= self.data_key_cache_ttl <= 3600:
            raise ValueError("ZUMIK_DATA_KEY_CACHE_TTL must be between 0.1 and 3600 seconds")
        if not 0.1 <= self.fingerprint_sweep_interval <= 3600:
            raise ValueError(
                "ZUMIK_FINGERPRINT_SWEEP_INTERVAL must be between 0.1 and 3600 seconds"
            )
        if not 0 <= self.revoked_key_retention_days <= 3650:
            raise ValueError("ZUMIK_REVOKED_KEY_RETENTION_DAYS must be between 0 and 3650")
        if not 0.5 <= self.retention_interval <= 7 * 86400:
            raise ValueError("ZUMIK_RETENTION_INTERVAL must be between 0.5 and 604800 seconds")
        if self.test_purge_pause_after not in ("", *PAUSE_PHASES):
            raise ValueError("ZUMIK_TEST_PURGE_PAUSE_AFTER must be empty, shred or delete")
        if self.access_log_level.upper() not in _LOG_LEVELS:
            raise ValueError(
                "ZUMIK_ACCESS_LOG_LEVEL must be one of " + ", ".join(sorted(_LOG_LEVELS))
            )
        if not 0 <= self.metrics_tenant_limit <= 10_000:
            raise ValueError("ZUMIK_METRICS_TENANT_LIMIT must be between 0 and 10000")
        for name in ("metrics_listen", "health_listen"):
            value = getattr(self, name)
            host, sep, port = value.rpartition(":")
            if value and (not sep or not port.isdigit() or not host):
                raise ValueError(f"{_env_of(name)} must be host:port (or empty for off)")
        if self.health_listen and self.health_listen == self.listen and self.port_fixed:
            raise ValueError("ZUMIK_HEALTH_LISTEN must differ from ZUMIK_LISTEN")
        if not 0.1 <= self.customer_key_timeout <= 60:
            raise ValueError("ZUMIK_CUSTOMER_KEY_TIMEOUT must be between 0.1 and 60 seconds")


def _env_of(name: str) -> str:
    for f in fields(ServerConfig):
        if f.name == name:
            setting: Setting = f.metadata["setting"]
            return setting.env
    raise KeyError(name)


def _convert(name: str, type_name: Any, raw: Any) -> Any:
    env_name = _env_of(name)
    kind = str(type_name)
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except ValueError:
        raise ValueError(f"{env_name}: cannot read {kind} value") from None


def dev_policy_path() -> Path:
    """The packaged development policy file."""
    return Path(str(resources.files("zumik_secrets.server").joinpath("dev_policy.toml")))


def settings_help() -> str:
    """A table of every setting, for ``zumik-secrets --help`` and the README."""
    lines = []
    for f in fields(ServerConfig):
        setting: Setting = f.metadata["setting"]
        default = "" if f.name == "master_keyring" else f.default
        lines.append(f"  {setting.env:<28} {setting.help} [default: {default!s}]")
    return "\n".join(lines)
