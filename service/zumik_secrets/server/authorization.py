"""Authorization of one call: identity against the policy, then tenant claim against resource.

One decision per call, in this order (each refusal is audited by the interceptor):

1. The peer's SPIFFE ID (from its verified client certificate) must be named by the policy and
   allowed the method: else PERMISSION_DENIED (``UNKNOWN_IDENTITY`` / ``METHOD_NOT_ALLOWED``).
2. A claim in the call (metadata ``zumik-claim``) is verified: signature, time, and whether its
   credential was revoked or its tenant/project purged (UNAUTHENTICATED with the claim's reason).
   Before anything else of the call, the interceptor reads it with
   :func:`zumik_secrets.api.call_headers.claim_header`: several ``zumik-claim`` headers, an
   empty one or a ``zumik-claim-bin`` one refuse the call (UNAUTHENTICATED ``CLAIM_MALFORMED``).
3. For a tenant-scoped method, the resource name in the request field the contract declares is
   parsed, once, with :func:`zumik_secrets.core.names.parse_resource` (INVALID_ARGUMENT when
   malformed); the servicer receives the parsed name on the call context and never parses it
   again.
4. With a claim: the resource must be in the claim's tenant and, when the name carries a
   project, in the claim's project (else NOT_FOUND, identical to a missing resource); the claim
   must carry the method's scope (PERMISSION_DENIED ``MISSING_SCOPE``), and methods that expose a
   whole tenant's audit chain also need ``audit.read.tenant``. Tenant-level resources that belong
   to a project (handles, audit events) are confined to the claim's project through
   ``project_id`` / ``project_view``.
5. Without a claim, only identities the policy lets act ``without_claim`` proceed (audited);
   others get UNAUTHENTICATED ``CLAIM_MISSING``. A purged tenant or project refuses them too
   (FAILED_PRECONDITION ``SCOPE_PURGED``), except the methods that read what a purge keeps.
6. The caller's authority (what it may put into credentials it mints, see
   :mod:`zumik_secrets.core.authority`) is derived here, once, for the use cases. On the
   methods that mint or rotate credentials (:data:`MINTING_METHODS`) only, a claim's authority
   also gets its lifetime bound (``not_after``: the expiry of the API key the claim was minted
   from, one read by ``cid``); no other call pays that read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from zumik_secrets.api.call_headers import CLAIM_METADATA_KEY as CLAIM_METADATA_KEY
from zumik_secrets.api.contracts import MethodGuard
from zumik_secrets.core.authority import AUDIT_TENANT_VIEW, NO_AUTHORITY, Authority
from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    resource_not_found,
)
from zumik_secrets.core.names import (
    ANY_TENANT,
    ID_RE,
    MAX_NAME_LENGTH,
    ResourceName,
    name_project,
    parse_resource,
)
from zumik_secrets.core.policy import Decision, Policy

PARSED_NAMES = 4096
"""Bound on the resource names the authorizer remembers parsed (see :meth:`Authorizer._parse`)."""


_V1 = "/zumik.secrets.v1."

WHOLE_TENANT_METHODS = frozenset(
    {
        f"{_V1}AuditService/ExportEvents",
        f"{_V1}AuditService/VerifyChain",
        f"{_V1}AuditService/CreateCheckpoint",
    }
)
"""Methods that expose a tenant's whole audit chain: a claim also needs ``audit.read.tenant``."""

MINTING_METHODS = frozenset(
    {
        f"{_V1}KeyService/CreateApiKey",
        f"{_V1}KeyService/RotateApiKey",
        f"{_V1}KeyService/CreateSession",
        f"{_V1}KeyService/RotateSession",
    }
)
"""Methods that mint or rotate a credential with the caller's authority: a claim's authority
gets its lifetime bound (``Authority.not_after``) on these, and a new such method belongs here."""

AFTER_PURGE_METHODS = frozenset(
    {
        f"{_V1}TenantService/PurgeProject",
        f"{_V1}TenantService/PurgeTenant",
        f"{_V1}TenantService/GetPurgeReceipt",
        f"{_V1}TenantService/RunRetention",
        f"{_V1}AuditService/QueryEvents",
        f"{_V1}AuditService/ExportEvents",
        f"{_V1}AuditService/VerifyChain",
        f"{_V1}AuditService/CreateCheckpoint",
    }
)
"""What an identity acting without a claim may still do in a purged scope: finish or repeat the
purge, read its receipt, and read, verify and prune the audit events the purge keeps."""


@dataclass(frozen=True, slots=True)
class Authorization:
    """What the checks established.

    Attributes:
        tenant_id: Tenant the call acts for (None for methods not tenant-scoped).
        project_id: Project the call acts for: the resource's, or the claim's for a
            tenant-level resource (None without either).
        claim: The verified claim, when present.
        without_claim: A privileged identity acting for a tenant named in the request.
        resource: The parsed resource name.
        authority: What the caller may hand on to credentials it mints.
        project_view: The project a project claim's view of tenant-level resources is confined
            to (None: the whole tenant).
    """

    tenant_id: str | None
    project_id: str | None
    claim: TenantClaim | None
    without_claim: bool
    resource: ResourceName | None = None
    authority: Authority = NO_AUTHORITY
    project_view: str | None = None


