"""The verified facts of the call being served, passed to servicers through a contextvar.

The interceptor sets it after authentication and authorization. It parsed the request's
resource name once (:func:`zumik_secrets.core.names.parse_resource`) and checked its tenant,
project and scope once; servicers take the checked name from :meth:`CallContext.resource_as`
and the caller's authority from :attr:`CallContext.authority`, never from a request field alone,
and do not check the tenant again.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TypeVar

from zumik_secrets.app.actor import Actor
from zumik_secrets.core.authority import NO_AUTHORITY, Authority
from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import InvalidArgument
from zumik_secrets.core.names import ResourceName, expect

_Name = TypeVar("_Name", bound=ResourceName)


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling and for which tenant.

    Attributes:
        method: `/package.Service/Method`.
        identity: The caller's SPIFFE ID from its verified client certificate.
        claim: The verified tenant claim, when the call carried one.
        tenant_id: Tenant the call acts for (from the claim, or from the request for identities
            the policy lets act without a claim); None for methods not tenant-scoped.
        project_id: Project the call acts for, when the resource has one.
        without_claim: True when a privileged identity acts without a claim (audited).
        trace_id: Hex trace id of the call's span ("" when tracing is off).
        resource: The request's resource name, parsed and checked against the claim once.
        authority: What the caller may hand on when it mints or rotates a credential.
        project_view: The one project a project claim confines the call to on tenant-level
            resources (handles, audit events); None for a tenant-wide view.
    """

    method: str
    identity: str
    claim: TenantClaim | None
    tenant_id: str | None
    project_id: str | None
    without_claim: bool
    trace_id: str
    resource: ResourceName | None = None
    authority: Authority = NO_AUTHORITY
    project_view: str | None = None

    @property
    def subject(self) -> str:
        """The claim subject, or "" without a claim."""
        return self.claim.subject if self.claim is not None else ""

    @property
    def actor(self) -> Actor:
        """Who acts, for audit events."""
        return Actor(identity=self.identity, subject=self.subject, trace_id=self.trace_id)

    def resource_as(self, kind: type[_Name], field: str) -> _Name:
        """The checked resource name, which must be a ``kind``.

        Raises:
            InvalidArgument: reason ``INVALID_NAME`` (another kind of name), or
                ``FIELD_REQUIRED`` outside a tenant-scoped call (a wiring bug).
        """
        if self.resource is None:
            raise InvalidArgument(
                f"{field} is required", reason="FIELD_REQUIRED", metadata={"field": field}
            )
        return expect(self.resource, kind, field=field)


_CURRENT: contextvars.ContextVar[CallContext] = contextvars.ContextVar("zumik_call")


def current_call() -> CallContext:
    """The context of the call being served.

    Raises:
        LookupError: outside a call that went through the interceptor (a wiring bug).
    """
    return _CURRENT.get()


def set_call(call: CallContext) -> contextvars.Token[CallContext]:
    """Install ``call`` for the current thread's call; returns the token to reset it."""
    return _CURRENT.set(call)


def reset_call(token: contextvars.Token[CallContext]) -> None:
    """Undo :func:`set_call`."""
    _CURRENT.reset(token)
