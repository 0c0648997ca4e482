"""Honest purge of a project or a whole tenant: crypto-shred first, then delete, then a receipt.

Phases (each one database transaction that also advances the job row, see ``PurgeStore``):

1. **shred**: every data-key version of the scope (seal and fingerprint, every version) loses
   its wrapped key material and becomes ``destroyed``; a tenant purge also drops the tenant's
   customer-key binding. From this commit on nothing the scope sealed or fingerprinted can be
   recovered, by this service or from any copy of its rows. ``data_key`` change records make
   every replica drop its unwrapped copies.
2. **delete**: API keys, sessions, sealed secrets, data-key rows, scheduled fingerprint-key
   destructions and, for a tenant, its handles and settings are deleted; ``api_key`` and
   ``session`` change records make every replica forget them (verify answers NOT_FOUND on this
   replica at once, on others within the change watcher's bound). On SQLite the write-ahead log
   is then truncated so no pre-purge page image remains in the files.
3. **audit and receipt**: a durable ``tenant.purged`` / ``project.purged`` event with the counts
   (and the receipt id, so a retry finds it instead of appending a second one), then the signed
   receipt (:mod:`zumik_secrets.core.purge_receipts`) is stored and the job marked ``done``.

Resumability: a purge interrupted anywhere (``kill -9`` included) is finished by running it
again: the job row says which phase committed last. Keys never outlive their data in a readable
way: the data is unreadable from phase 1 on, whatever happens after. A purge run again after it
completed returns the same receipt, unless the scope holds data again (it was used after the
purge), in which case a new purge runs and a new receipt is made.

Test hook: ``pause_after`` (``ZUMIK_TEST_PURGE_PAUSE_AFTER`` = ``shred`` or ``delete``) makes the
purge sleep ``pause_seconds`` after that phase commits, so a test can kill the process there.
Inert unless set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry, audited_change, event
from zumik_secrets.app.audit_log import AuditLog
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.app.tenant_settings import TenantSettingsService
from zumik_secrets.core import purge_receipts as receipts
from zumik_secrets.core.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    resource_not_found,
)
from zumik_secrets.core.handles import KIND_PURGE_RECEIPT, new_handle
from zumik_secrets.core.names import ProjectName, PurgeReceiptName, TenantName
from zumik_secrets.storage.ports import AuditFilter, PurgeStore
from zumik_secrets.storage.records import PurgeJob, PurgeReceiptRecord

_LOG = logging.getLogger("zumik.purge")

REASON_CONFIRMATION_MISMATCH = "CONFIRMATION_MISMATCH"
AUDIT_REASON = (
    "audit events hold no secret; each is kept for the tenant's audit retention period after it"
    " was recorded, so none outlives 'until'"
)
PAUSE_PHASES = ("shred", "delete")
_STRIPES = 16


def _now() -> datetime:
    return datetime.now(UTC)


def confirmation_mismatch() -> InvalidArgument:
    """The answer when ``confirm`` does not repeat ``name`` exactly."""
    return InvalidArgument(
        "confirm must repeat name exactly; nothing was purged",
        reason=REASON_CONFIRMATION_MISMATCH,
        metadata={"field": "confirm"},
        violations=[FieldViolation("confirm", "must equal name")],
    )


def receipt_counts(job: PurgeJob) -> dict[str, int]:
    """Every destroyed-kind count of a finished job (zeros included)."""
    counts = {kind: 0 for kind in receipts.DESTROYED_KINDS}
    counts.update(job.destroyed)
    live = [k for k in job.shredded if k.was != "destroyed"]
    counts["data_key_versions"] = len(live)
    counts["seal_keys"] = sum(1 for k in live if k.purpose == "seal")
    counts["fingerprint_keys"] = sum(1 for k in live if k.purpose == "fingerprint")
    return counts


class PurgeService:
    """Purges projects and tenants, and serves their receipts. Thread-safe."""

    def __init__(
        self,
        store: PurgeStore,
        audit_log: AuditLog,
        keys: CheckpointKeys,
        settings: TenantSettingsService,
        *,
        after_change: Callable[[], object] = lambda: None,
        pause_after: str = "",
        pause_seconds: float = 60.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the service.

        Args:
            store: Purge jobs and receipts (and the purge phases themselves).
            audit_log: Where the purge event goes (its sequence number is in the receipt).
            keys: The audit checkpoint keys; receipts are signed with the active one.
            settings: Tenant settings (the audit retention the receipt promises).
            after_change: Called after each phase commits, to apply its change records to this
                process's caches at once (the server passes the change watcher's poll).
            pause_after: Test hook (see the module docstring); "" in production.
            pause_seconds: How long the test hook sleeps.
            clock: Current time.
        """
        self._store = store
        self._audit = audit_log
        self._keys = keys
        self._settings = settings
        self._after_change = after_change
        self._pause_after = pause_after
        self._pause_seconds = pause_seconds
        self._clock = clock
        # Striped: purges of one target serialise in this process (other replicas serialise on
        # the job row), without a lock per target ever purged.
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def purge_tenant(self, name: TenantName, confirm: str, actor: Actor) -> PurgeReceiptRecord:
        """Purge a whole tenant (see the module docstring).

        Raises:
            InvalidArgument: reason ``CONFIRMATION_MISMATCH``.
            Unavailable: storage or the audit log is down (run it again: it resumes).
        """
        return self._purge(name.tenant, None, str(name), confirm, actor)

    def purge_project(self, name: ProjectName, confirm: str, actor: Actor) -> PurgeReceiptRecord:
        """Purge one project (see the module docstring). Handles belong to the tenant, not to a
        project, and are kept by a project purge.

        Raises:
            InvalidArgument: reason ``CONFIRMATION_MISMATCH``.
            Unavailable: storage or the audit log is down (run it again: it resumes).
        """
        return self._purge(name.tenant, name.project, str(name), confirm, actor)

    def get_receipt(self, name: PurgeReceiptName) -> PurgeReceiptRecord:
        """A stored receipt (it outlives the purged tenant).

        Raises:
            NotFound: no such receipt for this tenant.
            Unavailable: storage is down.
        """
        rec = self._store.get_receipt(name.tenant, name.id)
        if rec is None:
            raise resource_not_found(str(name))
        return rec

    # -- the purge -------------------------------------------------------------------------------

    def _lock(self, target: str) -> threading.Lock:
        return self._locks[hash(target) % _STRIPES]

    def _purge(
        self, tenant: str, project: str | None, target: str, confirm: str, actor: Actor
    ) -> PurgeReceiptRecord:
        if confirm != target:
            raise confirmation_mismatch()
        with self._lock(target):
            job = self._job(tenant, project, target)
            if isinstance(job, PurgeReceiptRecord):
                return job
            # Each step's event is written in the step's transaction (issue 24).
            if job.phase == "started":
                with audited_change(self._audit, _step_entry(job, "purge.shred", actor)):
                    job = self._store.shred(job.receipt_id, self._clock())
                self._applied("shred", job)
            if job.phase == "shredded":
                with audited_change(self._audit, _step_entry(job, "purge.delete", actor)):
                    job = self._store.delete_rows(job.receipt_id, self._clock())
                self._applied("delete", job)
                try:
                    self._store.scrub()
                except Exception:  # noqa: BLE001 - best effort; the rows are gone either way
                    _LOG.warning("post-purge scrub failed", exc_info=True)
            if job.phase == "deleted":
                job = self._finish(job, actor)
            rec = self._store.get_receipt(tenant, job.receipt_id)
            if rec is None:  # done without a receipt cannot happen: finish stores both at once
                raise RuntimeError("purge job done but its receipt is missing")
            return rec

    def _job(self, tenant: str, project: str | None, target: str) -> PurgeJob | PurgeReceiptRecord:
        job = self._store.open_job(target)
        if job is not None:
            _LOG.info("resuming purge", extra={"target": target, "phase": job.phase})
            return job
        previous = self._store.latest_receipt(target)
        if previous is not None and not self._store.scope_has_data(tenant, project):
            return previous
        now = self._clock()
        job = PurgeJob(
            receipt_id=new_handle(KIND_PURGE_RECEIPT),
            tenant_id=tenant,
            project_id=project,
            phase="started",
            destroyed={},
            shredded=(),
            audit_retention=self._settings.audit_retention_for(tenant),
            started_at=now,
            updated_at=now,
        )
        try:
            return self._store.create_job(job)
        except AlreadyExists:
            # Another replica started a purge of the same target meanwhile: run that one.
            other = self._store.open_job(target)
            if other is None:
                raise Unavailable(
                    "a concurrent purge of this target just finished; run it again",
                    reason="PURGE_CONFLICT",
                ) from None
            return other

    def _applied(self, phase: str, job: PurgeJob) -> None:
        try:
            self._after_change()
        except Exception:  # noqa: BLE001 - the change watcher delivers them shortly anyway
            _LOG.warning("applying purge changes locally failed", exc_info=True)
        _LOG.info("purge phase committed", extra={"target": job.target, "phase": job.phase})
        if self._pause_after == phase:
            _LOG.warning("test hook: purge paused", extra={"after": phase})
            time.sleep(self._pause_seconds)

    def _purge_event_sequence(self, job: PurgeJob, action: str) -> int | None:
        """The sequence of this job's purge event if an earlier attempt already recorded it."""
        token = ""
        flt = AuditFilter(action=action, target=job.target)
        while True:
            events, token = self._audit.reader.query(
                job.tenant_id, flt, page_size=1000, page_token=token
            )
            for stored in events:
                if ("receipt", job.receipt_id) in stored.attributes:
                    return stored.sequence
            if not token:
                return None

    def _finish(self, job: PurgeJob, actor: Actor) -> PurgeJob:
        counts = receipt_counts(job)
        action = "tenant.purged" if job.project_id is None else "project.purged"
        sequence = self._purge_event_sequence(job, action)
        if sequence is None:
            attributes = {"receipt": job.receipt_id} | {k: str(n) for k, n in counts.items()}
            entry = event(actor, job.tenant_id, action, job.target, "success", "PURGED", attributes)
            sequence = self._audit.append(entry).sequence
        now = self._clock()
        name = str(PurgeReceiptName(job.tenant_id, job.receipt_id))
        statement = receipts.PurgeStatement(
            name=name,
            target=job.target,
            destroyed=counts,
            data_key_versions=tuple(
                receipts.DestroyedKeyVersion(k.project_id, k.purpose, k.version, k.was)
                for k in job.shredded
            ),
            retained=(
                receipts.RetainedItem(
                    "audit_events", AUDIT_REASON, int(job.audit_retention.total_seconds())
                ),
            ),
            audit_sequence=sequence,
            started_time=job.started_at,
            purge_time=now,
        )
        kid, signer = self._keys.checkpoint_signer()
        data, signature = receipts.sign_statement(signer, statement)
        return self._store.finish(
            job.receipt_id,
            PurgeReceiptRecord(
                tenant_id=job.tenant_id,
                receipt_id=job.receipt_id,
                target=job.target,
                statement=data,
                kid=kid,
                signature=signature,
                audit_sequence=sequence,
                purge_time=now,
            ),
            now,
        )


def _step_entry(job: PurgeJob, action: str, actor: Actor) -> AuditEntry:
    """The event of one purge step (``purge.shred``, ``purge.delete``)."""
    return event(actor, job.tenant_id, action, job.target, attributes={"receipt": job.receipt_id})
