"""Attack matrix: every RPC of every service, attacked every way the guards must refuse.

Generated from the contracts (``tests/security/rpcs.py``) and the dev policy, so a new RPC gets
its rows without an edit here. One test item per (RPC, attack); each item makes every call of
its attack (every unlisted identity, every forged claim, ...) and reports all unexpected answers
at once. Counts per service are printed in the terminal summary ("hardening suite: cases run").

Attacks and the answer each must get:

1. no client certificate                       -> UNAVAILABLE (handshake refused)
2. client certificate of another CA            -> UNAVAILABLE (handshake refused)
3. each identity the policy does not allow     -> PERMISSION_DENIED METHOD_NOT_ALLOWED, and an
   identity the policy does not name           -> PERMISSION_DENIED UNKNOWN_IDENTITY
4. no claim, as each allowed identity that needs one -> UNAUTHENTICATED CLAIM_MISSING
5. claim for another tenant (and for the `-` wildcard tenant) -> NOT_FOUND
6. claim for the right tenant, another project -> NOT_FOUND
7. expired / future-dated / wrong-audience / unknown-kid / alg none / flipped-signature claim
                                               -> UNAUTHENTICATED with the claim's reason
8. the name of a resource that *exists* in another tenant -> NOT_FOUND

The NOT_FOUND rule (5, 6, 8): the answer must be byte-identical (``status_bytes``) to

* the canonical "missing resource" status, ``to_status(resource_not_found(name))``, which is the
  one answer servicers are required to give for a missing resource of the caller's own tenant;
* for a method that names one resource (``name`` field with an id) and is implemented, the live
  answer to a missing name of the caller's *own* tenant, after swapping in that name. Tenant and
  project ids are chosen with equal lengths (``tenant-a``/``tenant-b``, ``proj``/``othr``) so the
  swap keeps every length prefix of the serialized status intact. While the method answers
  UNIMPLEMENTED for its own tenant there is no live answer to compare with, so the canonical
  status is the reference (what the interceptor says for a missing-looking foreign name);
* for 8, the answer for a foreign name that does not exist (same length, swapped): existence in
  another tenant must not change a byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import status_pb2

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info, status_bytes
from tests.security.claims import bad_claims
from tests.security.conftest import dev_policy, role_of
from tests.security.report import count_cases
from tests.security.rpcs import Rpc, all_rpcs, by_name, fill_shape, random_body
from zumik_secrets.api.status import to_status
from zumik_secrets.cli.dev_pki import CertPair, DevPki
from zumik_secrets.core.errors import resource_not_found

pytestmark = pytest.mark.integration

OWN, OTHER = "tenant-a", "tenant-b"  # equal lengths: see the module docstring
PROJECT, OTHER_PROJECT = "proj", "othr"
POLICY = dev_policy()

CASES = (
    "no-client-cert",
    "rogue-ca",
    "identity-not-allowed",
    "no-claim",
    "claim-other-tenant",
    "claim-other-project",
    "bad-claim",
    "other-tenant-resource",
)


def allowed(rpc: Rpc) -> list[str]:
    return [i for i in POLICY.identities if POLICY.decide(i, rpc.full_method).allowed]


def needs_claim(rpc: Rpc) -> list[str]:
    return [i for i in allowed(rpc) if not POLICY.decide(i, rpc.full_method).without_claim]


def applies(rpc: Rpc, case: str) -> bool:
    scoped = rpc.guard.tenant_scoped and rpc.shape is not None and bool(allowed(rpc))
    return {
        "no-claim": scoped and bool(needs_claim(rpc)),
        "claim-other-tenant": scoped,
        "claim-other-project": scoped and rpc.has_project,
        "bad-claim": bool(allowed(rpc)),
        "other-tenant-resource": scoped,
    }.get(case, True)


def matrix() -> Iterator[Any]:
    for rpc in all_rpcs():
        for case in CASES:
            if applies(rpc, case):
                yield pytest.param(rpc, case, id=f"{rpc.name}-{case}")


def caller(rpc: Rpc) -> str:
    """The role that makes the claim-bearing calls: one that needs a claim if there is one."""
    return role_of((needs_claim(rpc) or allowed(rpc))[0])


def scopes(rpc: Rpc) -> tuple[str, ...]:
    return (rpc.guard.scope,) if rpc.guard.scope else ("keys.read",)


def canonical(name: str) -> bytes:
    """The status every missing resource called ``name`` must get, serialized."""
    trailing = dict(to_status(resource_not_found(name)).trailing_metadata)
    proto = status_pb2.Status()
    proto.ParseFromString(trailing["grpc-status-details-bin"])
    return proto.SerializeToString(deterministic=True)


class Outcomes:
    """Collects every unexpected answer of one test item."""

    def __init__(self) -> None:
        self.cases = 0
        self.live = 0  # NOT_FOUND answers compared with the caller's own missing resource
        self.problems: list[str] = []

    def refused(
        self,
        label: str,
        call: Callable[[], object],
        code: grpc.StatusCode,
        reason: str | None = None,
    ) -> grpc.RpcError | None:
        self.cases += 1
        try:
            call()
        except grpc.RpcError as err:
            if err.code() != code:  # type: ignore[attr-defined]
                self.problems.append(
                    f"{label}: got {err.code()} {err.details()!r}, want {code}"  # type: ignore[attr-defined]
                )
                return None
            if reason is not None:
                got = error_info(err).reason
                if got != reason:
                    self.problems.append(f"{label}: reason {got}, want {reason}")
                    return None
            return err
        self.problems.append(f"{label}: the call succeeded, want {code}")
        return None

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture(scope="module")
def foreign_resources(module_server: RunningServer) -> dict[str, str]:
    """Resources that really exist in tenant OTHER, by collection (`apiKeys`, `secrets`, ...).

    Made through the RPCs themselves; a kind whose create RPC is not implemented yet is absent
    (its attack 8 then names a foreign resource that does not exist, and says so).
    """
    found: dict[str, str] = {}
    parent = f"tenants/{OTHER}/projects/{PROJECT}"

    def attempt(
        collection: str,
        rpc_name: str,
        role: str,
        build: Callable[[Rpc], Message],
        pick: Callable[[Any], str],
        claim_scopes: tuple[str, ...] = (),
    ) -> None:
        rpc = by_name(rpc_name)
        claim = module_server.mint_claim(OTHER, PROJECT, claim_scopes) if claim_scopes else None
        try:
            answer = rpc.call(module_server.channel(role, claim=claim), build(rpc))
        except grpc.RpcError:
            return
        name = pick(answer)
        if name:
            found[collection] = name

    attempt(
        "apiKeys",
        "KeyService.CreateApiKey",
        "control-plane",
        lambda r: r.request(_resource=parent, scopes=["keys.read"]),
        lambda a: a.api_key.name,
    )
    attempt(
        "sessions",
        "KeyService.CreateSession",
        "control-plane",
        lambda r: r.request(_resource=parent, user_subject="user-1", scopes=["keys.read"]),
        lambda a: a.session.name,
    )
    attempt(
        "secrets",
        "SealService.Seal",
        "console",
        lambda r: r.request(_resource=parent, plaintext=b"matrix foreign secret 01"),
        lambda a: a.secret.name,
        ("secrets.seal",),
    )
    attempt(
        "handles",
        "FingerprintService.MintHandle",
        "console",
        lambda r: r.request(_resource=f"tenants/{OTHER}", kind="hdl", reference="ref-1"),
        lambda a: a.handle.name,
        ("handles.write",),
    )
    attempt(
        "purgeReceipts",
        "TenantService.PurgeProject",
        "control-plane",
        lambda r: r.request(_resource=f"tenants/{OTHER}/projects/gone"),
        lambda a: a.receipt.name,
    )
    return found


def _collection(shape: str) -> str | None:
    parts = shape.split("/")
    return parts[-2] if "{id}" in parts[-1] and len(parts) >= 2 else None


@pytest.mark.parametrize(("rpc", "case"), list(matrix()))
def test_attack_is_refused(
    rpc: Rpc,
    case: str,
    module_server: RunningServer,
    policy_pki: DevPki,
    rogue_pki: DevPki,
    stranger_cert: CertPair,
    foreign_resources: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    server = module_server
    out = Outcomes()
    own_request = rpc.request(OWN, PROJECT) if rpc.shape else rpc.guard.input_type()

    def as_role(
        role: str | CertPair, claim: str | None, req: Message | None = None
    ) -> Callable[[], object]:
        channel = server.channel(role, claim=claim)
        return lambda: rpc.call(channel, req if req is not None else own_request)

    if case == "no-client-cert":
        creds = grpc.ssl_channel_credentials(root_certificates=policy_pki.ca_cert.read_bytes())
        with grpc.secure_channel(server.target, creds) as channel:
            out.refused(
                case, lambda: rpc.call(channel, own_request, timeout=3), grpc.StatusCode.UNAVAILABLE
            )
    elif case == "rogue-ca":
        # Same trust domain and role names, another CA: the handshake must fail.
        role = caller(rpc) if allowed(rpc) else "console"
        out.refused(case, as_role(rogue_pki.client(role), None), grpc.StatusCode.UNAVAILABLE)
    elif case == "identity-not-allowed":
        for identity in POLICY.identities:
            if identity in allowed(rpc):
                continue
            out.refused(
                f"{case} {role_of(identity)}",
                as_role(role_of(identity), None),
                grpc.StatusCode.PERMISSION_DENIED,
                "METHOD_NOT_ALLOWED",
            )
        out.refused(
            f"{case} stranger",
            as_role(stranger_cert, None),
            grpc.StatusCode.PERMISSION_DENIED,
            "UNKNOWN_IDENTITY",
        )
        # A valid claim does not make an unlisted identity acceptable.
        claim = server.mint_claim(OWN, PROJECT, scopes(rpc))
        out.refused(
            f"{case} stranger with claim",
            as_role(stranger_cert, claim),
            grpc.StatusCode.PERMISSION_DENIED,
            "UNKNOWN_IDENTITY",
        )
    elif case == "no-claim":
        for identity in needs_claim(rpc):
            out.refused(
                f"{case} {role_of(identity)}",
                as_role(role_of(identity), None),
                grpc.StatusCode.UNAUTHENTICATED,
                "CLAIM_MISSING",
            )
    elif case == "bad-claim":
        for label, (claim, reason) in bad_claims(server, OWN, PROJECT, scopes(rpc)).items():
            err = out.refused(
                f"{case} {label}",
                as_role(caller(rpc), claim),
                grpc.StatusCode.UNAUTHENTICATED,
                reason,
            )
            if err is not None and claim in (err.details() or ""):
                out.problems.append(f"{case} {label}: the claim is echoed in the error")
    else:
        _not_found_cases(rpc, case, server, out, foreign_resources)
    count_cases(request, "attack matrix", rpc.guard.service, out.cases)
    if out.live:
        count_cases(request, "NOT_FOUND byte-compared with own tenant", rpc.guard.service, out.live)
    if case == "other-tenant-resource" and rpc.shape and _collection(rpc.shape):
        exists = _collection(rpc.shape) in foreign_resources
        count_cases(
            request,
            "foreign resource really existed" if exists else "foreign resource not creatable yet",
            rpc.guard.service,
            1,
        )
    out.check()


def _not_found_cases(
    rpc: Rpc,
    case: str,
    server: RunningServer,
    out: Outcomes,
    foreign_resources: dict[str, str],
) -> None:
    assert rpc.shape is not None
    role = caller(rpc)
    claim = server.mint_claim(OWN, PROJECT, scopes(rpc))
    channel = server.channel(role, claim=claim)
    body = random_body()
    own_name = fill_shape(rpc.shape, OWN, PROJECT, body)

    def foreign(label: str, name: str, swap_to: str) -> bytes | None:
        err = out.refused(
            f"{case} {label} {name}",
            lambda: rpc.call(channel, rpc.request(_resource=name)),
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
        )
        if err is None:
            return None
        got = status_bytes(err)
        if got != canonical(name):
            out.problems.append(f"{case} {label}: status differs from the canonical NOT_FOUND")
        if len(name) == len(swap_to):
            return got.replace(name.encode(), swap_to.encode())
        return None

    if case == "claim-other-tenant":
        swapped = foreign("other tenant", fill_shape(rpc.shape, OTHER, PROJECT, body), own_name)
        foreign("wildcard tenant", fill_shape(rpc.shape, "-", PROJECT, body), own_name)
    elif case == "claim-other-project":
        swapped = foreign(
            "other project", fill_shape(rpc.shape, OWN, OTHER_PROJECT, body), own_name
        )
    else:  # other-tenant-resource
        collection = _collection(rpc.shape)
        existing = foreign_resources.get(collection or "")
        if existing is None or not collection:
            # Tenant-level shapes (settings, parents) need no existing row; an id shape whose
            # create RPC is not implemented yet falls back to a foreign name that is missing.
            existing = fill_shape(rpc.shape, OTHER, PROJECT, body)
            swapped = foreign("foreign", existing, own_name)
        else:
            missing = existing[:-22] + body
            own_name = fill_shape(rpc.shape, OWN, PROJECT, body)
            found = foreign("existing", existing, missing)
            absent = foreign("missing", missing, own_name)
            if (
                found is not None
                and absent is not None
                and found != absent.replace(own_name.encode(), missing.encode())
            ):
                out.problems.append(f"{case}: an existing foreign resource answers differently")
            swapped = absent
    _compare_with_own_missing(rpc, channel, own_name, swapped, out)


def _compare_with_own_missing(
    rpc: Rpc, channel: grpc.Channel, own_name: str, swapped: bytes | None, out: Outcomes
) -> None:
    """Live comparison with the caller's own missing resource, for single-resource methods."""
    if swapped is None or rpc.guard.resource_field != "name" or "{id}" not in (rpc.shape or ""):
        return
    try:
        rpc.call(channel, rpc.request(_resource=own_name))
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
            return  # nothing live to compare with yet: the canonical check above stands
        if err.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            out.problems.append(
                f"own missing {own_name}: got {err.code()}, want NOT_FOUND"  # type: ignore[attr-defined]
            )
            return
        out.live += 1
        if status_bytes(err) != swapped:
            out.problems.append(
                "the foreign answer differs from the answer for a missing resource of the "
                "caller's own tenant"
            )
        return
    out.problems.append(f"own missing {own_name}: the call succeeded, want NOT_FOUND")