def _foreign(claim: TenantClaim, resource: str, field: str) -> bool:
    """Whether ``resource`` is a well-formed name of another tenant (or the ``-`` wildcard) or
    another project than the claim's.

    Its tenant and project segments must follow the id grammar and the rest must be a valid
    name once they are replaced by the claim's; only then is the answer NOT_FOUND (which echoes
    the name), whatever the shape's tenant, so a foreign name and a missing one look alike and
    no malformed input is echoed.
    """
    if len(resource) > MAX_NAME_LENGTH:
        return False
    parts = resource.split("/")
    if len(parts) < 2 or parts[0] != "tenants":
        return False
    tenant = parts[1]
    project = parts[3] if len(parts) >= 4 and parts[2] == "projects" else None
    if tenant == claim.tenant_id and project in (None, claim.project_id):
        return False
    if tenant != ANY_TENANT and ID_RE.fullmatch(tenant) is None:
        return False
    if project is not None and ID_RE.fullmatch(project) is None:
        return False
    parts[1] = claim.tenant_id
    if project is not None:
        parts[3] = claim.project_id
    try:
        parse_resource("/".join(parts), field=field)
    except InvalidArgument:
        return False
    return True


def _no_tombstones(_tenant: str, _project: str | None) -> None:
    return None


def _no_bound(_claim: TenantClaim) -> datetime | None:
    return None


class Authorizer:
    """Applies the policy and the claim rules to one call."""

    def __init__(
        self,
        policy: Policy,
        verify_claim: Callable[[str], TenantClaim],
        check_scope_open: Callable[[str, str | None], None] = _no_tombstones,
        minting_bound: Callable[[TenantClaim], datetime | None] = _no_bound,
    ) -> None:
        """Create an authorizer.

        Args:
            policy: The identity policy.
            verify_claim: Verifies a raw claim token, revocation included (raising
                ``Unauthenticated``).
            check_scope_open: Raises (``FailedPrecondition``) for a purged tenant/project.
            minting_bound: The lifetime bound of a claim's authority (the expiry of the API
                key it was minted from), asked on :data:`MINTING_METHODS` only.
        """
        self._policy = policy
        self._verify_claim = verify_claim
        self._check_scope_open = check_scope_open
        self._minting_bound = minting_bound
        self._parsed: dict[tuple[str, str], ResourceName] = {}

    def _parse(self, resource: str, field: str) -> ResourceName:
        """:func:`parse_resource`, remembering well-formed names (the same few names come
        call after call). At most :data:`PARSED_NAMES` entries, emptied when full; only names
        that parsed (at most ``MAX_NAME_LENGTH`` characters each) are kept, and the parsed
        names are immutable."""
        key = (resource, field)
        name = self._parsed.get(key)
        if name is None:
            name = parse_resource(resource, field=field)
            if len(self._parsed) >= PARSED_NAMES:
                self._parsed.clear()
            self._parsed[key] = name
        return name

    def check_identity(self, identity: str | None, method: str) -> Decision:
        """Step 1: the policy's decision for the identity and method.

        Raises:
            PermissionDenied: unknown identity or method not allowed.
        """
        decision = self._policy.decide(identity, method)
        if not decision.allowed:
            raise PermissionDenied(
                "the calling identity is not allowed to call this method",
                reason=decision.reason,
                metadata={"method": method.rsplit("/", 1)[-1]},
            )
        return decision

    def authorize(
        self,
        guard: MethodGuard | None,
        decision: Decision,
        resource: str,
        raw_claim: str | None,
    ) -> Authorization:
        """Steps 2 to 6 for a call whose identity passed step 1.

        Raises:
            InvalidArgument: malformed resource name.
            Unauthenticated: bad, revoked or missing claim.
            NotFound: the resource belongs to another tenant or project than the claim's.
            PermissionDenied: the claim lacks the method's scope.
            FailedPrecondition: a call without a claim names a purged scope.
        """
        # An empty claim is a malformed one, never "no claim" (the interceptor refuses it first).
        claim = self._verify_claim(raw_claim) if raw_claim is not None else None
        authority = (
            Authority.of_claim(claim.scopes, claim.subject, impersonate=decision.impersonate)
            if claim is not None
            else NO_AUTHORITY
        )
        if guard is None or not guard.tenant_scoped:
            return Authorization(None, None, claim, False, authority=authority)
        if not resource:
            raise InvalidArgument(
                f"{guard.resource_field} is required",
                reason="FIELD_REQUIRED",
                metadata={"field": guard.resource_field},
            )
        if claim is not None and _foreign(claim, resource, guard.resource_field):
            raise resource_not_found(resource)
        name = self._parse(resource, guard.resource_field)
        tenant, project = name.tenant, name_project(name)
        if claim is not None:
            if claim.tenant_id != tenant or (project is not None and claim.project_id != project):
                raise resource_not_found(resource)
            if guard.scope not in claim.scopes:
                raise PermissionDenied(
                    "the tenant claim does not carry the scope this method needs",
                    reason="MISSING_SCOPE",
                    metadata={"scope": guard.scope},
                )
            if guard.full_method in MINTING_METHODS:
                authority = replace(authority, not_after=self._minting_bound(claim))
            tenant_view = AUDIT_TENANT_VIEW in claim.scopes
            if guard.full_method in WHOLE_TENANT_METHODS and not tenant_view:
                raise PermissionDenied(
                    "a project claim sees only its project's events; the whole chain needs"
                    f" {AUDIT_TENANT_VIEW}",
                    reason="MISSING_SCOPE",
                    metadata={"scope": AUDIT_TENANT_VIEW},
                )
            return Authorization(
                tenant,
                claim.project_id,
                claim,
                False,
                resource=name,
                authority=authority,
                project_view=None if tenant_view else claim.project_id,
            )
        if not decision.without_claim:
            raise Unauthenticated(
                f"this method needs a tenant claim in the {CLAIM_METADATA_KEY!r} metadata",
                reason="CLAIM_MISSING",
            )
        if tenant != ANY_TENANT and guard.full_method not in AFTER_PURGE_METHODS:
            self._check_scope_open(tenant, project)
        return Authorization(
            tenant, project, None, True, resource=name, authority=Authority.unbounded()
        )
