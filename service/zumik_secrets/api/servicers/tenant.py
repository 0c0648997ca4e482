"""TenantService: tenant settings (telemetry mode). Retention and purge come later."""

from __future__ import annotations

import grpc
from zumik.secrets.v1 import tenant_service_pb2 as _pb
from zumik.secrets.v1 import tenant_service_pb2_grpc as _grpc

from zumik_secrets.api.call_context import current_call
from zumik_secrets.api.contracts import SERVICE_DESCRIPTORS
from zumik_secrets.api.convert import timestamp
from zumik_secrets.api.servicers.unimplemented import fill_unimplemented
from zumik_secrets.app.tenant_settings import RICH_MODE, TenantSettingsService
from zumik_secrets.core.errors import (
    FieldViolation,
    InvalidArgument,
    Unimplemented,
    resource_not_found,
)
from zumik_secrets.storage.records import TenantSettings

_MODES_OUT = {"default": _pb.TELEMETRY_MODE_DEFAULT, RICH_MODE: _pb.TELEMETRY_MODE_RICH}
_MODES_IN = {_pb.TELEMETRY_MODE_DEFAULT: "default", _pb.TELEMETRY_MODE_RICH: RICH_MODE}
_SETTINGS_SUFFIX = "/settings"


def _settings_tenant(name: str) -> str:
    """The tenant of `tenants/{tenant}/settings` (the interceptor checked the tenant part)."""
    parts = name.split("/")
    if len(parts) != 3 or parts[2] != "settings" or parts[1] == "-":
        raise InvalidArgument(
            "name must look like tenants/{tenant}/settings",
            reason="INVALID_NAME",
            metadata={"field": "name"},
            violations=[FieldViolation("name", "expected tenants/{tenant}/settings")],
        )
    tenant = current_call().tenant_id
    if tenant != parts[1]:  # the interceptor derived tenant_id from this very name
        raise resource_not_found(name)
    return tenant


def _to_proto(settings: TenantSettings) -> _pb.TenantSettings:
    return _pb.TenantSettings(
        name=f"tenants/{settings.tenant_id}{_SETTINGS_SUFFIX}",
        telemetry_mode=_MODES_OUT.get(settings.telemetry_mode, _pb.TELEMETRY_MODE_DEFAULT),
        update_time=timestamp(settings.updated_at) if settings.updated_at.timestamp() else None,
    )


class TenantServicer(_grpc.TenantServiceServicer):
    """Tenant settings over gRPC."""

    def __init__(self, settings: TenantSettingsService) -> None:
        """Serve ``settings``."""
        self._settings = settings

    def GetTenantSettings(
        self, request: _pb.GetTenantSettingsRequest, context: grpc.ServicerContext
    ) -> _pb.GetTenantSettingsResponse:
        """Return the settings of the caller's tenant."""
        tenant = _settings_tenant(request.name)
        return _pb.GetTenantSettingsResponse(settings=_to_proto(self._settings.get(tenant)))

    def UpdateTenantSettings(
        self, request: _pb.UpdateTenantSettingsRequest, context: grpc.ServicerContext
    ) -> _pb.UpdateTenantSettingsResponse:
        """Update the fields named by update_mask (only telemetry_mode for now)."""
        tenant = _settings_tenant(request.name)
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument(
                "update_mask must name the fields to update (for example telemetry_mode)",
                reason="UPDATE_MASK_REQUIRED",
                metadata={"field": "update_mask"},
            )
        known = {f.name for f in _pb.TenantSettings.DESCRIPTOR.fields}
        unknown = [p for p in paths if p not in known]
        if unknown:
            raise InvalidArgument(
                f"update_mask names unknown fields: {', '.join(sorted(unknown))}",
                reason="INVALID_UPDATE_MASK",
                metadata={"field": "update_mask"},
            )
        not_yet = [p for p in paths if p != "telemetry_mode"]
        if not_yet:
            raise Unimplemented(
                f"updating {', '.join(sorted(not_yet))} is not available in this release yet",
                reason="NOT_IMPLEMENTED_YET",
                metadata={"field": "update_mask"},
            )
        mode = _MODES_IN.get(request.settings.telemetry_mode)
        if mode is None:
            raise InvalidArgument(
                "settings.telemetry_mode must be TELEMETRY_MODE_DEFAULT or TELEMETRY_MODE_RICH",
                reason="INVALID_TELEMETRY_MODE",
                metadata={"field": "settings.telemetry_mode"},
            )
        updated = self._settings.set_telemetry_mode(tenant, mode)
        return _pb.UpdateTenantSettingsResponse(settings=_to_proto(updated))


fill_unimplemented(TenantServicer, SERVICE_DESCRIPTORS[4])
