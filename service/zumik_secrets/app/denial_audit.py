"""Denials are audited without letting a caller write the disk full (issue 15, finding 4).

A recorder in front of the real one. Every event other than ``authz.deny`` passes straight
through. Denials are folded per *interval* (``ZUMIK_DENIAL_AUDIT_INTERVAL``, 10 s):

- the first denial of an (identity, method, reason) in the interval is recorded at once, as
  before;
- repeats of the same (identity, method, reason) in the interval are counted, not recorded; at
  the end of the interval one ``authz.deny`` event carries ``repeated`` (how many were folded),
  ``first_seen`` and ``last_seen`` (UTC), so nothing is dropped silently: the count says what was
  folded;
- an identity may cause at most ``budget`` events per interval (``ZUMIK_DENIAL_AUDIT_BUDGET``,
  100): beyond, its denials (whatever method, reason or path it varies) fold into one per-identity
  overflow event (method ``*``, reason ``DENIAL_AUDIT_BUDGET_EXCEEDED`` with the count), and an
  ERROR line is logged once per interval with the counts (the metric an operator alerts on);
- the fold table is bounded (:data:`MAX_KEYS`); past it every denial folds into one process-wide
  overflow event.

So a caller hammering the service costs at most ``budget + 1`` events per interval per identity
(and ``MAX_KEYS + 1`` in all), instead of one per call. Folded counts not yet flushed are lost if
the process is killed (at most one interval's worth; each event's first occurrence was recorded).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from zumik_secrets.app.audit import AuditEntry, AuditRecorder
from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.core.errors import ZumikError

_LOG = logging.getLogger("zumik.audit")

DENY_ACTION = "authz.deny"
BUDGET_REASON = "DENIAL_AUDIT_BUDGET_EXCEEDED"
#: Most (identity, method, reason) keys folded at once; beyond, one process-wide bucket.
MAX_KEYS = 10_000
_MAX_KEY_PART = 256


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(slots=True)
class _Fold:
    entry: AuditEntry
    first: datetime
    last: datetime
    count: int = 0


@dataclass(slots=True)
class _Window:
    folds: dict[tuple[str, str, str], _Fold] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # events caused, per identity
    over_budget: set[str] = field(default_factory=set)


class DenialAudit:
    """An :class:`AuditRecorder` that folds repeated denials (see the module docstring)."""

    def __init__(
        self,
        inner: AuditRecorder,
        *,
        interval: float = 10.0,
        budget: int = 100,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Wrap ``inner``.

        Args:
            inner: The real recorder.
            interval: Seconds over which repeats fold into one event.
            budget: Events one identity may cause per interval.
            clock: Current time (tests).
        """
        self._inner = inner
        self._interval = interval
        self._budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self._window = _Window()
        self._job = PeriodicJob("denial audit", interval, self.flush, log=_LOG)
        #: Denials folded since start (recorded only as counts): a metric.
        self.folded_total = 0
        #: Times an identity went over its budget: a metric.
        self.budget_exceeded_total = 0

    def start(self) -> None:
        """Start the thread that flushes each interval's folded counts."""
        self._job.start()

    def close(self) -> None:
        """Flush what is folded and stop the thread."""
        self._job.stop()
        self.flush()

    def change(
        self, *entries: AuditEntry, record_unchanged: bool = True
    ) -> AbstractContextManager[None]:
        """Events of a change go to the inner recorder unfolded (they are never denials)."""
        return self._inner.change(*entries, record_unchanged=record_unchanged)

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        """Record ``entry``; a repeated denial is folded instead.

        Raises:
            Unavailable: as the inner recorder (only for events passed through).
        """
        if entry.action != DENY_ACTION or durable:
            self._inner.record(entry, durable=durable)
            return
        identity = entry.actor[:_MAX_KEY_PART]
        method = entry.attributes.get("method", "")[:_MAX_KEY_PART]
        now = self._clock()
        with self._lock:
            window = self._window
            key = (identity, method, entry.reason)
            fold = window.folds.get(key)
            if fold is not None:
                fold.count += 1
                fold.last = now
                self.folded_total += 1
                return
            caused = window.events.get(identity, 0)
            if caused >= self._budget or len(window.folds) >= MAX_KEYS:
                self._fold_overflow(window, identity, entry, now)
                return
            window.events[identity] = caused + 1
            window.folds[key] = _Fold(entry, now, now)
        self._inner.record(entry)

    def _fold_overflow(
        self, window: _Window, identity: str, entry: AuditEntry, now: datetime
    ) -> None:
        """Count a denial past the identity's budget (or past the table's size); lock held."""
        self.folded_total += 1
        if len(window.folds) >= MAX_KEYS:
            identity = "*"
        key = (identity, "*", BUDGET_REASON)
        fold = window.folds.get(key)
        if fold is None:
            summary = AuditEntry(
                tenant_id=None,
                actor=entry.actor if identity != "*" else "*",
                actor_subject="",
                action=DENY_ACTION,
                target="",
                outcome="denied",
                reason=BUDGET_REASON,
                trace_id=entry.trace_id,
                attributes={"method": "*"},
            )
            # The fold is created with count 0 and counts this denial below, so the summary's
            # `repeated` is every denial past the budget.
            fold = _Fold(summary, now, now)
            window.folds[key] = fold
        fold.count += 1
        fold.last = now
        if identity not in window.over_budget:
            window.over_budget.add(identity)
            self.budget_exceeded_total += 1

    def flush(self) -> None:
        """Record the folded counts of the interval that ends now and start a new one."""
        with self._lock:
            window, self._window = self._window, _Window()
        for identity in sorted(window.over_budget):
            _LOG.error(
                "denial audit budget exceeded: further denials of this identity are folded",
                extra={
                    "identity": identity,
                    "budget": self._budget,
                    "interval_s": self._interval,
                    "folded": window.folds[(identity, "*", BUDGET_REASON)].count,
                },
            )
        for fold in window.folds.values():
            if fold.count == 0:
                continue
            base = fold.entry
            attributes = {
                "method": base.attributes.get("method", ""),
                "repeated": str(fold.count),
                "first_seen": _iso(fold.first),
                "last_seen": _iso(fold.last),
            }
            try:
                self._inner.record(
                    AuditEntry(
                        tenant_id=base.tenant_id,
                        actor=base.actor,
                        actor_subject=base.actor_subject,
                        action=DENY_ACTION,
                        target=base.target,
                        outcome="denied",
                        reason=base.reason,
                        trace_id=base.trace_id,
                        attributes=attributes,
                    )
                )
            except ZumikError:
                _LOG.warning("audit of folded denials failed", extra={"repeated": fold.count})
