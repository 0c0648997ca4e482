"""The audit recorder port: every security decision and key usage is reported through it.

Two ways to record:

* **A change** (create/rotate/revoke a key or session, seal/update/delete a secret, data-key and
  fingerprint-key lifecycle, settings, customer keys, handles, purge steps): wrap the one
  storage call that makes it in ``with recorder.change(AuditEntry(...)):``. The event is
  written in that call's database transaction (the audit outbox, drained into the hash chain
  by the writer thread), so after any crash the change and its event are both there or both
  absent. A change whose event cannot be written does not happen (fail closed).
* **No change** (verifications, denials, Open, failures): ``recorder.record(AuditEntry(...),
  durable=...)``. ``durable`` asks the recorder not to return until the event is stored;
  sensitive reads (Open) set it and fail closed when the recorder raises ``Unavailable``.
  Non-durable events are group-committed within tens of milliseconds; a crash in that window
  loses them, which is why no change is recorded that way.

The server records into :class:`zumik_secrets.app.audit_log.AuditLog` (the tamper-evident,
hash-chained store with group commit). :class:`LogAuditRecorder` remains for unit tests that
need a recorder without storage: it writes each event as a structured line on the
``zumik.audit`` logger and is neither durable nor chained.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

_AUDIT_LOG = logging.getLogger("zumik.audit")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One event to record. No field may ever hold a secret.

    Attributes:
        tenant_id: Tenant whose chain the event belongs to; None for service-wide events.
        actor: SPIFFE ID of the calling service ("" if unknown).
        actor_subject: Subject of the caller's tenant claim, when there was one.
        action: Dotted event type, such as ``authz.deny`` or ``api_key.create``.
        target: Resource name or handle acted on.
        outcome: ``success``, ``failure`` or ``denied``.
        reason: Stable UPPER_SNAKE reason code.
        trace_id: Trace id of the causing call.
        attributes: Small non-secret attributes.
    """

    tenant_id: str | None
    actor: str
    actor_subject: str
    action: str
    target: str
    outcome: str
    reason: str
    trace_id: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


class CallAudit:
    """Whether the call being served has recorded an event naming its caller (see
    :func:`track_call`)."""

    __slots__ = ("actor", "recorded")

    def __init__(self, actor: str) -> None:
        """Start with nothing recorded for ``actor`` (the caller's SPIFFE ID)."""
        self.actor = actor
        self.recorded = False


_CALL_AUDIT: contextvars.ContextVar[CallAudit | None] = contextvars.ContextVar(
    "zumik_call_audit", default=None
)


def track_call(actor: str) -> tuple[CallAudit, contextvars.Token[CallAudit | None]]:
    """Start noting the events the current call records (the interceptor's use).

    An allowed call to a method whose allows are audited needs no separate ``authz.allow``
    event when the method succeeds and has recorded its own event of the call naming the same
    caller (same actor, subject, target and trace): that event is the record of the allowed
    call. Recorders mark the call only once an event is accepted (queued, or stored when
    durable) and only for an event whose actor is the caller; the interceptor records the
    allow when nothing was marked or the method failed.

    Args:
        actor: The caller's SPIFFE ID.

    Returns:
        The tracker and the token for :func:`untrack_call`.
    """
    audit = CallAudit(actor)
    return audit, _CALL_AUDIT.set(audit)


def untrack_call(token: contextvars.Token[CallAudit | None]) -> None:
    """Stop tracking (undo :func:`track_call`)."""
    _CALL_AUDIT.reset(token)


def note_recorded(actor: str) -> None:
    """Mark the current call (if tracked) as having recorded an event of ``actor``.

    Recorders call this once the event is accepted: queued (non-durable) or stored (durable).
    """
    audit = _CALL_AUDIT.get()
    if audit is not None and actor == audit.actor:
        audit.recorded = True


class AuditRecorder(Protocol):
    """Where audit events go."""

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        """Record one event.

        Raises:
            Unavailable: the event could not be stored (only when ``durable`` is set).
        """

    def change(
        self, *entries: AuditEntry, record_unchanged: bool = True
    ) -> AbstractContextManager[None]:
        """Record ``entries`` with the change the block's one storage call makes.

        A block that made no change records them durably (``record_unchanged``) or not at all.

        Raises:
            Unavailable: the events could not be stored (the change did not happen, or, when
                the call changed nothing, a durable record of them failed).
        """


class LogAuditRecorder:
    """Interim recorder: one structured log line per event on ``zumik.audit``."""

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        """Log the event (see the module docstring for what this does not guarantee)."""
        _AUDIT_LOG.info(
            "audit",
            extra={
                "audit": {
                    "tenant": entry.tenant_id or "-",
                    "actor": entry.actor,
                    "actor_subject": entry.actor_subject,
                    "action": entry.action,
                    "target": entry.target,
                    "outcome": entry.outcome,
                    "reason": entry.reason,
                    "trace_id": entry.trace_id,
                    "attributes": dict(entry.attributes),
                }
            },
        )
        note_recorded(entry.actor)

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Iterator[None]:
        """Log ``entries`` after the block succeeds (no transaction: unit tests only)."""
        yield
        for entry in entries:
            self.record(entry, durable=True)
