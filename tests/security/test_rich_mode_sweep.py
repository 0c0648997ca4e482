"""Secret-shaped values in every string field of every request, under rich telemetry (issue 16).

With the tenant in ``TELEMETRY_MODE_RICH`` (the access log and the span carry the request's
non-sensitive fields), each RPC of the contracts is called once per non-sensitive string field
(top level, repeated, map keys and values, nested messages) and per secret shape, with that
field holding a fresh random value of the shape: a 256-bit hex key, a 512-bit base64url token,
a live claim and its signature segment alone, a PEM private key, an API key and a session
token. The service must refuse them (``SECRET_IN_FIELD``, ``SECRET_IN_EVENT``, ``INVALID_NAME``
...) or redact them, and none may appear in a log record, a span, an error a client saw, an
audit event or the database file. Every value is also registered with the session-wide leak
sweep (``planted=True``), which checks the same haystacks again at the end of the run.
"""

from __future__ import annotations

import base64
import secrets
import time
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from tests import fix_leaks
from tests.fix_server import RunningServer
from tests.security.rpcs import Rpc, all_rpcs
from zumik_secrets.api.contracts import is_sensitive
from zumik_secrets.core.api_keys import generate_api_key
from zumik_secrets.core.session_tokens import new_session_token
from zumik_secrets.server.config import dev_policy_path

pytestmark = pytest.mark.integration

TENANT, PROJECT = "acme", "web"
SCOPES = (
    "keys.read",
    "keys.write",
    "sessions.read",
    "sessions.write",
    "secrets.seal",
    "secrets.open",
    "secrets.read",
    "secrets.admin",
    "fingerprints.compute",
    "fingerprints.admin",
    "handles.write",
    "handles.read",
    "audit.read",
    "audit.write",
    "tenant.admin",
    "tenant.purge",
)
_FD = _descriptor.FieldDescriptor


def _b64url(n: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(n)).rstrip(b"=").decode()


def shapes(server: RunningServer) -> dict[str, tuple[str, list[str]]]:
    """shape -> (value to send, the pieces the sweep looks for)."""
    claim = server.mint_claim(TENANT, PROJECT, ("keys.read",))
    signature = claim.rsplit(".", 1)[1]
    pem_body = base64.b64encode(secrets.token_bytes(48)).decode()
    pem = f"-----BEGIN PRIVATE KEY-----\n{pem_body}\n-----END PRIVATE KEY-----\n"
    api_key = generate_api_key("live").raw
    token, _ = new_session_token()
    hex_key = secrets.token_hex(32)
    b64_token = _b64url(64)
    return {
        "hex": (hex_key, [hex_key]),
        "base64url": (b64_token, [b64_token]),
        "jws": (claim, [claim, signature]),
        "jws-signature": (signature, [signature]),
        "pem": (pem, [pem_body]),
        "api-key": (api_key, [api_key]),
        "session-token": (token, [token]),
    }


def _roles() -> dict[str, list[str]]:
    policy = tomllib.loads(dev_policy_path().read_text(encoding="utf-8"))
    return {
        spiffe.rsplit("/", 1)[-1]: list(entry.get("allow", []))
        for spiffe, entry in policy["identities"].items()
    }


def role_for(rpc: Rpc) -> str:
    method = f"zumik.secrets.v1.{rpc.guard.service}/{rpc.guard.method}"
    for role, allowed in sorted(_roles().items(), key=lambda kv: kv[0] != "console"):
        if any(fnmatch(method, pattern) for pattern in allowed):
            return role
    raise AssertionError(f"no dev-policy role may call {method}")


def string_paths(descriptor: _descriptor.Descriptor, depth: int = 0) -> Iterator[tuple[str, ...]]:
    """Paths to every non-sensitive string slot of a request type (``*`` = an element, ``#``
    = a map key, ``=`` = a map value)."""
    if depth > 3:
        return
    for field in descriptor.fields:
        if is_sensitive(field):
            continue
        if field.type == _FD.TYPE_STRING:
            yield (field.name, "*") if field.is_repeated else (field.name,)
        elif field.type == _FD.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                yield (field.name, "#")
                if entry.fields_by_name["value"].type == _FD.TYPE_STRING:
                    yield (field.name, "=")
            elif not entry.full_name.startswith("google.protobuf."):
                for sub in string_paths(entry, depth + 1):
                    yield (field.name, *sub)


def planted(rpc: Rpc, path: tuple[str, ...], value: str) -> Message:
    """A valid request of ``rpc`` for acme/web with ``value`` at ``path``."""
    request = rpc.request(TENANT, PROJECT) if rpc.shape else rpc.guard.input_type()
    target: Any = request
    for i, part in enumerate(path):
        last = i == len(path) - 1
        nxt = path[i + 1] if not last else None
        if nxt == "*":
            getattr(target, part).append(value)
            return request
        if nxt == "#":
            getattr(target, part)[value] = "x"
            return request
        if nxt == "=":
            getattr(target, part)["k"] = value
            return request
        if last:
            setattr(target, part, value)
            return request
        target = getattr(target, part)
    return request


def test_secret_shaped_values_in_every_field_leak_nowhere(
    zumik_server: RunningServer,
) -> None:
    server = zumik_server
    server.stubs("control-plane").tenants.UpdateTenantSettings(
        tpb.UpdateTenantSettingsRequest(
            name=f"tenants/{TENANT}/settings",
            settings=tpb.TenantSettings(telemetry_mode=tpb.TELEMETRY_MODE_RICH),
            update_mask=field_mask_pb2.FieldMask(paths=["telemetry_mode"]),
        ),
        timeout=10,
    )
    claim = server.mint_claim(TENANT, PROJECT, SCOPES)
    channels: dict[str, grpc.Channel] = {}
    needles: list[tuple[str, bytes]] = []
    calls = refused = 0
    first_log = len(fix_leaks._HAY.logs)
    for rpc in all_rpcs():
        role = role_for(rpc)
        if role not in channels:
            channels[role] = server.channel(role, claim=claim)
        for path in string_paths(rpc.guard.input_type.DESCRIPTOR):
            for shape, (value, pieces) in shapes(server).items():
                where = f"{rpc.name}.{'.'.join(path)} ({shape})"
                for piece in pieces:
                    fix_leaks.REGISTRY.add(piece, f"planted {where}", planted=True)
                    needles.append((where, piece.encode()))
                calls += 1
                try:
                    rpc.call(channels[role], planted(rpc, path, value), timeout=10)
                except grpc.RpcError:
                    refused += 1
    assert calls > 300 and refused > 0
    time.sleep(0.3)  # non-durable audit events land within the group-commit bound
    server.runtime.audit.checkpoints.checkpoint_moved_heads()
    db = Path(server.runtime.config.database_url.removeprefix("sqlite:///"))
    haystacks = {
        "log records": b"\n".join(fix_leaks._HAY.logs[first_log:]),
        "spans": b"\n".join(fix_leaks._HAY.spans),
        "errors seen by clients": b"\n".join(fix_leaks._HAY.client_errors),
        "database": b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists()),
    }
    assert haystacks["log records"] and haystacks["database"]
    found = sorted(
        {
            f"{where} in {hay}"
            for where, needle in needles
            for hay, text in haystacks.items()
            if needle in text
        }
    )
    assert not found, found[:20]
    # Rich mode did show the requests, with the flagged values replaced.
    rich = [line for line in fix_leaks._HAY.logs[first_log:] if b'"request"' in line]
    assert rich and any(b"[REDACTED]" in line for line in rich)
