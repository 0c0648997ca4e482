"""Which methods may be retried, their deadlines, and the gRPC service config built from both.

The rule: a method is idempotent, and so retried on ``UNAVAILABLE``, when its contract says so
with ``option (zumik.secrets.v1.method_policy) = { idempotent: true }`` and it is not one of the
``DESTRUCTIVE_METHODS``, which are never retried whatever their marker says (a purge or a key
destruction is repeated only by a person who decided to). The constants below adjust the rule
without regenerating code. Methods are named by their full gRPC path,
``/zumik.secrets.v1.KeyService/GetApiKey``.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from collections.abc import Iterable, Mapping
from typing import Final

import zumik.secrets.v1
from google.protobuf.descriptor import FileDescriptor
from zumik.secrets.v1 import options_pb2

#: Methods that destroy data irreversibly: never retried automatically, whatever the contract.
DESTRUCTIVE_METHODS: Final[frozenset[str]] = frozenset(
    {
        "/zumik.secrets.v1.TenantService/PurgeTenant",
        "/zumik.secrets.v1.TenantService/PurgeProject",
        "/zumik.secrets.v1.SealService/DestroyDataKeyVersion",
    }
)
#: Methods retried even though their contract does not mark them idempotent.
EXTRA_IDEMPOTENT_METHODS: frozenset[str] = frozenset()
#: Methods never retried even though their contract marks them idempotent.
NEVER_RETRIED_METHODS: frozenset[str] = frozenset()

#: The retry policy of idempotent methods (gRPC service config ``retryPolicy``). Retries stay
#: within the call's deadline, and a retry happens only before any response has arrived.
RETRY_POLICY: Final[dict[str, object]] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def _file_descriptors() -> list[FileDescriptor]:
    """Import every generated ``*_pb2`` module of zumik.secrets.v1 and return its descriptor."""
    descriptors: list[FileDescriptor] = []
    for info in sorted(pkgutil.iter_modules(zumik.secrets.v1.__path__), key=lambda m: m.name):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"{zumik.secrets.v1.__name__}.{info.name}")
            descriptor: FileDescriptor = module.DESCRIPTOR
            descriptors.append(descriptor)
    return descriptors


@functools.cache
def _contract_idempotent_methods() -> frozenset[str]:
    """Full names of the methods whose method_policy says ``idempotent: true``."""
    found: set[str] = set()
    for file in _file_descriptors():
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(options_pb2.method_policy):
                    continue
                if options.Extensions[options_pb2.method_policy].idempotent:
                    found.add(f"/{service.full_name}/{method.name}")
    return frozenset(found)


def idempotent_methods() -> tuple[str, ...]:
    """Return the sorted full names of the methods the client retries.

    Returns:
        The contract's idempotent methods plus ``EXTRA_IDEMPOTENT_METHODS``, minus
        ``NEVER_RETRIED_METHODS`` and ``DESTRUCTIVE_METHODS``.
    """
    chosen = (_contract_idempotent_methods() | EXTRA_IDEMPOTENT_METHODS) - (
        NEVER_RETRIED_METHODS | DESTRUCTIVE_METHODS
    )
    return tuple(sorted(chosen))


@functools.cache
def _contract_methods() -> tuple[tuple[str, bool, bool], ...]:
    """(full name, server-streaming, needs a tenant claim) of every method in the contracts."""
    found: list[tuple[str, bool, bool]] = []
    for file in _file_descriptors():
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                binding = options_pb2.TENANT_BINDING_UNSPECIFIED
                if options.HasExtension(options_pb2.method_policy):
                    binding = options.Extensions[options_pb2.method_policy].tenant_binding
                found.append(
                    (
                        f"/{service.full_name}/{method.name}",
                        bool(method.server_streaming),
                        binding != options_pb2.TENANT_BINDING_NONE,
                    )
                )
    return tuple(sorted(found))


def contract_methods() -> tuple[str, ...]:
    """Return the sorted full names of every method the contracts declare."""
    return tuple(name for name, _, _ in _contract_methods())


def claimless_methods() -> frozenset[str]:
    """Methods that act for no tenant (``TENANT_BINDING_NONE``): a claim is never sent to them."""
    return frozenset(name for name, _, needs_claim in _contract_methods() if not needs_claim)


#: Default deadline of a unary call, in seconds.
DEFAULT_TIMEOUT: Final = 5.0
#: Default deadline of a server-streaming call (an audit export), in seconds.
STREAM_TIMEOUT: Final = 300.0
#: Server streams that stay open as long as the caller follows them (the revocation feed): no
#: default deadline (the server ends them when it drains or the connection reaches its age).
LONG_LIVED_STREAMS: Final[frozenset[str]] = frozenset(
    {"/zumik.secrets.v1.KeyService/WatchRevocations"}
)
#: Methods that do a tenant's worth of work in one call get longer default deadlines.
LONG_RUNNING_TIMEOUTS: Final[dict[str, float]] = {
    "/zumik.secrets.v1.TenantService/PurgeTenant": 120.0,
    "/zumik.secrets.v1.TenantService/PurgeProject": 120.0,
    "/zumik.secrets.v1.TenantService/RunRetention": 120.0,
    "/zumik.secrets.v1.SealService/RewrapSecrets": 120.0,
    "/zumik.secrets.v1.AuditService/VerifyChain": 60.0,
}


def method_timeouts(
    default_timeout: float | None = DEFAULT_TIMEOUT,
    stream_timeout: float | None = STREAM_TIMEOUT,
    overrides: Mapping[str, float | None] | None = None,
) -> dict[str, float | None]:
    """Return the deadline of every contract method (None: no deadline from the config).

    Unary methods get ``default_timeout`` (``LONG_RUNNING_TIMEOUTS`` the longer ones),
    server-streaming ones ``stream_timeout`` (``LONG_LIVED_STREAMS`` none); ``overrides``
    (full method names) win.
    """
    timeouts: dict[str, float | None] = {}
    for name, streaming, _ in _contract_methods():
        if name in LONG_LIVED_STREAMS:
            timeouts[name] = None
        elif streaming:
            timeouts[name] = stream_timeout
        elif name in LONG_RUNNING_TIMEOUTS and default_timeout is not None:
            timeouts[name] = max(default_timeout, LONG_RUNNING_TIMEOUTS[name])
        else:
            timeouts[name] = default_timeout
    for name, seconds in (overrides or {}).items():
        _split(name)
        if seconds is not None and not seconds > 0:
            raise ValueError(f"deadline of {name} must be a positive number of seconds")
        timeouts[name] = seconds
    return timeouts


def _split(full_name: str) -> dict[str, str]:
    service, sep, method = full_name.removeprefix("/").partition("/")
    if not full_name.startswith("/") or not sep or not service or not method or "/" in method:
        raise ValueError(f"not a full gRPC method name: {full_name!r}")
    return {"service": service, "method": method}


def _duration(seconds: float) -> str:
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{text}s"


LOAD_BALANCING_POLICIES: Final = frozenset({"pick_first", "round_robin"})


def service_config(
    methods: Iterable[str],
    *,
    timeouts: Mapping[str, float | None] | None = None,
    default_timeout: float | None = None,
    load_balancing: str | None = None,
) -> str:
    """Build a gRPC service config (JSON): retries for ``methods``, deadlines, load balancing.

    Args:
        methods: full method names, ``/package.Service/Method``, retried on ``UNAVAILABLE``
            under ``RETRY_POLICY``; methods not listed are never retried.
        timeouts: per-method deadlines in seconds (None: none from the config). gRPC uses
            the shorter of this and the deadline a call passes.
        default_timeout: deadline of every method not in ``timeouts`` (health checks, ...).
        load_balancing: ``"round_robin"`` or ``"pick_first"`` (gRPC's default), or None.

    Returns:
        The JSON text for the ``grpc.service_config`` channel option.

    Raises:
        ValueError: if a method name is not of the form ``/package.Service/Method``, a deadline
            is not positive, or the load-balancing policy is unknown.
    """
    retried = {name: _split(name) for name in methods}
    per_method = dict(timeouts or {})
    for name, seconds in per_method.items():
        _split(name)
        if seconds is not None and not seconds > 0:
            raise ValueError(f"deadline of {name} must be a positive number of seconds")
    # gRPC refuses a config naming a method twice: group methods with the same settings.
    groups: dict[tuple[bool, float | None], list[dict[str, str]]] = {}
    for name in sorted(set(retried) | set(per_method)):
        key = (name in retried, per_method.get(name))
        groups.setdefault(key, []).append(retried.get(name) or _split(name))
    entries: list[dict[str, object]] = []
    for (retry, seconds), names in sorted(
        groups.items(), key=lambda g: g[1][0]["service"] + g[1][0]["method"]
    ):
        entry: dict[str, object] = {"name": names}
        if retry:
            entry["retryPolicy"] = RETRY_POLICY
        if seconds is not None:
            entry["timeout"] = _duration(seconds)
        if len(entry) > 1:
            entries.append(entry)
    if default_timeout is not None:
        if not default_timeout > 0:
            raise ValueError("default_timeout must be a positive number of seconds")
        # An empty name is gRPC's default method config: every method not named elsewhere.
        entries.append({"name": [{}], "timeout": _duration(default_timeout)})
    config: dict[str, object] = {"methodConfig": entries}
    if load_balancing is not None:
        if load_balancing not in LOAD_BALANCING_POLICIES:
            raise ValueError(
                f"load_balancing must be one of {sorted(LOAD_BALANCING_POLICIES)}, "
                f"not {load_balancing!r}"
            )
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    return json.dumps(config, sort_keys=True)
