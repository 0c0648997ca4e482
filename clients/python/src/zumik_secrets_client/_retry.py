"""Which methods may be retried, and the gRPC service config that retries them.

The rule: a method is idempotent, and so retried on ``UNAVAILABLE``, when its contract says so
with ``option (zumik.secrets.v1.method_policy) = { idempotent: true }``. The two constants below
adjust that rule without regenerating code. Methods are named by their full gRPC path,
``/zumik.secrets.v1.KeyService/GetApiKey``.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from collections.abc import Iterable
from typing import Final

import zumik.secrets.v1
from google.protobuf.descriptor import FileDescriptor
from zumik.secrets.v1 import options_pb2

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
        ``NEVER_RETRIED_METHODS``.
    """
    chosen = (_contract_idempotent_methods() | EXTRA_IDEMPOTENT_METHODS) - NEVER_RETRIED_METHODS
    return tuple(sorted(chosen))


def service_config(methods: Iterable[str]) -> str:
    """Build a gRPC service config (JSON) that retries ``methods`` under ``RETRY_POLICY``.

    Args:
        methods: full method names, ``/package.Service/Method``.

    Returns:
        The JSON text for the ``grpc.service_config`` channel option. Methods not listed get
        no retry policy (gRPC then never retries them).

    Raises:
        ValueError: if a method name is not of the form ``/package.Service/Method``.
    """
    names: list[dict[str, str]] = []
    for full_name in methods:
        service, sep, method = full_name.removeprefix("/").partition("/")
        if not full_name.startswith("/") or not sep or not service or not method or "/" in method:
            raise ValueError(f"not a full gRPC method name: {full_name!r}")
        names.append({"service": service, "method": method})
    config: dict[str, object] = {"methodConfig": []}
    if names:
        config["methodConfig"] = [{"name": names, "retryPolicy": RETRY_POLICY}]
    return json.dumps(config, sort_keys=True)
