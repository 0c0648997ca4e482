"""The audit recorder port: every security decision and key usage is reported through it.

Two ways to record:

* **A change** (create/rotate/revoke a key or session, seal/update/delete a secret, data-key and
  fingerprint-key lifecycle, settings, customer keys, handles, purge steps): wrap the one
  storage call that makes it in ``with audited_change(recorder, AuditEntry(...)):``. The event is
  written in that call's database transaction (the audit outbox, drained into the hash chain
  by the writer thread), so after any crash the change and its event are both there or both
  absent. A change whose event cannot be written does not happen (fail closed).
* **No change** (verifications, denials, Open, failures): ``record(recorder, AuditEntry(...),
  durable=...)``. ``durable`` asks the recorder not to return until the event is stored;
  sensitive reads (Open) set it and fail closed when the recorder fails.
  Non-durable events are group-committed within tens of milliseconds; a crash in that window
  loses them, which is why no change is recorded that way.

The fail-closed rule lives here, once (docs/AUDIT.md, "A change whose durable audit event
fails"): use cases record through :func:`record` and :func:`audited_change`, never through the
recorder's methods directly. Whatever the recorder raises for a durable event (or for a change's
events), the caller gets :class:`Unavailable` with reason ``AUDIT_UNAVAILABLE`` and the change or
the result does not happen; a lost non-durable event is logged and the call goes on.

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

from zumik_secrets.app.actor import Actor
from zumik_secrets.core.audit_events import sanitize
from zumik_secrets.core.errors import Unavailable, ZumikError

_AUDIT_LOG = logging.getLogger("zumik.audit")

REASON_AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"


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
        clean: ``target``, ``reason`` and ``attributes`` already made safe to store
            (:func:`clean_fields` of the same values), for events the service renders once and
            records many times (verifications); None: the recorder sanitizes them.
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
    clean: CleanFields | None = None


@dataclass(frozen=True, slots=True)
class CleanFields:
    """An event's free-text fields after :func:`~zumik_secrets.core.audit_events.sanitize`.

    Attributes:
        target: The target, secret-looking text redacted, truncated to its limit.
        reason: The reason, likewise.
        attributes: The kept attributes as sorted ``(key, value)`` pairs.
    """

    target: str
    reason: str
    attributes: tuple[tuple[str, str], ...]


def clean_fields(target: str, reason: str, attributes: Mapping[str, str]) -> CleanFields:
    """Sanitize an event's free-text fields once (the recorder then skips the scan)."""
    target, reason, kept = sanitize(target, reason, attributes)
    return CleanFields(target, reason, tuple(sorted(kept.items())))


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


def audit_unavailable() -> Unavailable:
    """The error of a durable audit event (or a change's event) that could not be stored."""
    return Unavailable(
        "the audit trail cannot record this call right now; nothing was done or returned that "
        "needed it, retry later",
        reason=REASON_AUDIT_UNAVAILABLE,
    )


def event(
    actor: Actor,
    tenant_id: str | None,
    action: str,
    target: str,
    outcome: str = "success",
    reason: str = "OK",
    attributes: Mapping[str, str] | None = None,
) -> AuditEntry:
    """The event of ``actor``'s call (a successful change's unless ``outcome`` says otherwise)."""
    return AuditEntry(
        tenant_id=tenant_id,
        actor=actor.identity,
        actor_subject=actor.subject,
        action=action,
        target=target,
        outcome=outcome,
        reason=reason,
        trace_id=actor.trace_id,
        attributes=dict(attributes or {}),
    )


def _failed(action: str, error: BaseException) -> None:
    # An outage (a ZumikError) is expected and already logged by the recorder; anything else is
    # a bug of the recorder and keeps its traceback. Entries hold no secret; errors' text is not
    # logged.
    _AUDIT_LOG.warning(
        "audit of %s failed (%s)",
        action,
        type(error).__name__,
        exc_info=not isinstance(error, ZumikError),
    )


def record(recorder: AuditRecorder, entry: AuditEntry, *, durable: bool) -> bool:
    """Record an event that goes with no change: the one fail-closed rule for such events.

    Args:
        recorder: Where it goes.
        entry: The event.
        durable: Whether the caller's result depends on it being stored (Open, a break-glass
            use): then any failure of the recorder fails the call.

    Returns:
        True when the recorder took it; False when a non-durable event was lost (logged; the
        caller may raise an alert of its own).

    Raises:
        Unavailable: reason ``AUDIT_UNAVAILABLE``, only when ``durable`` and the recorder
            failed (whatever it raised).
    """
    try:
        recorder.record(entry, durable=durable)
    except Exception as error:  # noqa: BLE001 - any recorder failure: fail closed when durable
        _failed(entry.action, error)
        if durable:
            raise audit_unavailable() from None
        return False
    return True


@contextmanager
def audited_change(
    recorder: AuditRecorder, *entries: AuditEntry, record_unchanged: bool = True
) -> Iterator[None]:
    """:meth:`AuditRecorder.change` under the fail-closed rule: wrap the one storage call.

    The block's own errors (the storage call's, including a transaction that could not write
    the events) pass through unchanged; a failure of the recorder itself (staging the events,
    or the durable record of a block that changed nothing) becomes ``AUDIT_UNAVAILABLE``.

    Raises:
        Unavailable: reason ``AUDIT_UNAVAILABLE`` when the recorder failed.
    """
    action = entries[0].action if entries else "a change"
    manager = recorder.change(*entries, record_unchanged=record_unchanged)
    try:
        manager.__enter__()
    except Exception as error:  # noqa: BLE001 - any recorder failure fails closed
        _failed(action, error)
        raise audit_unavailable() from None
    try:
        yield
    except BaseException as error:
        if not manager.__exit__(type(error), error, error.__traceback__):
            raise
        return
    try:
        manager.__exit__(None, None, None)
    except Exception as error:  # noqa: BLE001 - any recorder failure fails closed
        _failed(action, error)
        raise audit_unavailable() from None
