"""Attack matrix, authority classes: request fields that carry authority, and credentials used
after revocation and after purge.

Generated from the contracts like ``test_attack_matrix.py``:

* **authority fields.** Every request field whose name says it carries authority (a scope list,
  a subject, a tenant or project) must have a row in :data:`AUTHORITY_ROWS` saying which rule
  governs it; :func:`test_every_authority_field_has_a_row` fails for a new RPC or field without
  one. Each row is then attacked over gRPC as a caller holding one narrow claim would: ask for
  more scopes than the claim holds, name another user, rotate a wider credential.
* **property over the lattice.** For random claim scope sets and random requested scopes and
  subjects, through every RPC that accepts a scope list or a subject, the credential minted (if
  any) verifies into a claim whose scopes are a subset of the minter's and whose subject is the
  minter's: authority never grows.
* **after revocation and after purge.** Claims minted from an API key or a session that is then
  revoked (one by one, all of a user's, by rotation with no grace) and claims of a purged tenant
  or project are refused (UNAUTHENTICATED ``CLAIM_REVOKED``) by every tenant-scoped RPC; calls
  without a claim into a purged scope are refused (FAILED_PRECONDITION ``SCOPE_PURGED``) except
  the few that read what a purge keeps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zumik.secrets.v1 import audit_service_pb2 as apb
from zumik.secrets.v1 import common_pb2
from zumik.secrets.v1 import key_service_pb2 as kpb
from zumik.secrets.v1 import tenant_service_pb2 as tpb

from tests.fix_server import RunningServer
from tests.grpc_errors import error_info
from tests.security.conftest import dev_policy, role_of
from tests.security.report import count_cases
from tests.security.rpcs import Rpc, all_rpcs
from zumik_secrets.api.contracts import method_guards
from zumik_secrets.server.authorization import AFTER_PURGE_METHODS, MINTING_METHODS

pytestmark = pytest.mark.integration

POLICY = dev_policy()
TENANT, PROJECT = "tenant-auth", "proj"
PARENT = f"tenants/{TENANT}/projects/{PROJECT}"
VALID = common_pb2.VERIFY_RESULT_VALID

#: Names of request fields that carry authority.
AUTHORITY_FIELD = re.compile(r"(^|_)(scopes?|subject|tenant|project)$")

GRANT = "grant: every scope must be held by the caller's claim (SCOPE_ESCALATION)"
SUBJECT = "subject: must be the claim's own unless the identity may impersonate"
FILTER = "filter: narrows an answer, never grants (INSUFFICIENT_SCOPE, no claim)"
REVOKE = "revocation: only removes authority, inside the claim's project"

#: RPC -> request field (or, in parentheses, the authority a request carries implicitly) -> rule.
AUTHORITY_ROWS: dict[str, dict[str, str]] = {
    "KeyService.CreateApiKey": {"scopes": GRANT},
    "KeyService.RotateApiKey": {"(the rotated key's scopes)": GRANT},
    "KeyService.CreateSession": {"scopes": GRANT, "user_subject": SUBJECT},
    "KeyService.RotateSession": {"scopes": GRANT, "(the session's user)": SUBJECT},
    "KeyService.VerifyApiKey": {"required_scopes": FILTER},
    "KeyService.VerifySession": {"required_scopes": FILTER},
    "KeyService.RevokeUserSessions": {"user_subject": REVOKE},
}


def authority_fields(rpc: Rpc) -> list[str]:
    return [f.name for f in rpc.descriptor.input_type.fields if AUTHORITY_FIELD.search(f.name)]


def test_every_authority_field_has_a_row() -> None:
    missing, stale = [], []
    for rpc in all_rpcs():
        row = AUTHORITY_ROWS.get(rpc.name, {})
        for field in authority_fields(rpc):
            if field not in row:
                missing.append(f"{rpc.name}.{field}")
        stale += [
            f"{rpc.name}.{f}"
            for f in row
            if not f.startswith("(") and f not in authority_fields(rpc)
        ]
    known = {rpc.name for rpc in all_rpcs()}
    stale += [name for name in AUTHORITY_ROWS if name not in known]
    assert not missing, f"request fields that carry authority without a row: {missing}"
    assert not stale, f"rows naming no such field: {stale}"


def test_every_minting_rpc_gets_the_lifetime_bound() -> None:
    """An RPC that grants scopes mints or rotates a credential: its authority must carry the
    minter's lifetime bound (``MINTING_METHODS``), else an expiring key could outlive itself."""
    granting = {
        "/zumik.secrets.v1." + name.replace(".", "/")
        for name, row in AUTHORITY_ROWS.items()
        if GRANT in row.values()
    }
    assert granting == set(MINTING_METHODS)


