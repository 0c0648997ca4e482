"""Services whose behaviour has not been built yet: every RPC answers UNIMPLEMENTED clearly.

Each class moves to its own module when its service lands.
"""

from __future__ import annotations

from zumik.secrets.v1 import audit_service_pb2_grpc as _audit
from zumik.secrets.v1 import fingerprint_service_pb2_grpc as _fingerprint
from zumik.secrets.v1 import seal_service_pb2_grpc as _seal

from zumik_secrets.api.contracts import SERVICE_DESCRIPTORS
from zumik_secrets.api.servicers.unimplemented import fill_unimplemented


class SealServicer(_seal.SealServiceServicer):
    """SealService (not built yet)."""


class FingerprintServicer(_fingerprint.FingerprintServiceServicer):
    """FingerprintService (not built yet)."""


class AuditServicer(_audit.AuditServiceServicer):
    """AuditService (not built yet)."""


fill_unimplemented(SealServicer, SERVICE_DESCRIPTORS[1])
fill_unimplemented(FingerprintServicer, SERVICE_DESCRIPTORS[2])
fill_unimplemented(AuditServicer, SERVICE_DESCRIPTORS[3])
