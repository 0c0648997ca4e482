"""Authorization of one call: identity against the policy, then tenant claim against resource.

Order of checks (each refusal is audited by the caller of :meth:`Authorizer.authorize`):

1. The peer's SPIFFE ID (from its verified client certificate) must be named by the policy and
   allowed the method: else PERMISSION_DENIED (``UNKNOWN_IDENTITY`` / ``METHOD_NOT_ALLOWED``).
2. For a tenant-scoped method, the resource name in the request field the contract declares is
   parsed (INVALID_ARGUMENT when malformed).
3. If the call carries a claim (metadata ``zumik-claim``) it is verified (UNAUTHENTICATED with
   the claim's reason when not), must name the resource's tenant and project (else NOT_FOUND,
   identical to a missing resource), and must carry the method's scope (PERMISSION_DENIED
   ``MISSING_SCOPE``).
4. Without a claim, only identities the policy lets act ``without_claim`` proceed (audited);
   others get UNAUTHENTICATED ``CLAIM_MISSING``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zumik_secrets.api.contracts import MethodGuard
from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    resource_not_found,
)
from zumik_secrets.core.names import validate_project_id, validate_tenant_id
from zumik_secrets.core.policy import Policy

CLAIM_METADATA_KEY = "zumik-claim"

#: Wildcard tenant in a resource name (`tenants/-`): every tenant, for privileged identities.
ANY_TENANT = "-"


@dataclass(frozen=True, slots=True)
class Authorization:
    """What the checks established.

    Attributes:
        tenant_id: Tenant the call acts for (None for methods not tenant-scoped).
        project_id: Project of the resource, when it has one.
        claim: The verified claim, when present.
        without_claim: A privileged identity acting for a tenant named in the request.
    """

    tenant_id: str | None
    project_id: str | None
    claim: TenantClaim | None
    without_claim: bool


def resource_scope(name: str, field: str) -> tuple[str, str | None]:
    """The tenant and (when present) project of a resource name.

    Only the tenant and project segments are checked here; the servicer validates the rest.

    Raises:
        InvalidArgument: reason ``INVALID_NAME`` when ``name`` does not start with
            ``tenants/{tenant}``.
    """
    if len(name) > 1024:
        raise InvalidArgument(
            f"{field} is too long (at most 1024 characters)",
            reason="INVALID_NAME",
            metadata={"field": field},
        )
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "tenants" or not parts[1]:
        raise InvalidArgument(
            f"{field} must start with tenants/{{tenant}}",
            reason="INVALID_NAME",
            metadata={"field": field},
        )
    tenant = parts[1]
    if tenant != ANY_TENANT:
        validate_tenant_id(tenant, field=field)
    project: str | None = None
    if len(parts) >= 4 and parts[2] == "projects":
        project = validate_project_id(parts[3], field=field)
    return tenant, project


class Authorizer:
    """Applies the policy and the claim rules to one call."""

    def __init__(self, policy: Policy, verify_claim: Callable[[str], TenantClaim]) -> None:
        """Create an authorizer.

        Args:
            policy: The identity policy.
            verify_claim: Verifies a raw claim token (raising ``Unauthenticated``).
        """
        self._policy = policy
        self._verify_claim = verify_claim

    def check_identity(self, identity: str | None, method: str) -> bool:
        """Step 1. Returns whether the identity may act without a claim.

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
        return decision.without_claim

    def authorize(
        self,
        guard: MethodGuard | None,
        without_claim_allowed: bool,
        resource: str,
        raw_claim: str | None,
    ) -> Authorization:
        """Steps 2 to 4 for a call whose identity passed step 1.

        Raises:
            InvalidArgument: malformed resource name.
            Unauthenticated: bad or missing claim.
            NotFound: the resource belongs to another tenant or project than the claim's.
            PermissionDenied: the claim lacks the method's scope.
        """
        claim = self._verify_claim(raw_claim) if raw_claim else None
        if guard is None or not guard.tenant_scoped:
            return Authorization(None, None, claim, False)
        if not resource:
            raise InvalidArgument(
                f"{guard.resource_field} is required",
                reason="FIELD_REQUIRED",
                metadata={"field": guard.resource_field},
            )
        tenant, project = resource_scope(resource, guard.resource_field)
        if claim is not None:
            if claim.tenant_id != tenant or (project is not None and claim.project_id != project):
                raise resource_not_found(resource)
            if guard.scope not in claim.scopes:
                raise PermissionDenied(
                    "the tenant claim does not carry the scope this method needs",
                    reason="MISSING_SCOPE",
                    metadata={"scope": guard.scope},
                )
            return Authorization(tenant, project, claim, False)
        if not without_claim_allowed:
            raise Unauthenticated(
                f"this method needs a tenant claim in the {CLAIM_METADATA_KEY!r} metadata",
                reason="CLAIM_MISSING",
            )
        return Authorization(tenant, project, None, True)
