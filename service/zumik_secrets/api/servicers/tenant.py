"""TenantService: tenant settings (telemetry, retention), customer key, retention runs, purge."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf import duration_pb2
from zumik.secrets.v1 import tenant_service_pb2 as _pb
from zumik.secrets.v1 import tenant_service_pb2_grpc as _grpc

from zumik_secrets.api.call_context import current_call
from zumik_secrets.api.convert import duration, timestamp
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.customer_keys import CustomerKeys
from zumik_secrets.app.purge import PurgeService
from zumik_secrets.app.retention import Retention
from zumik_secrets.app.tenant_settings import (
    BOUNDS,
    RETENTION_FIELDS,
    RICH_MODE,
    TenantSettingsService,
    retention_out_of_range,
)
from zumik_secrets.core import purge_receipts
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.core.names import (
    ANY_TENANT,
    ProjectName,
    PurgeReceiptName,
    SettingsName,
    TenantName,
)
from zumik_secrets.storage.records import PurgeReceiptRecord, TenantSettings

_MODES_OUT = {"default": _pb.TELEMETRY_MODE_DEFAULT, RICH_MODE: _pb.TELEMETRY_MODE_RICH}
_MODES_IN = {_pb.TELEMETRY_MODE_DEFAULT: "default", _pb.TELEMETRY_MODE_RICH: RICH_MODE}
_SETTINGS_SUFFIX = "/settings"
_UPDATABLE = ("telemetry_mode", *RETENTION_FIELDS)


def _bad_settings_name() -> InvalidArgument:
    return InvalidArgument(
        "name must look like tenants/{tenant}/settings",
        reason="INVALID_NAME",
        metadata={"field": "name"},
        violations=[FieldViolation("name", "expected tenants/{tenant}/settings")],
    )


def _settings_tenant(*, allow_any: bool = False) -> str:
    """The tenant of the checked `tenants/{tenant}/settings`; with ``allow_any``,
    `tenants/-/settings` gives ``-`` (every tenant)."""
    tenant = current_call().resource_as(SettingsName, "name").tenant
    if tenant == ANY_TENANT and not allow_any:
        raise _bad_settings_name()
    return tenant


def _actor() -> Actor:
    call = current_call()
    return Actor(identity=call.identity, subject=call.subject, trace_id=call.trace_id)


def _to_proto(settings: TenantSettings, customer_key: bool = False) -> _pb.TenantSettings:
    return _pb.TenantSettings(
        name=f"tenants/{settings.tenant_id}{_SETTINGS_SUFFIX}",
        telemetry_mode=_MODES_OUT.get(settings.telemetry_mode, _pb.TELEMETRY_MODE_DEFAULT),
        audit_retention=duration(settings.audit_retention),
        revoked_key_retention=duration(settings.revoked_key_retention),
        session_absolute_lifetime=duration(settings.session_absolute_lifetime),
        customer_key_configured=customer_key,
        update_time=timestamp(settings.updated_at) if settings.updated_at.timestamp() else None,
    )


def _retention_value(field: str, message: duration_pb2.Duration) -> timedelta:
    low, high = BOUNDS[field]
    if message.nanos or not low.total_seconds() <= message.seconds <= high.total_seconds():
        raise retention_out_of_range(field)
    return timedelta(seconds=message.seconds)


def receipt_to_proto(rec: PurgeReceiptRecord) -> _pb.PurgeReceipt:
    """The wire form of a stored receipt (counts and retention read from its statement)."""
    stmt = purge_receipts.parse_statement(rec.statement)
    return _pb.PurgeReceipt(
        name=stmt.name,
        target=rec.target,
        destroyed=[
            _pb.PurgeCount(kind=kind, count=count) for kind, count in sorted(stmt.destroyed.items())
        ],
        retained=[
            _pb.RetainedData(
                kind=item.kind, reason=item.reason, retention=duration(item.retention_seconds)
            )
            for item in stmt.retained
        ],
        audit_sequence=rec.audit_sequence,
        purge_time=timestamp(rec.purge_time),
        statement=rec.statement,
        kid=rec.kid,
        signature=rec.signature,
    )


class TenantServicer(_grpc.TenantServiceServicer):
    """Tenant settings, retention and purge over gRPC."""

    def __init__(
        self,
        settings: TenantSettingsService,
        customer_keys: CustomerKeys,
        purges: PurgeService,
        retention: Retention,
    ) -> None:
        """Serve ``settings``, the customer-key configuration, retention runs and purges."""
        self._settings = settings
        self._customer_keys = customer_keys
        self._purges = purges
        self._retention = retention

    def GetTenantSettings(
        self, request: _pb.GetTenantSettingsRequest, context: grpc.ServicerContext
    ) -> _pb.GetTenantSettingsResponse:
        """Return the settings of the caller's tenant (defaults filled in)."""
        tenant = _settings_tenant()
        return _pb.GetTenantSettingsResponse(
            settings=_to_proto(
                self._settings.effective(tenant), self._customer_keys.is_configured(tenant)
            )
        )

    def UpdateTenantSettings(
        self, request: _pb.UpdateTenantSettingsRequest, context: grpc.ServicerContext
    ) -> _pb.UpdateTenantSettingsResponse:
        """Update the fields named by update_mask; a retention field named but left unset in
        ``settings`` goes back to the default."""
        tenant = _settings_tenant()
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument(
                "update_mask must name the fields to update (for example telemetry_mode)",
                reason="UPDATE_MASK_REQUIRED",
                metadata={"field": "update_mask"},
            )
        wrong = [p for p in paths if p not in _UPDATABLE]
        if wrong:
            raise InvalidArgument(
                f"update_mask names fields that cannot be updated: {', '.join(sorted(wrong))}"
                f" (updatable: {', '.join(_UPDATABLE)})",
                reason="INVALID_UPDATE_MASK",
                metadata={"field": "update_mask"},
            )
        changes: dict[str, str | timedelta | None] = {}
        for path in paths:
            if path == "telemetry_mode":
                mode = _MODES_IN.get(request.settings.telemetry_mode)
                if mode is None:
                    raise InvalidArgument(
                        "settings.telemetry_mode must be TELEMETRY_MODE_DEFAULT or"
                        " TELEMETRY_MODE_RICH",
                        reason="INVALID_TELEMETRY_MODE",
                        metadata={"field": "settings.telemetry_mode"},
                    )
                changes[path] = mode
            elif request.settings.HasField(path):  # type: ignore[arg-type]
                changes[path] = _retention_value(path, getattr(request.settings, path))
            else:
                changes[path] = None
        self._settings.update(tenant, changes, _actor())
        return _pb.UpdateTenantSettingsResponse(
            settings=_to_proto(
                self._settings.effective(tenant), self._customer_keys.is_configured(tenant)
            )
        )

    def ConfigureCustomerKey(
        self, request: _pb.ConfigureCustomerKeyRequest, context: grpc.ServicerContext
    ) -> _pb.ConfigureCustomerKeyResponse:
        """Bind the tenant's data keys to its own Transit key (verified, then rewrapped)."""
        tenant = _settings_tenant()
        self._customer_keys.configure(
            tenant,
            address=request.address,
            mount=request.mount,
            key_name=request.key_name,
            token=request.token,
            ca_certificate_pem=request.ca_certificate_pem,
            actor=_actor(),
        )
        return _pb.ConfigureCustomerKeyResponse(
            settings=_to_proto(self._settings.effective(tenant), True)
        )

    def RunRetention(
        self, request: _pb.RunRetentionRequest, context: grpc.ServicerContext
    ) -> _pb.RunRetentionResponse:
        """Run the retention sweeps now for the tenant (or, for `tenants/-/settings`, all)."""
        tenant = _settings_tenant(allow_any=True)
        removed = self._retention.run(None if tenant == ANY_TENANT else tenant, _actor())
        return _pb.RunRetentionResponse(removed=removed)

    def PurgeProject(
        self, request: _pb.PurgeProjectRequest, context: grpc.ServicerContext
    ) -> _pb.PurgeProjectResponse:
        """Crypto-shred and delete one project; answer with the signed receipt."""
        name = current_call().resource_as(ProjectName, "name")
        rec = self._purges.purge_project(name, request.confirm, _actor())
        return _pb.PurgeProjectResponse(receipt=receipt_to_proto(rec))

    def PurgeTenant(
        self, request: _pb.PurgeTenantRequest, context: grpc.ServicerContext
    ) -> _pb.PurgeTenantResponse:
        """Crypto-shred and delete a whole tenant; answer with the signed receipt."""
        name = current_call().resource_as(TenantName, "name")
        rec = self._purges.purge_tenant(name, request.confirm, _actor())
        return _pb.PurgeTenantResponse(receipt=receipt_to_proto(rec))

    def GetPurgeReceipt(
        self, request: _pb.GetPurgeReceiptRequest, context: grpc.ServicerContext
    ) -> _pb.GetPurgeReceiptResponse:
        """Return a stored receipt (available after the tenant is gone)."""
        name = current_call().resource_as(PurgeReceiptName, "name")
        return _pb.GetPurgeReceiptResponse(receipt=receipt_to_proto(self._purges.get_receipt(name)))
