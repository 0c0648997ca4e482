"""Python client for the Zumik Secrets gRPC API.

``connect()`` opens a mutually authenticated TLS channel that attaches the caller's tenant claim
(a string or a provider asked on every call), applies per-method deadlines, retries
``UNAVAILABLE`` only on idempotent, non-destructive methods, raises the typed errors of
``zumik_secrets_client.errors``, and picks up rotated certificate files without a restart.
``zumik_secrets_client.aio.connect()`` does the same on ``grpc.aio``. ``CachingVerifier``
answers repeated VerifyApiKey/VerifySession calls from memory, kept correct by the server's
revocation feed. The generated messages and stubs live in ``zumik.secrets.v1``.
"""

from zumik_secrets_client import errors
from zumik_secrets_client._channel import DefaultsInterceptor, Keepalive, connect
from zumik_secrets_client._retry import (
    DEFAULT_TIMEOUT,
    DESTRUCTIVE_METHODS,
    EXTRA_IDEMPOTENT_METHODS,
    NEVER_RETRIED_METHODS,
    RETRY_POLICY,
    STREAM_TIMEOUT,
    idempotent_methods,
    method_timeouts,
    service_config,
)
from zumik_secrets_client._version import __version__
from zumik_secrets_client.caching import CacheStats, CachingVerifier, VerificationCache
from zumik_secrets_client.credentials import (
    CLAIM_METADATA_KEY,
    ApiKeyClaimProvider,
    ClaimProvider,
    SessionClaimProvider,
    claim_call_credentials,
    static_claim,
)

__all__ = [
    "CLAIM_METADATA_KEY",
    "DEFAULT_TIMEOUT",
    "DESTRUCTIVE_METHODS",
    "EXTRA_IDEMPOTENT_METHODS",
    "NEVER_RETRIED_METHODS",
    "RETRY_POLICY",
    "STREAM_TIMEOUT",
    "ApiKeyClaimProvider",
    "CacheStats",
    "CachingVerifier",
    "ClaimProvider",
    "DefaultsInterceptor",
    "Keepalive",
    "SessionClaimProvider",
    "VerificationCache",
    "__version__",
    "claim_call_credentials",
    "connect",
    "errors",
    "idempotent_methods",
    "method_timeouts",
    "service_config",
    "static_claim",
]
