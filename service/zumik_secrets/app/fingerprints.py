"""Fingerprints: keyed HMAC-SHA256 of values under the (tenant, project) ``fingerprint`` data key.

Keys are ordinary data keys (purpose ``fingerprint``): random, versioned, stored only wrapped,
cached unwrapped as keyed HMAC states by :class:`~zumik_secrets.app.data_keys.DataKeys`.

**Hot path.** A Fingerprint call costs one lookup in this module's per-project state cache (the
primary version and key, and the previous version's during an overlap window) and then one HMAC
copy/update/finalize per value: no unwrap and no database read per value, nor per call once warm.
The state is dropped whenever :class:`DataKeys` drops the project's fingerprint keys: at once for
a rotation or destruction made on this replica (by this service or SealService's data-key RPCs),
and through the change feed (kind ``data_key``) when another replica rotates, destroys or
schedules a destruction; and it expires at the earliest scheduled destruction so no replica keeps
using a version past its window.

**Rotation.** :meth:`Fingerprints.rotate` makes a new version primary, then schedules every other
live version for destruction at ``now + overlap`` (an earlier time already scheduled is kept).
With no overlap the schedule is due at once and swept inside the call: the wrapped key material
is deleted (crypto-shredding) before the call returns, so equality linkage across the rotation is
broken on purpose and a ``fingerprint_key.linkage_broken`` event is recorded durably. With an
overlap, Fingerprint also returns the fingerprints under the previous version until the window
ends; then the version is destroyed and the event recorded by whichever comes first:

- the next Fingerprint or MatchFingerprint call for that project on any replica (the cached
  state expires at the scheduled time, and reloading it sweeps the project's due rows), or
- the periodic sweep (:class:`Sweeper`, every ``ZUMIK_FINGERPRINT_SWEEP_INTERVAL`` seconds).

Bound: from the scheduled time on, no replica answers with the old version (each checks the time
on every call; clock skew between replicas aside); its wrapped key is deleted within one sweep
interval of that time (or, if the sweeper that leased the row died, within the lease of
:data:`SWEEP_LEASE` after that). A row is removed only once its version is destroyed and the
event is durable, so the event is recorded at least once, never before the destruction.

**Matching.** MatchFingerprint answers ``KEY_DESTROYED`` for a version that was destroyed or whose
window has ended (never a silent NO_MATCH), and ``NO_MATCH`` for a version this project never had:
such a fingerprint was not made here, and telling it apart would only reveal how many rotations
the project had (versions are per project, so nothing about other tenants could leak anyway).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from zumik_secrets.app.actor import SYSTEM, Actor
from zumik_secrets.app.audit import AuditRecorder, audited_change, event
from zumik_secrets.app.data_keys import REASON_DATA_KEY_DESTROYED, DataKeys
from zumik_secrets.app.periodic import PeriodicJob
from zumik_secrets.app.ttl_cache import TtlLru
from zumik_secrets.core import fingerprints as fp
from zumik_secrets.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ZumikError,
)
from zumik_secrets.core.names import ProjectName
from zumik_secrets.core.primitives import HmacSha256
from zumik_secrets.core.sealing import PURPOSE_FINGERPRINT
from zumik_secrets.storage.ports import FingerprintScheduleStore
from zumik_secrets.storage.records import ScheduledDestroy

_LOG = logging.getLogger("zumik.fingerprints")

PURPOSE = PURPOSE_FINGERPRINT
MAX_OVERLAP = timedelta(days=90)
SWEEP_LEASE = timedelta(seconds=60)
"""How long a sweeper owns a due row before another replica may take it over."""
DEFAULT_SWEEP_INTERVAL = 5.0
REASON_BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
REASON_VALUE_TOO_LARGE = "VALUE_TOO_LARGE"
_STRIPES = 64

Project = tuple[str, str]


def _now() -> datetime:
    return datetime.now(UTC)


class MatchResult(enum.Enum):
    """Answer of :meth:`Fingerprints.match`."""

    MATCH = "match"
    NO_MATCH = "no_match"
    KEY_DESTROYED = "key_destroyed"


@dataclass(frozen=True, slots=True)
class FingerprintResult:
    """Fingerprints of a batch.

    Attributes:
        fingerprints: Under the primary version, in order.
        previous_fingerprints: Under the previous version during an overlap window, else empty.
        key_version: The primary version.
    """

    fingerprints: list[str]
    previous_fingerprints: list[str]
    key_version: int


@dataclass(frozen=True, slots=True)
class RotationResult:
    """Outcome of a rotation.

    Attributes:
        key_version: The new primary version.
        previous_key_version: The version that was primary before (0 if none).
        linkage_break_time: When the previous versions are (or were) destroyed.
    """

    key_version: int
    previous_key_version: int
    linkage_break_time: datetime


@dataclass(frozen=True, slots=True)
class _Version:
    version: int
    key: HmacSha256


@dataclass(frozen=True, slots=True)
class _State:
    """What a project's calls need, cached: never holds raw key bytes."""

    primary: _Version
    previous: _Version | None
    # Wall-clock (epoch seconds) of each scheduled destruction, and the earliest of them: the
    # state must be reloaded (and the project swept) once it has passed.
    schedule: Mapping[int, float]
    deadline: float


