"""AuditService: append, query, export and verify the tenant audit chains.

The tenant always comes from the verified call (the claim's tenant, or, for the identities the
policy lets act without a claim such as ``billing`` and ``auditor``, the tenant named in
``parent``); ``tenants/-`` is the service-wide chain, readable by the auditor identity only.
A project claim sees only its project's events (``project_view``); the whole chain (export,
verification, checkpoints, every project's events) needs ``audit.read.tenant``, which the
interceptor checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2
from zumik.secrets.v1 import audit_service_pb2 as _pb
from zumik.secrets.v1 import audit_service_pb2_grpc as _grpc

from zumik_secrets.api.call_context import current_call
from zumik_secrets.api.convert import timestamp
from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.core.audit_chain import SERVICE_TENANT, ChainEvent, ChainFailure, Checkpoint
from zumik_secrets.core.audit_events import validate_appended, validate_filter
from zumik_secrets.core.encoding import b64url_encode
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.names import TenantName
from zumik_secrets.storage.ports import AuditFilter

_OUTCOME_OUT = {
    "success": _pb.AUDIT_OUTCOME_SUCCESS,
    "failure": _pb.AUDIT_OUTCOME_FAILURE,
    "denied": _pb.AUDIT_OUTCOME_DENIED,
}
_OUTCOME_IN = {value: key for key, value in _OUTCOME_OUT.items()}
_FAILURE_OUT = {
    ChainFailure.EDITED: _pb.CHAIN_FAILURE_EDITED,
    ChainFailure.DELETED: _pb.CHAIN_FAILURE_DELETED,
    ChainFailure.REORDERED: _pb.CHAIN_FAILURE_REORDERED,
    ChainFailure.INSERTED: _pb.CHAIN_FAILURE_INSERTED,
    ChainFailure.CHECKPOINT_MISMATCH: _pb.CHAIN_FAILURE_CHECKPOINT_MISMATCH,
    # Only the offline verifier reports an unanchored export; mapped so the table is total.
    ChainFailure.UNANCHORED: _pb.CHAIN_FAILURE_CHECKPOINT_MISMATCH,
}


def _parent_tenant(*, allow_service_chain: bool = True) -> str:
    """The tenant of the checked ``tenants/{tenant}`` parent.

    Raises:
        InvalidArgument: reason ``INVALID_NAME`` for another shape.
    """
    tenant = current_call().resource_as(TenantName, "parent").tenant
    if tenant == SERVICE_TENANT and not allow_service_chain:
        raise InvalidArgument(
            "parent must name one tenant (events are appended to a tenant's chain)",
            reason="INVALID_NAME",
            metadata={"field": "parent"},
            violations=[FieldViolation("parent", "must name one tenant")],
        )
    return tenant


def project_view(tenant: str) -> str:
    """The project name a project claim's query is confined to ("" for a tenant-wide view)."""
    project = current_call().project_view
    return f"tenants/{tenant}/projects/{project}" if project else ""


def _ts(value: timestamp_pb2.Timestamp, field: str, present: bool) -> datetime | None:
    if not present:
        return None
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} is not a valid time",
            reason="INVALID_TIME",
            metadata={"field": field},
            violations=[FieldViolation(field, "not a valid time")],
        ) from None


def event_proto(ev: ChainEvent) -> _pb.AuditEvent:
    """The wire form of a stored event."""
    return _pb.AuditEvent(
        tenant=ev.tenant,
        sequence=ev.sequence,
        event_id=ev.event_id,
        time=timestamp(ev.time),
        actor=ev.actor,
        actor_subject=ev.actor_subject,
        action=ev.action,
        target=ev.target,
        outcome=_OUTCOME_OUT.get(ev.outcome, _pb.AUDIT_OUTCOME_UNSPECIFIED),
        reason=ev.reason,
        trace_id=ev.trace_id,
        attributes=dict(ev.attributes),
        hash=ev.hash,
    )


def checkpoint_proto(cp: Checkpoint) -> _pb.Checkpoint:
    """The wire form of a checkpoint."""
    return _pb.Checkpoint(
        tenant=cp.tenant,
        sequence=cp.sequence,
        head_hash=cp.head_hash,
        time=timestamp(cp.time),
        kid=cp.kid,
        signature=cp.signature,
    )


