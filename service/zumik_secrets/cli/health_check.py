"""`zumik-secrets health`: ask the local server's gRPC health service, over mutual TLS.

Kubernetes' native gRPC probe cannot present a client certificate, and the server requires one
for every connection (health included). So the deployment probes with an ``exec`` probe that runs
this command inside the container: it connects to the server's own port on loopback with the
pod's own certificate (issued for both server and client authentication), so no plaintext port
and no exception to "every RPC runs behind mTLS" is needed.

Exit status: 0 when the answer is what the probe needs (``SERVING``; with ``--live`` any answer,
since a server that answers NOT_SERVING is alive, only not ready), 1 otherwise, 2 when the
command itself is misconfigured (missing files, bad address).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from zumik_secrets.server.config import DEFAULT_LISTEN
from zumik_secrets.server.tls import channel_credentials

__all__ = ["HealthCheck", "check_from_env", "loopback_target", "run_health_check"]

# Addresses that mean "every interface": a probe inside the pod reaches them on loopback. Only
# compared against, never bound.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})  # noqa: S104


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """What to check and how to connect."""

    target: str
    """``host:port`` to dial."""
    cert_file: str
    """Client certificate (PEM) to present."""
    key_file: str
    """Its private key (PEM)."""
    ca_file: str
    """CA bundle that the server certificate must chain to."""
    server_name: str
    """Name to verify in the server certificate (a DNS SAN of it)."""
    service: str = ""
    """Health service name; empty for the whole server."""
    timeout: float = 3.0
    """Seconds for the whole check."""
    live: bool = False
    """Succeed on any health answer (liveness), not only SERVING (readiness)."""


def loopback_target(listen: str) -> str:
    """Turn the server's listen address into one the probe can dial from inside the pod.

    Args:
        listen: ``ZUMIK_LISTEN``, e.g. ``0.0.0.0:50051``, ``[::]:50051`` or ``10.1.2.3:50051``.

    Returns:
        ``127.0.0.1:<port>`` for a wildcard host, else ``listen`` unchanged.

    Raises:
        ValueError: ``listen`` has no numeric port.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"ZUMIK_LISTEN has no port: {listen!r}")
    if host in _WILDCARD_HOSTS:
        return f"127.0.0.1:{port}"
    return listen


def run_health_check(check: HealthCheck) -> tuple[bool, str]:
    """Call ``grpc.health.v1.Health/Check`` once.

    Returns:
        (ok, what happened), where ``what happened`` is the serving status name or the gRPC
        status code of a failed call; it never holds certificate or key material.

    Raises:
        TlsConfigError: a certificate, key or CA file is missing or malformed.
    """
    credentials = channel_credentials(check.ca_file, check.cert_file, check.key_file)
    options = [("grpc.ssl_target_name_override", check.server_name)]
    with grpc.secure_channel(check.target, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=check.service), timeout=check.timeout
            )
        except grpc.RpcError as exc:
            # Raised errors are also grpc.Call objects at run time; the stubs cannot say so.
            code = getattr(exc, "code", lambda: None)()
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            return False, f"no answer ({name})"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    ok = check.live or response.status == health_pb2.HealthCheckResponse.SERVING
    return ok, status


def check_from_env(
    *,
    target: str | None,
    cert: str | None,
    key: str | None,
    ca: str | None,
    server_name: str,
    service: str,
    timeout: float,
    live: bool,
) -> HealthCheck:
    """Build a :class:`HealthCheck`, defaulting to the server's own ``ZUMIK_*`` settings.

    The server's certificate doubles as the client certificate when it carries the client-auth
    usage (the Kubernetes Certificate asks for both), so the probe needs no extra secret.

    Raises:
        ValueError: no certificate, key or CA is configured, or the listen address has no port.
    """
    env = os.environ
    resolved_target = target or loopback_target(env.get("ZUMIK_LISTEN", DEFAULT_LISTEN))
    files = {
        "--cert (or ZUMIK_TLS_CERT)": cert or env.get("ZUMIK_TLS_CERT", ""),
        "--key (or ZUMIK_TLS_KEY)": key or env.get("ZUMIK_TLS_KEY", ""),
        "--ca (or ZUMIK_TLS_CLIENT_CA)": ca or env.get("ZUMIK_TLS_CLIENT_CA", ""),
    }
    missing = [name for name, value in files.items() if not value]
    if missing:
        raise ValueError("not configured: " + ", ".join(missing))
    cert_file, key_file, ca_file = files.values()
    return HealthCheck(
        target=resolved_target,
        cert_file=cert_file,
        key_file=key_file,
        ca_file=ca_file,
        server_name=server_name,
        service=service,
        timeout=timeout,
        live=live,
    )
