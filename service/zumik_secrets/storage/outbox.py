"""Audit events that commit in the transaction of the change they record (issue 24).

The application stages the events of a change (:func:`staged`) around the one storage call that
makes it. The adapters' transaction helpers write them to the ``audit_outbox`` table just
before the commit of the first transaction of that call that changed a row (SQLite: the
connection's change counter moved; PostgreSQL: the transaction was assigned an id, which only
writes and row locks do), so no store method needs to know about auditing. The audit writer later
moves outbox rows into the hash chain and deletes them in one transaction
(:meth:`~zumik_secrets.storage.ports.AuditStore.drain_outbox`). So after any crash a change and
its event are both there or both absent.

A storage call that makes no change (a revoke of a missing key) writes nothing; the application
then sees :attr:`Staged.taken` False after the call and records the event the old way (a
durable record, or nothing when it answers NOT_FOUND).
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from zumik_secrets.core.audit_chain import EventDraft
from zumik_secrets.storage._audit_json import attributes_from_json, attributes_json

if TYPE_CHECKING:
    from zumik_secrets.storage.sql.dialect import Dialect

OUTBOX_COLS = (
    "tenant, event_id, time, actor, actor_subject, action, target, outcome, reason, trace_id,"
    " attributes"
)


def row(draft: EventDraft, dialect: Dialect) -> tuple[Any, ...]:
    """``draft`` as the values of one outbox row, in :data:`OUTBOX_COLS` order."""
    return (
        draft.tenant,
        draft.event_id,
        dialect.time_in(draft.time),
        draft.actor,
        draft.actor_subject,
        draft.action,
        draft.target,
        draft.outcome,
        draft.reason,
        draft.trace_id,
        attributes_json(draft.attributes),
    )


def draft(values: Sequence[Any], dialect: Dialect) -> EventDraft:
    """Inverse of :func:`row`: the draft of one outbox row's values."""
    return EventDraft(
        tenant=values[0],
        event_id=values[1],
        time=dialect.time_out(values[2]),
        actor=values[3],
        actor_subject=values[4],
        action=values[5],
        target=values[6],
        outcome=values[7],
        reason=values[8],
        trace_id=values[9],
        attributes=attributes_from_json(values[10]),
    )


class Staged:
    """The events staged for the change being made in this context."""

    __slots__ = ("drafts", "taken")

    def __init__(self, drafts: Sequence[EventDraft]) -> None:
        self.drafts = tuple(drafts)
        self.taken = False


_STAGED: contextvars.ContextVar[Staged | None] = contextvars.ContextVar(
    "zumik_audit_staged", default=None
)


@contextmanager
def staged(drafts: Sequence[EventDraft]) -> Iterator[Staged]:
    """Stage ``drafts`` for the storage calls made inside the block."""
    holder = Staged(drafts)
    token = _STAGED.set(holder)
    try:
        yield holder
    finally:
        _STAGED.reset(token)


def annotate(key: str, value: str) -> None:
    """Set an attribute on the staged events before they are written (no-op if none staged).

    For values known only inside the change's transaction (a new data-key version, computed
    by the store under its lock, is passed to a callback of the application that can call
    this). ``value`` must hold no secret (drafts are sanitized before they are staged).
    """
    holder = _STAGED.get()
    if holder is None:
        return
    holder.drafts = tuple(
        dataclasses.replace(d, attributes=tuple(sorted({**dict(d.attributes), key: value}.items())))
        for d in holder.drafts
    )


def pending() -> Staged | None:
    """The staged events not yet written, if any (the holder: see :func:`written`)."""
    holder = _STAGED.get()
    if holder is None or holder.taken:
        return None
    return holder


def written(holder: Staged) -> None:
    """Mark ``holder``'s events written in the current (uncommitted) transaction.

    If that transaction then fails the storage call raises, and the application ignores the
    mark (it reads it only after a call that returned); a store that retries a failed
    transaction resets it with :func:`unwritten` first.
    """
    holder.taken = True


def unwritten(holder: Staged) -> None:
    """Undo :func:`written` (the transaction that wrote the events rolled back)."""
    holder.taken = False
