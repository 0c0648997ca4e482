"""The verified facts of the call being served, passed to servicers through a contextvar.

The interceptor sets it after authentication and authorization; servicers read the tenant they
act for from here, never from a request field alone.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import resource_not_found


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
    """

    method: str
    identity: str
    claim: TenantClaim | None
    tenant_id: str | None
    project_id: str | None
    without_claim: bool
    trace_id: str

    @property
    def subject(self) -> str:
        """The claim subject, or "" without a claim."""
        return self.claim.subject if self.claim is not None else ""


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


def require_in_scope(name: str, tenant: str, project: str | None = None) -> CallContext:
    """Check that a parsed resource belongs to the tenant (and project) the call acts for.

    Args:
        name: The resource name as the caller sent it (echoed in the NOT_FOUND answer).
        tenant: The tenant segment parsed from ``name``.
        project: The project segment, for project-scoped resources.

    Returns:
        The current call.

    Raises:
        NotFound: the one answer for a missing resource, so a foreign one looks the same.
    """
    call = _CURRENT.get()
    if call.tenant_id != tenant or (project is not None and call.project_id != project):
        raise resource_not_found(name)
    return call