class AuditServicer(_grpc.AuditServiceServicer):
    """AuditService over gRPC."""

    def __init__(self, audit: AuditLog) -> None:
        """Serve ``audit``."""
        self._audit = audit

    def AppendEvent(
        self, request: _pb.AppendEventRequest, context: grpc.ServicerContext
    ) -> _pb.AppendEventResponse:
        """Append an allow-listed event durably (fails closed: UNAVAILABLE if not stored)."""
        tenant = _parent_tenant(allow_service_chain=False)
        outcome = _OUTCOME_IN.get(request.outcome)
        if outcome is None:
            raise InvalidArgument(
                "outcome is required",
                reason="INVALID_EVENT",
                metadata={"field": "outcome"},
                violations=[FieldViolation("outcome", "is required")],
            )
        attributes = dict(request.attributes)
        validate_appended(request.action, request.target, request.reason, attributes)
        call = current_call()
        event = self._audit.append(
            AuditEntry(
                tenant_id=tenant,
                actor=call.identity,
                actor_subject=call.subject,
                action=request.action,
                target=request.target,
                outcome=outcome,
                reason=request.reason,
                trace_id=call.trace_id,
                attributes=attributes,
            )
        )
        return _pb.AppendEventResponse(event=event_proto(event))

    def QueryEvents(
        self, request: _pb.QueryEventsRequest, context: grpc.ServicerContext
    ) -> _pb.QueryEventsResponse:
        """One page of the tenant's events matching the filters, oldest first."""
        tenant = _parent_tenant()
        validate_filter(action=request.action, actor=request.actor, target=request.target)
        start = _ts(request.start_time, "start_time", request.HasField("start_time"))
        end = _ts(request.end_time, "end_time", request.HasField("end_time"))
        outcome = _OUTCOME_IN.get(request.outcome)
        if outcome is None and request.outcome != _pb.AUDIT_OUTCOME_UNSPECIFIED:
            # An outcome this server does not know must not silently become "any outcome".
            raise InvalidArgument(
                "outcome is not an AuditOutcome value",
                reason="INVALID_ARGUMENT",
                metadata={"field": "outcome"},
                violations=[FieldViolation("outcome", "is not an AuditOutcome value")],
            )
        flt = AuditFilter(
            action=request.action,
            actor=request.actor,
            target=request.target,
            outcome=outcome or "",
            start_time=start,
            end_time=end,
            project=project_view(tenant),
        )
        events, token = self._audit.reader.query(
            tenant, flt, page_size=request.page_size, page_token=request.page_token
        )
        return _pb.QueryEventsResponse(
            events=[event_proto(ev) for ev in events], next_page_token=token
        )

    def ExportEvents(
        self, request: _pb.ExportEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[_pb.ExportEventsResponse]:
        """Stream the chain from ``start_sequence`` in the export format."""
        tenant = _parent_tenant()
        for line in self._audit.reader.export(tenant, request.start_sequence):
            yield _pb.ExportEventsResponse(line=line)

    def VerifyChain(
        self, request: _pb.VerifyChainRequest, context: grpc.ServicerContext
    ) -> _pb.VerifyChainResponse:
        """Verify a range of the chain and report the first broken link."""
        tenant = _parent_tenant()
        report = self._audit.reader.verify(tenant, request.start_sequence, request.end_sequence)
        return _pb.VerifyChainResponse(
            ok=report.ok,
            first_bad_sequence=report.first_bad_sequence,
            failure=(
                _FAILURE_OUT[report.failure] if report.failure else _pb.CHAIN_FAILURE_UNSPECIFIED
            ),
            checked_count=report.checked_count,
            head_sequence=report.head_sequence,
        )

    def CreateCheckpoint(
        self, request: _pb.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> _pb.CreateCheckpointResponse:
        """Sign a checkpoint over the chain's current head."""
        tenant = _parent_tenant()
        return _pb.CreateCheckpointResponse(
            checkpoint=checkpoint_proto(self._audit.checkpoints.create_checkpoint(tenant))
        )

    def ListCheckpointKeys(
        self, request: _pb.ListCheckpointKeysRequest, context: grpc.ServicerContext
    ) -> _pb.ListCheckpointKeysResponse:
        """Every checkpoint key's public half, newest first."""
        return _pb.ListCheckpointKeysResponse(
            keys=[
                _pb.CheckpointKey(kid=k.kid, x=b64url_encode(k.public_key), status=k.status)
                for k in self._audit.checkpoints.checkpoint_keys()
            ]
        )
