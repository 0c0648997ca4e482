"""BreakGlassService: operators request, approve, revoke and read break-glass grants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import grpc
from zumik.secrets.v1 import break_glass_service_pb2 as _pb
from zumik.secrets.v1 import break_glass_service_pb2_grpc as _grpc

from zumik_secrets.api.call_context import current_call
from zumik_secrets.api.convert import duration, read_duration, timestamp
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.grants import BreakGlass, grant_name
from zumik_secrets.core import break_glass as bg
from zumik_secrets.core.errors import InvalidArgument
from zumik_secrets.core.names import ANY_TENANT, GrantName, TenantName
from zumik_secrets.core.primitives import sha256
from zumik_secrets.storage.records import GrantRecord

_STATES = {
    bg.STATE_PENDING: _pb.GRANT_STATE_PENDING,
    bg.STATE_ACTIVE: _pb.GRANT_STATE_ACTIVE,
    bg.STATE_REVOKED: _pb.GRANT_STATE_REVOKED,
    bg.STATE_EXPIRED: _pb.GRANT_STATE_EXPIRED,
}


def _actor() -> Actor:
    call = current_call()
    return Actor(identity=call.identity, subject=call.subject, trace_id=call.trace_id)


def _cert_fingerprint(context: grpc.ServicerContext) -> str:
    """SHA-256 hex of the caller's verified client certificate (PEM), "" when absent."""
    auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
    certs = list(auth.get("x509_pem_cert", ()))
    return sha256(certs[0]).hex() if len(certs) == 1 else ""


def _grant_parts() -> tuple[str, str]:
    """The tenant and grant id of the checked resource name (the interceptor parsed it)."""
    name = current_call().resource_as(GrantName, "name")
    return name.tenant, name.id


def _tenant() -> str:
    """The tenant of the checked ``parent`` (never the ``tenants/-`` wildcard)."""
    tenant = current_call().resource_as(TenantName, "parent").tenant
    if tenant == ANY_TENANT:
        raise InvalidArgument(
            "parent must name one tenant (tenants/{tenant})",
            reason="INVALID_NAME",
            metadata={"field": "parent"},
        )
    return tenant


class BreakGlassServicer(_grpc.BreakGlassServiceServicer):
    """Thin adapter over :class:`~zumik_secrets.app.grants.BreakGlass`."""

    def __init__(self, break_glass: BreakGlass) -> None:
        self._bg = break_glass

    def _out(self, grant: GrantRecord) -> _pb.Grant:
        pset = self._bg.policy.permission_sets.get(grant.permission_set)
        return _pb.Grant(
            name=grant_name(grant.tenant_id, grant.grant_id),
            grant_id=grant.grant_id,
            permission_set=grant.permission_set,
            methods=sorted(pset.methods) if pset is not None else [],
            reason=grant.reason,
            ticket=grant.ticket,
            duration=duration(grant.duration),
            state=_STATES.get(self._bg.state(grant), _pb.GRANT_STATE_UNSPECIFIED),
            requester=grant.requester,
            approver=grant.approver,
            request_time=timestamp(grant.requested_at),
            approve_time=timestamp(grant.approved_at),
            expire_time=timestamp(grant.expires_at),
            revoked_by=grant.revoked_by,
            revoke_time=timestamp(grant.revoked_at),
        )

    def RequestGrant(
        self, request: _pb.RequestGrantRequest, context: grpc.ServicerContext
    ) -> _pb.RequestGrantResponse:
        """See the contract."""
        tenant = _tenant()
        wanted = (
            read_duration(request.duration, "duration") if request.HasField("duration") else None
        )
        grant = self._bg.request(
            _actor(),
            _cert_fingerprint(context),
            tenant,
            request.permission_set,
            request.reason,
            request.ticket,
            wanted,
        )
        return _pb.RequestGrantResponse(grant=self._out(grant))

    def ApproveGrant(
        self, request: _pb.ApproveGrantRequest, context: grpc.ServicerContext
    ) -> _pb.ApproveGrantResponse:
        """See the contract."""
        tenant, grant_id = _grant_parts()
        approved = self._bg.approve(_actor(), _cert_fingerprint(context), tenant, grant_id)
        return _pb.ApproveGrantResponse(grant=self._out(approved))

    def RevokeGrant(
        self, request: _pb.RevokeGrantRequest, context: grpc.ServicerContext
    ) -> _pb.RevokeGrantResponse:
        """See the contract."""
        tenant, grant_id = _grant_parts()
        return _pb.RevokeGrantResponse(grant=self._out(self._bg.revoke(_actor(), tenant, grant_id)))

    def GetGrant(
        self, request: _pb.GetGrantRequest, context: grpc.ServicerContext
    ) -> _pb.GetGrantResponse:
        """See the contract."""
        tenant, grant_id = _grant_parts()
        return _pb.GetGrantResponse(grant=self._out(self._bg.get(tenant, grant_id)))

    def ListGrants(
        self, request: _pb.ListGrantsRequest, context: grpc.ServicerContext
    ) -> _pb.ListGrantsResponse:
        """See the contract."""
        tenant = _tenant()
        if not 0 <= request.page_size <= 100:
            raise InvalidArgument(
                "page_size must be between 0 and 100",
                reason="INVALID_PAGE_SIZE",
                metadata={"field": "page_size"},
            )
        grants = self._bg.list(tenant, request.page_size or 50)
        return _pb.ListGrantsResponse(grants=[self._out(g) for g in grants])
