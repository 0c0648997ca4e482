"""What the contracts declare about each RPC and field, read once from the descriptors.

The `.proto` files are the single place where a method's guard (`method_policy`) and a field's
secrecy (`sensitive`) are declared. This module turns those options into plain lookups for the
interceptors, the telemetry and the error redaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from zumik.secrets.v1 import (
    audit_service_pb2,
    break_glass_service_pb2,
    fingerprint_service_pb2,
    key_service_pb2,
    options_pb2,
    seal_service_pb2,
    tenant_service_pb2,
)

#: Every service of the API, in the order they are documented.
SERVICE_DESCRIPTORS: tuple[_descriptor.ServiceDescriptor, ...] = (
    key_service_pb2.DESCRIPTOR.services_by_name["KeyService"],
    seal_service_pb2.DESCRIPTOR.services_by_name["SealService"],
    fingerprint_service_pb2.DESCRIPTOR.services_by_name["FingerprintService"],
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
    tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"],
    break_glass_service_pb2.DESCRIPTOR.services_by_name["BreakGlassService"],
)

#: Methods open to any peer that completed mutual TLS (no policy entry needed).
OPEN_METHODS: frozenset[str] = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}
)


@dataclass(frozen=True, slots=True)
class MethodGuard:
    """The guard declared on one RPC.

    Attributes:
        full_method: `/package.Service/Method`, as gRPC names it on the wire.
        service: Short service name (`KeyService`).
        method: Short method name (`CreateApiKey`).
        scope: Scope the tenant claim must carry; empty when not tenant-scoped.
        tenant_scoped: Whether the call acts on a tenant's resource.
        resource_field: Request field holding that resource's name.
        audit_allow: Whether allowed calls are audited.
        idempotent: Whether clients may retry the call.
        input_type: The request message class.
    """

    full_method: str
    service: str
    method: str
    scope: str
    tenant_scoped: bool
    resource_field: str
    audit_allow: bool
    idempotent: bool
    input_type: type[Message]


def _message_class(desc: _descriptor.Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


@cache
def method_guards() -> dict[str, MethodGuard]:
    """Every RPC of the API keyed by `/package.Service/Method`.

    Raises:
        RuntimeError: when a method has no `method_policy` or an inconsistent one; the server
            refuses to start rather than serve an unguarded method.
    """
    guards: dict[str, MethodGuard] = {}
    for service in SERVICE_DESCRIPTORS:
        for method in service.methods:
            full = f"/{service.full_name}/{method.name}"
            opts = method.GetOptions()
            if not opts.HasExtension(options_pb2.method_policy):
                raise RuntimeError(f"{full} declares no method_policy")
            policy = opts.Extensions[options_pb2.method_policy]
            binding = policy.tenant_binding
            if binding == options_pb2.TENANT_BINDING_RESOURCE:
                field = method.input_type.fields_by_name.get(policy.resource_field)
                if field is None or field.type != _descriptor.FieldDescriptor.TYPE_STRING:
                    raise RuntimeError(
                        f"{full}: resource_field {policy.resource_field!r} is not a string field"
                    )
                if not policy.scope:
                    raise RuntimeError(f"{full}: tenant-scoped method without a scope")
            elif binding != options_pb2.TENANT_BINDING_NONE:
                raise RuntimeError(f"{full}: tenant_binding is unspecified")
            guards[full] = MethodGuard(
                full_method=full,
                service=service.name,
                method=method.name,
                scope=policy.scope,
                tenant_scoped=binding == options_pb2.TENANT_BINDING_RESOURCE,
                resource_field=policy.resource_field,
                audit_allow=policy.audit_allow,
                idempotent=policy.idempotent,
                input_type=_message_class(method.input_type),
            )
    return guards


def _all_messages() -> Iterator[_descriptor.Descriptor]:
    seen: set[str] = set()
    stack: list[_descriptor.Descriptor] = []
    for module in (
        key_service_pb2,
        seal_service_pb2,
        fingerprint_service_pb2,
        audit_service_pb2,
        tenant_service_pb2,
    ):
        stack.extend(module.DESCRIPTOR.message_types_by_name.values())
    while stack:
        desc = stack.pop()
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        yield desc
        stack.extend(desc.nested_types)


def is_sensitive(field: _descriptor.FieldDescriptor) -> bool:
    """Whether the contracts mark ``field`` as carrying secret material."""
    return bool(field.GetOptions().Extensions[options_pb2.sensitive])


@cache
def sensitive_fields() -> frozenset[str]:
    """Full names (`zumik.secrets.v1.SealRequest.plaintext`) of every sensitive field."""
    return frozenset(
        f.full_name for desc in _all_messages() for f in desc.fields if is_sensitive(f)
    )


def all_fields() -> Iterator[_descriptor.FieldDescriptor]:
    """Every field of every message of the API (for contract tests)."""
    for desc in _all_messages():
        yield from desc.fields