def test_matrix_covers_every_rpc_of_every_service() -> None:
    """Counts RPCs per service from the descriptors; every one must have its rows."""
    from zumik_secrets.api.contracts import SERVICE_DESCRIPTORS

    rows = {(rpc.name, case) for rpc in all_rpcs() for case in CASES if applies(rpc, case)}
    problems = []
    counts = {}
    for service in SERVICE_DESCRIPTORS:
        counts[service.name] = len(service.methods)
        for method in service.methods:
            name = f"{service.name}.{method.name}"
            rpc = by_name(name)
            need = {"no-client-cert", "rogue-ca", "identity-not-allowed", "bad-claim"}
            if rpc.guard.tenant_scoped:
                need |= {"claim-other-tenant", "other-tenant-resource"}
                if rpc.shape is None:
                    problems.append(f"{name}: no resource shape (proto comment or SHAPE_OVERRIDES)")
                if rpc.has_project:
                    need.add("claim-other-project")
            if not allowed(rpc):
                problems.append(f"{name}: no identity of the dev policy may call it")
            missing = sorted(c for c in need if (name, c) not in rows)
            if missing:
                problems.append(f"{name}: no matrix row for {missing}")
    assert sum(counts.values()) == len(all_rpcs())
    assert not problems, "\n".join(problems)
    print("RPCs per service:", counts, "matrix rows:", len(rows))
