"""Helpers for calling the Zumik Secrets gRPC API from Python.

``connect()`` opens a mutually authenticated TLS channel that attaches the caller's tenant claim,
applies a default deadline, and retries ``UNAVAILABLE`` only on idempotent methods. The generated
messages and stubs live in ``zumik.secrets.v1``.
"""

from zumik_secrets_client._channel import CLAIM_METADATA_KEY, DefaultsInterceptor, connect
from zumik_secrets_client._retry import (
    EXTRA_IDEMPOTENT_METHODS,
    NEVER_RETRIED_METHODS,
    RETRY_POLICY,
    idempotent_methods,
    service_config,
)

__all__ = [
    "CLAIM_METADATA_KEY",
    "EXTRA_IDEMPOTENT_METHODS",
    "NEVER_RETRIED_METHODS",
    "RETRY_POLICY",
    "DefaultsInterceptor",
    "connect",
    "idempotent_methods",
    "service_config",
]