def _bad(field: str, problem: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} {problem}",
        reason=reason,
        metadata={"field": field},
        violations=[FieldViolation(field, problem)],
    )


def check_values(values: Sequence[bytes]) -> None:
    """Check a batch's size and each value's length.

    Raises:
        InvalidArgument: empty batch, more than :data:`~zumik_secrets.core.fingerprints.MAX_BATCH`
            values (``BATCH_TOO_LARGE``), or a value over 64 KiB (``VALUE_TOO_LARGE``).
    """
    count = len(values)
    if count == 0:
        raise _bad("values", "must hold at least one value", "FIELD_REQUIRED")
    if count > fp.MAX_BATCH:
        raise _bad(
            "values",
            f"holds {count} values; at most {fp.MAX_BATCH} per call (split the batch)",
            REASON_BATCH_TOO_LARGE,
        )
    if max(map(len, values)) > fp.MAX_VALUE_BYTES:
        raise _bad(
            "values",
            f"each value must be at most {fp.MAX_VALUE_BYTES} bytes",
            REASON_VALUE_TOO_LARGE,
        )


class Fingerprints:
    """The FingerprintService fingerprint use cases (Fingerprint, Match, Rotate, sweeps)."""

    def __init__(
        self,
        data_keys: DataKeys,
        schedule: FingerprintScheduleStore,
        audit: AuditRecorder,
        *,
        cache_entries: int = 10_000,
        cache_ttl: float = 300.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the service.

        Args:
            data_keys: The data keys (purpose ``fingerprint``).
            schedule: Scheduled destructions.
            audit: Where rotation and linkage events go.
            cache_entries: Most projects whose state is cached.
            cache_ttl: Seconds a project's state is trusted without the change feed.
            clock: Current time (wall clock: schedules are shared between replicas).
        """
        self._data_keys = data_keys
        self._schedule = schedule
        self._audit = audit
        self._clock = clock
        self._states: TtlLru[Project, _State] = TtlLru(cache_entries, cache_ttl)
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        data_keys.on_forget(self._on_forget)

    # -- state -----------------------------------------------------------------------------------

    def _state(self, tenant_id: str, project_id: str) -> _State:
        key = (tenant_id, project_id)
        state = self._states.get(key)
        if state is not None and self._clock().timestamp() < state.deadline:
            return state
        with self._stripes[hash(key) % _STRIPES]:
            state = self._states.get(key)
            if state is not None and self._clock().timestamp() < state.deadline:
                return state
            state = self._load(tenant_id, project_id)
            self._states.put(key, state)
            return state

    def _load(self, tenant_id: str, project_id: str) -> _State:
        now = self._clock()
        pending = self._schedule.pending(tenant_id, project_id)
        if any(row.destroy_at <= now for row in pending):
            self._sweep(SYSTEM, tenant_id=tenant_id, project_id=project_id)
            pending = self._schedule.pending(tenant_id, project_id)
        version, key = self._data_keys.primary_mac(tenant_id, project_id, PURPOSE)
        previous: _Version | None = None
        live = [r for r in pending if r.destroy_at > now and r.version < version]
        if live:
            newest = max(live, key=lambda r: r.version)
            try:
                old = self._data_keys.mac_key(tenant_id, project_id, PURPOSE, newest.version)
            except FailedPrecondition as error:  # destroyed early (DestroyDataKeyVersion)
                if error.reason != REASON_DATA_KEY_DESTROYED:
                    raise
                old = None
            if old is not None:
                previous = _Version(newest.version, old)
        schedule = {r.version: r.destroy_at.timestamp() for r in pending}
        deadline = min((at for at in schedule.values() if at > now.timestamp()), default=_FOREVER)
        return _State(_Version(version, key), previous, schedule, deadline)

    def forget(self, tenant_id: str, project_id: str) -> None:
        """Drop a project's cached state (the next call reloads it)."""
        self._states.pop((tenant_id, project_id))

    def _on_forget(self, triple: tuple[str, str, str]) -> None:
        if triple[2] == PURPOSE:
            self.forget(triple[0], triple[1])

    # -- use cases -------------------------------------------------------------------------------

    def fingerprint(
        self, parent: ProjectName, namespace: str, values: Sequence[bytes]
    ) -> FingerprintResult:
        """Fingerprint a batch under the primary version (and the previous one during an
        overlap window).

        Raises:
            InvalidArgument: bad namespace, empty or oversized batch, oversized value.
            Unavailable, FailedPrecondition: storage or the customer's key (cold state only).
        """
        check_values(values)
        fp.validate_namespace(namespace)
        state = self._state(parent.tenant, parent.project)
        tenant, project = parent.tenant, parent.project
        current = fp.Fingerprinter(
            state.primary.key, state.primary.version, tenant, project, namespace
        ).fingerprint_all(values)
        previous: list[str] = []
        if state.previous is not None:
            previous = fp.Fingerprinter(
                state.previous.key, state.previous.version, tenant, project, namespace
            ).fingerprint_all(values)
        return FingerprintResult(current, previous, state.primary.version)

    def match(
        self, parent: ProjectName, namespace: str, value: bytes, fingerprint: str
    ) -> MatchResult:
        """Whether ``value`` has ``fingerprint`` in this project and namespace (constant time).

        Raises:
            InvalidArgument: ``FINGERPRINT_MALFORMED``, bad namespace, value over 64 KiB.
            Unavailable, FailedPrecondition: storage or the customer's key.
        """
        parsed = fp.parse_fingerprint(fingerprint)
        fp.validate_namespace(namespace)
        if len(value) > fp.MAX_VALUE_BYTES:
            raise _bad(
                "value", f"must be at most {fp.MAX_VALUE_BYTES} bytes", REASON_VALUE_TOO_LARGE
            )
        tenant, project = parent.tenant, parent.project
        state = self._state(tenant, project)
        version = parsed.key_version
        scheduled = state.schedule.get(version)
        if scheduled is not None and self._clock().timestamp() >= scheduled:
            return MatchResult.KEY_DESTROYED  # window over; the sweep may still be on its way
        if version == state.primary.version:
            key: HmacSha256 | None = state.primary.key
        elif state.previous is not None and version == state.previous.version:
            key = state.previous.key
        else:
            try:
                key = self._data_keys.mac_key(tenant, project, PURPOSE, version)
            except FailedPrecondition as error:
                if error.reason == REASON_DATA_KEY_DESTROYED:
                    return MatchResult.KEY_DESTROYED
                raise
        if key is None:
            return MatchResult.NO_MATCH
        fingerprinter = fp.Fingerprinter(key, version, tenant, project, namespace)
        return MatchResult.MATCH if fingerprinter.matches(value, parsed) else MatchResult.NO_MATCH

    def rotate(self, parent: ProjectName, overlap: timedelta, actor: Actor) -> RotationResult:
        """Make a new version primary and schedule the others' destruction after ``overlap``
        (at once, inside this call, when it is zero).

        Raises:
            InvalidArgument: negative or too long an overlap.
            Unavailable: storage, or ``AUDIT_UNAVAILABLE`` when the rotation event could not be
                made durable (the rotation itself happened; the scheduled destruction still
                takes place, by the sweep).
            FailedPrecondition: the customer's key.
        """
        if overlap < timedelta(0) or overlap > MAX_OVERLAP:
            raise _bad(
                "overlap", f"must be between 0 and {MAX_OVERLAP.days} days", "INVALID_DURATION"
            )
        tenant, project = parent.tenant, parent.project
        break_at = self._clock() + overlap
        current = self._data_keys.existing_primary(tenant, project, PURPOSE) or 0
        # Written in the rotation's transaction; "version" is set there (outbox.annotate).
        entry = event(
            actor,
            tenant,
            "fingerprint_key.rotate",
            str(parent),
            attributes={
                "previous_version": str(current),
                "overlap_seconds": str(int(overlap.total_seconds())),
                "linkage_break_time": break_at.isoformat(),
            },
        )
        with audited_change(self._audit, entry):
            rec = self._data_keys.rotate(tenant, project, PURPOSE)
        older = [
            v.version
            for v in self._data_keys.versions(tenant, project, PURPOSE)
            if v.state == "enabled" and v.version < rec.version
        ]
        previous = max(older, default=0)
        if older:
            self._schedule.schedule(tenant, project, older, break_at)
        self.forget(tenant, project)
        if older and overlap == timedelta(0):
            self._sweep(actor, tenant_id=tenant, project_id=project)
        return RotationResult(rec.version, previous, break_at)

    # -- destruction -----------------------------------------------------------------------------

    def sweep(self, limit: int = 100) -> int:
        """Destroy every due version of every project (the periodic sweep).

        Returns:
            How many versions were destroyed and audited.

        Raises:
            Unavailable: storage is down.
        """
        return self._sweep(SYSTEM, limit=limit)

    def _sweep(
        self,
        actor: Actor,
        *,
        tenant_id: str | None = None,
        project_id: str | None = None,
        limit: int = 100,
    ) -> int:
        now = self._clock()
        rows = self._schedule.claim_due(
            now, now + SWEEP_LEASE, tenant_id=tenant_id, project_id=project_id, limit=limit
        )
        done = 0
        for row in rows:
            try:
                self._destroy(actor, row)
                done += 1
            except ZumikError as error:
                # The lease lapses and the next sweep retries; nothing claims what did not happen.
                _LOG.warning(
                    "fingerprint key destruction deferred",
                    extra={"tenant": row.tenant_id, "version": row.version, "reason": error.reason},
                )
        return done

    def _destroy(self, actor: Actor, row: ScheduledDestroy) -> None:
        tenant, project = row.tenant_id, row.project_id
        primary = self._data_keys.existing_primary(tenant, project, PURPOSE) or 0
        entry = event(
            actor,
            tenant,
            "fingerprint_key.linkage_broken",
            str(ProjectName(tenant, project)),
            attributes={
                "destroyed_version": str(row.version),
                "primary_version": str(primary),
                "scheduled_time": row.destroy_at.isoformat(),
            },
        )
        # Recorded in the destruction's transaction; nothing when the version was destroyed
        # already (a retried sweep) or the project was purged meanwhile (nothing to break).
        with audited_change(self._audit, entry, record_unchanged=False):
            self._data_keys.destroy(tenant, project, PURPOSE, row.version)
        self.forget(tenant, project)
        self._schedule.done(tenant, project, row.version)


_FOREVER = float("inf")


def sweeper(fingerprints: Fingerprints, interval: float = DEFAULT_SWEEP_INTERVAL) -> PeriodicJob:
    """The job running :meth:`Fingerprints.sweep` every ``interval`` seconds (not started); its
    interval is part of the stated destruction bound."""
    return PeriodicJob("fingerprint sweep", interval, fingerprints.sweep, log=_LOG)