# -- helpers -----------------------------------------------------------------------------------


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode | None, str]:
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), error_info(err).reason  # type: ignore[attr-defined]
    return None, ""


def _keys(server: RunningServer, claim: str | None, role: str = "console") -> Any:
    return server.stubs(role, claim=claim).keys


def _control(server: RunningServer) -> Any:
    return server.stubs("control-plane").keys


def _denials(server: RunningServer) -> list[apb.AuditEvent]:
    auditor = server.stubs("auditor").audit
    return list(
        auditor.QueryEvents(
            apb.QueryEventsRequest(parent=f"tenants/{TENANT}", action="authz.deny", page_size=1000),
            timeout=10,
        ).events
    )


def _audited(server: RunningServer, reason: str, method: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for ev in _denials(server):
            if ev.reason == reason and ev.attributes.get("method", "").endswith(method):
                return True
        time.sleep(0.05)
    return False


def _key_claim(
    server: RunningServer, scopes: list[str], tenant: str = TENANT, project: str = PROJECT
) -> tuple[str, str]:
    """(claim, key name) of a fresh API key with ``scopes``, created by the control plane."""
    created = _control(server).CreateApiKey(
        kpb.CreateApiKeyRequest(parent=f"tenants/{tenant}/projects/{project}", scopes=scopes),
        timeout=10,
    )
    answer = server.stubs("gateway").keys.VerifyApiKey(
        kpb.VerifyApiKeyRequest(key=created.raw_key), timeout=10
    )
    assert answer.result == VALID
    return answer.claim, created.api_key.name


def _session_claim(
    server: RunningServer, user: str, scopes: list[str], project: str = PROJECT
) -> tuple[str, str]:
    created = _control(server).CreateSession(
        kpb.CreateSessionRequest(
            parent=f"tenants/{TENANT}/projects/{project}", user_subject=user, scopes=scopes
        ),
        timeout=10,
    )
    answer = server.stubs("gateway").keys.VerifySession(
        kpb.VerifySessionRequest(token=created.token), timeout=10
    )
    assert answer.result == VALID
    return answer.claim, created.session.name


# -- attacks on each authority field -----------------------------------------------------------


def _rows() -> Iterator[Any]:
    for rpc_name, fields in AUTHORITY_ROWS.items():
        for field, rule in fields.items():
            yield pytest.param(rpc_name, field, rule, id=f"{rpc_name}.{field}")


WIDE = ["secrets.open", "tenant.admin", "tenant.purge", "audit.read", "audit.read.tenant"]


@pytest.mark.parametrize(("rpc_name", "field", "rule"), list(_rows()))
def test_authority_field_cannot_widen(
    rpc_name: str,
    field: str,
    rule: str,
    module_server: RunningServer,
    request: pytest.FixtureRequest,
) -> None:
    server = module_server
    cases = 0
    denied = grpc.StatusCode.PERMISSION_DENIED
    if rpc_name == "KeyService.CreateApiKey":
        claim = server.mint_claim(TENANT, PROJECT, ("keys.write",))
        keys = _keys(server, claim)
        for extra in WIDE:
            got = _code(
                lambda e=extra: keys.CreateApiKey(
                    kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.write", e]), timeout=10
                )
            )
            assert got == (denied, "SCOPE_ESCALATION"), extra
            cases += 1
        own = keys.CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.write"]))
        assert list(own.api_key.scopes) == ["keys.write"]  # what it holds, it may hand on
        assert _audited(server, "SCOPE_ESCALATION", "CreateApiKey")
    elif rpc_name == "KeyService.RotateApiKey":
        _, wide = _key_claim(server, ["keys.write", *WIDE])
        keys = _keys(server, server.mint_claim(TENANT, PROJECT, ("keys.write",)))
        got = _code(lambda: keys.RotateApiKey(kpb.RotateApiKeyRequest(name=wide), timeout=10))
        assert got == (denied, "SCOPE_ESCALATION")
        cases += 1
        assert _audited(server, "SCOPE_ESCALATION", "RotateApiKey")
    elif rpc_name == "KeyService.CreateSession" and field == "scopes":
        keys = _keys(server, server.mint_claim(TENANT, PROJECT, ("sessions.write",), subject="u1"))
        for extra in WIDE:
            got = _code(
                lambda e=extra: keys.CreateSession(
                    kpb.CreateSessionRequest(
                        parent=PARENT, user_subject="u1", scopes=["sessions.write", e]
                    ),
                    timeout=10,
                )
            )
            assert got == (denied, "SCOPE_ESCALATION"), extra
            cases += 1
    elif rpc_name == "KeyService.CreateSession":
        keys = _keys(server, server.mint_claim(TENANT, PROJECT, ("sessions.write",), subject="u1"))
        for victim in ("admin", "u2", "U1", "u1 ", "key_test"):
            got = _code(
                lambda v=victim: keys.CreateSession(
                    kpb.CreateSessionRequest(
                        parent=PARENT, user_subject=v, scopes=["sessions.write"]
                    ),
                    timeout=10,
                )
            )
            assert got[0] in (denied, grpc.StatusCode.INVALID_ARGUMENT), victim
            if got[0] == denied:
                assert got[1] == "IMPERSONATION_NOT_ALLOWED"
            cases += 1
        mine = keys.CreateSession(
            kpb.CreateSessionRequest(parent=PARENT, user_subject="u1", scopes=["sessions.write"])
        )
        assert mine.session.user_subject == "u1"
        assert _audited(server, "IMPERSONATION_NOT_ALLOWED", "CreateSession")
    elif rpc_name == "KeyService.RotateSession" and field == "scopes":
        _, own = _session_claim(server, "u1", ["sessions.write"])
        keys = _keys(server, server.mint_claim(TENANT, PROJECT, ("sessions.write",), subject="u1"))
        for extra in WIDE:
            got = _code(
                lambda e=extra: keys.RotateSession(
                    kpb.RotateSessionRequest(name=own, scopes=["sessions.write", e]), timeout=10
                )
            )
            assert got == (denied, "SCOPE_ESCALATION"), extra
            cases += 1
        # A session wider than the caller cannot be rotated into the caller's hands either.
        _, wide = _session_claim(server, "u1", ["sessions.write", *WIDE])
        got = _code(lambda: keys.RotateSession(kpb.RotateSessionRequest(name=wide), timeout=10))
        assert got == (denied, "SCOPE_ESCALATION")
        cases += 1
    elif rpc_name == "KeyService.RotateSession":
        _, victims = _session_claim(server, "victim", ["sessions.write"])
        keys = _keys(server, server.mint_claim(TENANT, PROJECT, ("sessions.write",), subject="u1"))
        got = _code(lambda: keys.RotateSession(kpb.RotateSessionRequest(name=victims), timeout=10))
        assert got == (denied, "IMPERSONATION_NOT_ALLOWED")
        cases += 1
        assert _audited(server, "IMPERSONATION_NOT_ALLOWED", "RotateSession")
    elif rpc_name in ("KeyService.VerifyApiKey", "KeyService.VerifySession"):
        gateway = server.stubs("gateway").keys
        if rpc_name == "KeyService.VerifyApiKey":
            raw = (
                _control(server)
                .CreateApiKey(kpb.CreateApiKeyRequest(parent=PARENT, scopes=["keys.read"]))
                .raw_key
            )
            answer = gateway.VerifyApiKey(
                kpb.VerifyApiKeyRequest(key=raw, required_scopes=["tenant.admin"])
            )
        else:
            token = (
                _control(server)
                .CreateSession(
                    kpb.CreateSessionRequest(parent=PARENT, user_subject="u1", scopes=["keys.read"])
                )
                .token
            )
            answer = gateway.VerifySession(
                kpb.VerifySessionRequest(token=token, required_scopes=["tenant.admin"])
            )
        assert answer.result == common_pb2.VERIFY_RESULT_INSUFFICIENT_SCOPE
        assert not answer.claim
        cases += 1
    elif rpc_name == "KeyService.RevokeUserSessions":
        _, other_project = _session_claim(server, "victim", ["keys.read"], project="othr")
        keys = _keys(server, server.mint_claim(TENANT, PROJECT, ("sessions.write",), subject="u1"))
        answer = keys.RevokeUserSessions(
            kpb.RevokeUserSessionsRequest(parent=PARENT, user_subject="victim"), timeout=10
        )
        assert set(answer.DESCRIPTOR.fields_by_name) == {"revoked_count"}  # nothing granted
        state = _control(server).GetSession(kpb.GetSessionRequest(name=other_project)).session.state
        assert state == common_pb2.CREDENTIAL_STATE_ACTIVE  # another project is out of reach
        cases += 1
    else:  # pragma: no cover - a row without an attack is a test bug
        pytest.fail(f"no attack written for {rpc_name}.{field}")
    count_cases(request, "authority fields", rpc_name.split(".")[0], cases)


# -- property: minted authority is never above the minter's --------------------------------------

LATTICE = (
    "keys.read",
    "keys.write",
    "sessions.write",
    "secrets.open",
    "tenant.admin",
    "audit.read",
)
scope_sets = st.frozensets(st.sampled_from(LATTICE))


def _minted(
    server: RunningServer, how: str, held: frozenset[str], asked: frozenset[str], user: str
) -> tuple[set[str], str] | None:
    """Mint through ``how`` with a claim holding ``held`` (subject ``u1``); the scopes and
    subject of the claim the minted credential verifies into, or None when refused."""
    claim = server.mint_claim(TENANT, PROJECT, tuple(sorted(held)), subject="u1")
    keys = _keys(server, claim)
    gateway = server.stubs("gateway").keys
    try:
        if how == "CreateApiKey":
            raw = keys.CreateApiKey(
                kpb.CreateApiKeyRequest(parent=PARENT, scopes=sorted(asked)), timeout=10
            ).raw_key
            answer: Any = gateway.VerifyApiKey(kpb.VerifyApiKeyRequest(key=raw), timeout=10)
        elif how == "RotateApiKey":
            _, name = _key_claim(server, sorted(asked))
            raw = keys.RotateApiKey(kpb.RotateApiKeyRequest(name=name), timeout=10).raw_key
            answer = gateway.VerifyApiKey(kpb.VerifyApiKeyRequest(key=raw), timeout=10)
        elif how == "CreateSession":
            token = keys.CreateSession(
                kpb.CreateSessionRequest(parent=PARENT, user_subject=user, scopes=sorted(asked)),
                timeout=10,
            ).token
            answer = gateway.VerifySession(kpb.VerifySessionRequest(token=token), timeout=10)
        else:  # RotateSession of a session of ``user``, asking for ``asked``
            _, name = _session_claim(server, user, ["keys.read"])
            token = keys.RotateSession(
                kpb.RotateSessionRequest(name=name, scopes=sorted(asked)), timeout=10
            ).token
            answer = gateway.VerifySession(kpb.VerifySessionRequest(token=token), timeout=10)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()  # type: ignore[attr-defined]
        return None
    assert answer.result == VALID
    subject = getattr(answer, "user_subject", "") or "(key)"
    return set(answer.scopes), subject


@pytest.mark.parametrize("how", ["CreateApiKey", "RotateApiKey", "CreateSession", "RotateSession"])
def test_minted_authority_is_never_above_the_minters(
    how: str, module_server: RunningServer, request: pytest.FixtureRequest
) -> None:
    runs = [0]

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(held=scope_sets, asked=scope_sets.filter(bool), user=st.sampled_from(("u1", "u2")))
    def prop(held: frozenset[str], asked: frozenset[str], user: str) -> None:
        right = "keys.write" if how.endswith("ApiKey") else "sessions.write"
        held = held | {right}
        got = _minted(module_server, how, held, asked, user)
        runs[0] += 1
        allowed = asked <= held and (how.endswith("ApiKey") or user == "u1")
        assert (got is not None) == allowed, (held, asked, user)
        if got is not None:
            scopes, subject = got
            assert scopes <= held
            if how.endswith("Session"):
                assert subject == "u1"

    prop()
    count_cases(request, "authority property examples", "KeyService", runs[0])


# -- credentials used after revocation and after purge -----------------------------------------


def _wait_refused(server: RunningServer, claim: str, timeout: float = 2.0) -> float:
    """Seconds until ``claim`` is refused as revoked (a cheap tenant-scoped call)."""
    keys = _keys(server, claim)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        got = _code(lambda: keys.ListApiKeys(kpb.ListApiKeysRequest(parent=PARENT), timeout=5))
        if got == (grpc.StatusCode.UNAUTHENTICATED, "CLAIM_REVOKED"):
            return time.monotonic() - started
        time.sleep(0.01)
    pytest.fail(f"claim still accepted after {timeout} s")


ALL_SCOPES = sorted({g.scope for g in method_guards().values() if g.scope} | {"audit.read.tenant"})


@pytest.fixture(scope="module")
def dead_claims(module_server: RunningServer) -> dict[str, tuple[str, str, str]]:
    """Label -> (claim, tenant, project) of claims whose source was revoked or purged."""
    server = module_server
    out: dict[str, tuple[str, str, str]] = {}
    claim, name = _key_claim(server, ALL_SCOPES)
    _control(server).RevokeApiKey(kpb.RevokeApiKeyRequest(name=name), timeout=10)
    out["api key revoked"] = (claim, TENANT, PROJECT)
    claim, name = _key_claim(server, ALL_SCOPES)
    _control(server).RotateApiKey(kpb.RotateApiKeyRequest(name=name), timeout=10)
    out["api key rotated, no grace"] = (claim, TENANT, PROJECT)
    claim, name = _session_claim(server, "u1", ALL_SCOPES)
    _control(server).RevokeSession(kpb.RevokeSessionRequest(name=name), timeout=10)
    out["session revoked"] = (claim, TENANT, PROJECT)
    claim, _ = _session_claim(server, "u9", ALL_SCOPES)
    _control(server).RevokeUserSessions(
        kpb.RevokeUserSessionsRequest(parent=PARENT, user_subject="u9"), timeout=10
    )
    out["user's sessions revoked"] = (claim, TENANT, PROJECT)
    claim, _ = _key_claim(server, ALL_SCOPES, tenant="tenant-gone")
    tenants = server.stubs("control-plane").tenants
    tenants.PurgeTenant(
        tpb.PurgeTenantRequest(name="tenants/tenant-gone", confirm="tenants/tenant-gone"),
        timeout=30,
    )
    out["tenant purged"] = (claim, "tenant-gone", PROJECT)
    claim, _ = _key_claim(server, ALL_SCOPES, project="gone")
    target = f"tenants/{TENANT}/projects/gone"
    tenants.PurgeProject(tpb.PurgeProjectRequest(name=target, confirm=target), timeout=30)
    out["project purged"] = (claim, TENANT, "gone")
    out["minted after the purge"] = (
        server.mint_claim("tenant-gone", PROJECT, tuple(ALL_SCOPES), credential_id="key_new"),
        "tenant-gone",
        PROJECT,
    )
    time.sleep(server.runtime.watcher.poll_interval + 0.5)  # within the stated bound
    return out


def _scoped_rpcs() -> Iterator[Any]:
    for rpc in all_rpcs():
        if (
            rpc.guard.tenant_scoped
            and rpc.shape is not None
            and any(POLICY.decide(i, rpc.full_method).allowed for i in POLICY.identities)
        ):
            yield pytest.param(rpc, id=rpc.name)


def _role(rpc: Rpc) -> str:
    allowed = [i for i in POLICY.identities if POLICY.decide(i, rpc.full_method).allowed]
    needs = [i for i in allowed if not POLICY.decide(i, rpc.full_method).without_claim]
    return role_of((needs or allowed)[0])


@pytest.mark.parametrize("rpc", list(_scoped_rpcs()))
def test_revoked_and_purged_credentials_are_refused(
    rpc: Rpc,
    module_server: RunningServer,
    dead_claims: dict[str, tuple[str, str, str]],
    request: pytest.FixtureRequest,
) -> None:
    server = module_server
    problems: list[str] = []
    cases = 0
    for label, (claim, tenant, project) in dead_claims.items():
        channel = server.channel(_role(rpc), claim=claim)
        req = rpc.request(tenant, project)
        got = _code(lambda c=channel, r=req: rpc.call(c, r))
        cases += 1
        if got != (grpc.StatusCode.UNAUTHENTICATED, "CLAIM_REVOKED"):
            problems.append(f"{label}: got {got}, want UNAUTHENTICATED CLAIM_REVOKED")
    # Without a claim, a privileged identity may not create anything in a purged scope.
    without = [
        i
        for i in POLICY.identities
        if POLICY.decide(i, rpc.full_method).allowed
        and POLICY.decide(i, rpc.full_method).without_claim
    ]
    if without and rpc.full_method not in AFTER_PURGE_METHODS:
        for tenant, project in (("tenant-gone", PROJECT), (TENANT, "gone")):
            if project == "gone" and not rpc.has_project:
                continue
            channel = server.channel(role_of(without[0]), claim=None)
            req = rpc.request(tenant, project)
            got = _code(lambda c=channel, r=req: rpc.call(c, r))
            cases += 1
            if got != (grpc.StatusCode.FAILED_PRECONDITION, "SCOPE_PURGED"):
                problems.append(f"{tenant}/{project} without claim: got {got}, want SCOPE_PURGED")
    count_cases(request, "after revocation and purge", rpc.guard.service, cases)
    assert not problems, "\n".join(problems)
