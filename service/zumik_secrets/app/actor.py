"""Who asked for a use case, as the audit trail records it (the app layer knows no gRPC)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller of a use case.

    Attributes:
        identity: SPIFFE ID of the calling service ("" if unknown).
        subject: Subject of the caller's tenant claim ("" without one).
        trace_id: Trace id of the call ("" when tracing is off).
    """

    identity: str = ""
    subject: str = ""
    trace_id: str = ""


SYSTEM = Actor(identity="zumik-secrets")
"""Background work of the service itself (sweeps)."""
