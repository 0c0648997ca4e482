"""The RPC inventory the hardening suite is generated from.

Everything here is derived from the contracts, so an RPC added to a ``.proto`` file is covered by
the attack matrix and the fuzzers without touching this module:

* the methods, their guards and request types come from :func:`api.contracts.method_guards`;
* unary vs server-streaming comes from the method descriptors;
* the *shape* of the resource name a method expects is read from the comment on the request's
  resource field in ``proto/zumik/secrets/v1/*.proto`` (every one of them quotes the pattern,
  e.g. ``// `tenants/{tenant}/projects/{project}/apiKeys/key_{id}`.``). ``SHAPE_OVERRIDES`` is the
  small table for a method whose comment does not say (empty today).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message

from zumik_secrets.api.contracts import SERVICE_DESCRIPTORS, MethodGuard, method_guards

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto" / "zumik" / "secrets" / "v1"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: Method short name -> resource-name pattern, for a method whose proto comment quotes none.
SHAPE_OVERRIDES: dict[str, str] = {}

#: Method short name -> the other fields a *valid* request needs (beyond the resource name), so
#: a call that passes authorization is judged by the servicer on the resource alone.
VALID_FIELDS: dict[str, dict[str, Any]] = {
    "CreateApiKey": {"scopes": ["keys.read"], "display_name": "matrix"},
    "CreateSession": {"user_subject": "user-1", "scopes": ["keys.read"]},
    "RevokeUserSessions": {"user_subject": "user-1"},
    "Seal": {"plaintext": b"valid request plaintext", "display_name": "matrix"},
    "UpdateSecret": {"plaintext": b"valid request plaintext 2"},
    "RotateDataKey": {"purpose": 1},
    "ListDataKeyVersions": {"purpose": 1},
    "DestroyDataKeyVersion": {"purpose": 1, "version": 1, "confirm_version": 1},
    "Fingerprint": {"namespace": "email", "values": [b"someone@example.com"]},
    "MatchFingerprint": {"namespace": "email", "value": b"someone@example.com"},
    "MintHandle": {"kind": "hdl", "reference": "internal-ref-1"},
    "AppendEvent": {"action": "billing.plan_changed", "target": "plan", "outcome": 1},
}

#: Server streams that stay open while the caller follows them (the revocation feed): a call
#: that gets past the guards is judged by its first message, then cancelled.
LONG_LIVED_STREAMS = frozenset({"WatchRevocations"})

#: Handle kind used for `{kind}` in handle names.
HANDLE_KIND = "hdl"


def random_body() -> str:
    """A canonical handle body: 128 random bits as 22 base62 characters."""
    from zumik_secrets.core.encoding import base62_encode

    return base62_encode(secrets.token_bytes(16), 22)


@dataclass(frozen=True)
class Rpc:
    """One RPC of the API, as the suite sees it."""

    guard: MethodGuard
    server_streaming: bool
    shape: str | None  # resource-name pattern, None for methods not tenant-scoped

    @property
    def full_method(self) -> str:
        return self.guard.full_method

    @property
    def name(self) -> str:
        return f"{self.guard.service}.{self.guard.method}"

    @property
    def has_project(self) -> bool:
        return self.shape is not None and "{project}" in self.shape

    def resource(self, tenant: str, project: str = "proj", body: str | None = None) -> str:
        """A well-formed resource name of this method's shape."""
        assert self.shape is not None, self.name
        return fill_shape(self.shape, tenant, project, body or random_body())

    def request(self, tenant: str = "acme", project: str = "proj", **fields: Any) -> Message:
        """A request whose resource field names a resource of ``tenant``/``project``."""
        msg = self.guard.input_type()
        if self.shape is not None:
            name = fields.pop("_resource", None) or self.resource(tenant, project)
            setattr(msg, self.guard.resource_field, name)
            if "confirm" in msg.DESCRIPTOR.fields_by_name:
                msg.confirm = name  # type: ignore[attr-defined]
        for key, value in {**VALID_FIELDS.get(self.guard.method, {}), **fields}.items():
            if isinstance(value, list):
                getattr(msg, key).extend(value)
            elif isinstance(value, dict):
                getattr(msg, key).update(value)
            elif isinstance(value, Message):
                getattr(msg, key).CopyFrom(value)
            else:
                setattr(msg, key, value)
        return msg

    def call(
        self,
        channel: grpc.Channel,
        request: Message | bytes,
        *,
        timeout: float = 5.0,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> list[Message] | Message | bytes:
        """Call the method over ``channel``; a streaming answer is drained into a list.

        ``request`` may be raw bytes (sent as they are, to reach the server's deserializer).

        Raises:
            grpc.RpcError: the call failed.
        """
        serialize: Callable[[Any], bytes] = (
            (lambda b: b) if isinstance(request, bytes) else (lambda m: m.SerializeToString())
        )
        output = self.output_type
        if self.server_streaming:
            stream = channel.unary_stream(
                self.full_method,
                request_serializer=serialize,
                response_deserializer=output.FromString,
            )
            call = stream(request, timeout=timeout, metadata=metadata)
            if self.guard.method in LONG_LIVED_STREAMS:
                try:
                    return [next(call)]
                finally:
                    call.cancel()
            return list(call)
        unary = channel.unary_unary(
            self.full_method, request_serializer=serialize, response_deserializer=output.FromString
        )
        return unary(request, timeout=timeout, metadata=metadata)  # type: ignore[no-any-return]

    @property
    def output_type(self) -> type[Message]:
        from google.protobuf import message_factory

        return message_factory.GetMessageClass(self.descriptor.output_type)

    @property
    def descriptor(self) -> _descriptor.MethodDescriptor:
        service = next(s for s in SERVICE_DESCRIPTORS if s.name == self.guard.service)
        return service.methods_by_name[self.guard.method]


def fill_shape(shape: str, tenant: str, project: str, body: str) -> str:
    """Fill `{tenant}`, `{project}`, `{kind}` and `{id}` of a resource-name pattern."""
    return (
        shape.replace("{tenant}", tenant)
        .replace("{project}", project)
        .replace("{kind}", HANDLE_KIND)
        .replace("{id}", body)
    )


_MESSAGE_RE = re.compile(r"^message\s+(\w+)\s*\{", re.M)
_PATTERN_RE = re.compile(r"`(tenants/[^`]*)`")


@cache
def field_comments() -> dict[tuple[str, str], str]:
    """(message, field) -> the comment lines right above the field, from the .proto sources."""
    out: dict[tuple[str, str], str] = {}
    for path in sorted(PROTO_DIR.glob("*.proto")):
        lines = path.read_text(encoding="utf-8").splitlines()
        message: str | None = None
        depth = 0
        comment: list[str] = []
        for line in lines:
            stripped = line.strip()
            match = _MESSAGE_RE.match(stripped)
            if match and depth == 0:
                message, depth, comment = match.group(1), 1, []
                continue
            if message is None:
                continue
            if stripped.startswith("//"):
                comment.append(stripped[2:].strip())
                continue
            field = re.match(r"^(?:repeated\s+|optional\s+)?[\w.<>, ]+\s+(\w+)\s*=\s*\d+", stripped)
            if field and depth == 1:
                out[(message, field.group(1))] = " ".join(comment)
            depth += stripped.count("{") - stripped.count("}")
            if depth <= 0:
                message, depth = None, 0
            comment = []
    return out


def _shape_for(guard: MethodGuard) -> str | None:
    if not guard.tenant_scoped:
        return None
    if guard.method in SHAPE_OVERRIDES:
        return SHAPE_OVERRIDES[guard.method]
    comment = field_comments().get((guard.input_type.DESCRIPTOR.name, guard.resource_field), "")
    found = _PATTERN_RE.findall(comment)
    # The first quoted pattern is the normal shape; `tenants/-` variants come after it.
    return found[0] if found else None


@cache
def all_rpcs() -> tuple[Rpc, ...]:
    """Every RPC of every service, in contract order."""
    rpcs = []
    for guard in method_guards().values():
        service = next(s for s in SERVICE_DESCRIPTORS if s.name == guard.service)
        method = service.methods_by_name[guard.method]
        if method.client_streaming:
            raise AssertionError(f"{guard.full_method}: client streaming is not covered yet")
        rpcs.append(Rpc(guard, bool(method.server_streaming), _shape_for(guard)))
    return tuple(rpcs)


def rpc_ids() -> list[str]:
    return [rpc.name for rpc in all_rpcs()]


def by_name(name: str) -> Rpc:
    """The RPC called ``Service.Method``."""
    return next(rpc for rpc in all_rpcs() if rpc.name == name)
