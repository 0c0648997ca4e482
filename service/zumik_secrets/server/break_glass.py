"""The break-glass step of authorization: a call that presents a grant (metadata
``zumik-grant``, exactly one entry: read only through
:func:`zumik_secrets.api.call_headers.grant_header`) is authorized by the grant instead of the
identity policy and a tenant claim.

Kept apart from :mod:`zumik_secrets.server.authorization` on purpose: it is one small, separate
decision. A call under a grant:

* comes from an operator identity the policy still names (removing an operator from the policy
  ends their grants' use at once);
* carries no tenant claim as well (one source of authority per call);
* calls a tenant-scoped method of the grant's permission set, on the grant's tenant (never the
  ``tenants/-`` wildcard);
* names no purged tenant or project (FAILED_PRECONDITION ``SCOPE_PURGED``, as for a call
  without a claim: a grant reaches no more of a purged scope than the policy does);
* is made by the grant's requester while the grant is active (approved, not expired, not
  revoked): see :meth:`zumik_secrets.app.grants.BreakGlass.authorize_use`, which also records
  the call durably in the tenant's audit chain with the grant id before the call runs.
"""

from __future__ import annotations

from collections.abc import Callable

from zumik_secrets.api.contracts import MethodGuard
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.grants import BreakGlass
from zumik_secrets.core.authority import NO_AUTHORITY
from zumik_secrets.core.break_glass import is_operator
from zumik_secrets.core.errors import InvalidArgument, PermissionDenied
from zumik_secrets.core.names import ANY_TENANT, name_project, parse_resource
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.authorization import AFTER_PURGE_METHODS, Authorization


def _no_tombstones(_tenant: str, _project: str | None) -> None:
    """No purge is known (tests and tools that build a gate without a revocation view)."""


class GrantGate:
    """Authorizes calls that present a break-glass grant."""

    def __init__(
        self,
        policy: Policy,
        break_glass: BreakGlass,
        check_scope_open: Callable[[str, str | None], None] = _no_tombstones,
    ) -> None:
        """
        Args:
            check_scope_open: Raises (``FailedPrecondition``) for a purged tenant/project; the
                same check as :class:`~zumik_secrets.server.authorization.Authorizer`'s.
        """
        self._policy = policy
        self._break_glass = break_glass
        self._check_scope_open = check_scope_open

    def authorize(
        self,
        identity: str,
        method: str,
        guard: MethodGuard | None,
        resource: str,
        raw_grant: str,
        has_claim: bool,
        trace_id: str,
    ) -> Authorization:
        """Authorize one call under a grant.

        Raises:
            PermissionDenied: not an operator named by the policy (``UNKNOWN_IDENTITY``), a
                claim as well (``GRANT_WITH_CLAIM``), a method outside any grant
                (``GRANT_METHOD_NOT_ALLOWED``) or the grant's refusals.
            InvalidArgument: the resource name is malformed.
            FailedPrecondition: the resource is in a purged tenant or project (``SCOPE_PURGED``).
            Unavailable: the use could not be audited.
        """
        if not is_operator(identity, self._policy.trust_domain) or (
            identity not in self._policy.identities
        ):
            raise PermissionDenied(
                "only an operator named by the policy may act under a break-glass grant",
                reason="UNKNOWN_IDENTITY",
            )
        if has_claim:
            raise PermissionDenied(
                "a call carries a tenant claim or a break-glass grant, not both",
                reason="GRANT_WITH_CLAIM",
            )
        if guard is None or not guard.tenant_scoped:
            raise PermissionDenied(
                "break-glass grants only cover tenant-scoped methods",
                reason="GRANT_METHOD_NOT_ALLOWED",
            )
        if not resource:
            raise InvalidArgument(
                f"{guard.resource_field} is required",
                reason="FIELD_REQUIRED",
                metadata={"field": guard.resource_field},
            )
        name = parse_resource(resource, field=guard.resource_field)
        tenant, project = name.tenant, name_project(name)
        if tenant != ANY_TENANT and guard.full_method not in AFTER_PURGE_METHODS:
            self._check_scope_open(tenant, project)
        self._break_glass.authorize_use(
            Actor(identity=identity, trace_id=trace_id),
            method,
            "" if tenant == ANY_TENANT else tenant,
            resource,
            raw_grant[:64],
        )
        # No authority to hand on: a grant never lets its holder mint or rotate credentials
        # carrying more than nothing.
        return Authorization(tenant, project, None, True, resource=name, authority=NO_AUTHORITY)
