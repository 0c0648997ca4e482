"""The audit reader: queries, verification and exports of the tenants' chains.

Every read first chains what waits in the outbox (the writer's read barrier), so a caller sees
the events of the changes it made. Verification checks links, sequence numbers and every
checkpoint of the range, the witness's included (docs/AUDIT.md, "Verification"); an export ends
at a checkpoint signed over the head it exports (by the checkpointer) and is self-verifying.
Query pages resume from tokens of the one codec (:mod:`zumik_secrets.core.page_tokens`), bound
to a digest of the tenant and filter.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator

from zumik_secrets.app.audit_checkpoints import AuditCheckpointer
from zumik_secrets.app.audit_witness import AuditWitness
from zumik_secrets.app.audit_writer import audit_unavailable
from zumik_secrets.app.checkpoint_keys import CheckpointKeys
from zumik_secrets.core import audit_chain as chain
from zumik_secrets.core import page_tokens
from zumik_secrets.core.audit_chain import ChainEvent, ChainReport, Checkpoint
from zumik_secrets.core.errors import FieldViolation, InvalidArgument
from zumik_secrets.storage.ports import AuditFilter, AuditStore

_LOG = logging.getLogger("zumik.audit")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_READ_PAGE = 500


class AuditReader:
    """Reads the chains: :meth:`query`, :meth:`verify`, :meth:`export`."""

    def __init__(
        self,
        store: AuditStore,
        keys: CheckpointKeys,
        checkpointer: AuditCheckpointer,
        *,
        read_barrier: Callable[[], None],
        witness: AuditWitness | None = None,
    ) -> None:
        """Read ``store``'s chains.

        Args:
            store: The audit store.
            keys: Checkpoint keys (which verify).
            checkpointer: Signs the checkpoint that ends an export.
            read_barrier: Called before every read (the writer's outbox drain).
            witness: Whose checkpoints :meth:`verify` checks too (None: none).
        """
        self._store = store
        self._keys = keys
        self._checkpointer = checkpointer
        self._read_barrier = read_barrier
        self._witness = witness

    def _events(self, tenant: str, after: int, until: int | None) -> Iterator[ChainEvent]:
        while True:
            page = self._store.events(
                tenant, after_sequence=after, limit=_READ_PAGE, until_sequence=until
            )
            yield from page
            if len(page) < _READ_PAGE:
                return
            after = page[-1].sequence

    def verify(self, tenant: str, start_sequence: int = 0, end_sequence: int = 0) -> ChainReport:
        """Verify a range of a tenant's chain (0, 0: from the retained start to the head).

        A range that starts after the retained start trusts the stored hash of the event
        before it; the full check starts at the genesis or the signed retention anchor. The
        witness's checkpoints of the tenant are checked like the stored ones (a witness
        checkpoint past the stored head is a truncated tail).

        Raises:
            InvalidArgument: reason ``INVALID_RANGE``, a negative or inverted range, or a
                start past the head.
            Unavailable: storage is down.
        """
        if start_sequence < 0 or end_sequence < 0 or (0 < end_sequence < start_sequence):
            raise InvalidArgument(
                "start_sequence and end_sequence must be >= 0 with start <= end",
                reason="INVALID_RANGE",
                violations=[FieldViolation("start_sequence", "invalid range")],
            )
        self._read_barrier()
        # Checkpoints first, then the head, then events up to that head: heads only grow, so
        # every checkpoint read is at or below the head unless the head row was tampered with,
        # and events appended meanwhile (this very call's audit record) stay out of the range.
        all_checkpoints = self._store.checkpoints(tenant)
        if self._witness is not None:
            try:
                all_checkpoints = all_checkpoints + self._witness.checkpoints(tenant)
            except Exception as exc:  # unreadable witness: no verdict either way
                _LOG.error("audit witness unreadable", exc_info=True)
                raise audit_unavailable() from exc
        head_sequence = (self._store.head(tenant) or (0, b""))[0]
        if start_sequence > max(head_sequence, 1):
            raise InvalidArgument(
                f"start_sequence is past the head of the chain ({head_sequence})",
                reason="INVALID_RANGE",
                violations=[FieldViolation("start_sequence", "past the head of the chain")],
            )
        first = self._store.first_sequence(tenant)
        retained_start = first if first is not None else head_sequence + 1
        anchor: tuple[int, bytes] | None = None
        after = retained_start - 1
        if start_sequence > retained_start:
            before = self._store.event(tenant, start_sequence - 1)
            after = start_sequence - 1
            if before is not None:
                anchor = (before.sequence, before.hash)
        to_head = end_sequence == 0 or end_sequence >= head_sequence
        until = head_sequence if to_head else end_sequence
        checkpoints = [
            cp
            for cp in all_checkpoints
            if cp.sequence >= max(0, after) and (to_head or cp.sequence <= until)
        ]
        keys = self._keys.verification_keys(refresh_for=frozenset(cp.kid for cp in checkpoints))
        return chain.verify_chain(
            self._events(tenant, after, until),
            tenant=tenant,
            checkpoints=checkpoints,
            keys=keys,
            anchor=anchor,
            first_sequence=after + 1,
            head_sequence=head_sequence if to_head else end_sequence,
            to_head=to_head,
        )

    def export(self, tenant: str, start_sequence: int = 0) -> Iterator[str]:
        """The tenant's chain as export lines (see :mod:`zumik_secrets.core.audit_chain`).

        The export is self-verifying: it ends at a checkpoint signed now over the head it
        exports (:meth:`create_checkpoint`, also published to the witness), and it starts at
        the genesis, the retention anchor, or, for a ``start_sequence`` after the retained
        start, at the newest checkpoint at or before ``start_sequence - 1`` (so the export may
        begin a little earlier than asked). Only when no checkpoint lies in between does it
        start with a ``resume`` line, which the offline verifier accepts only with
        ``--allow-unanchored``.

        Raises:
            InvalidArgument: a negative start.
            Unavailable: storage is down.
        """
        if start_sequence < 0:
            raise InvalidArgument(
                "start_sequence must be >= 0",
                reason="INVALID_RANGE",
                violations=[FieldViolation("start_sequence", "must be >= 0")],
            )
        # The checkpoint drains the outbox first (read barrier).
        covering = self._checkpointer.create_checkpoint(tenant)
        until = covering.sequence
        first = self._store.first_sequence(tenant)
        retained_start = first if first is not None else until + 1
        after = retained_start - 1
        resume: str | None = None
        if start_sequence > retained_start:
            wanted = min(start_sequence - 1, until)
            earlier = self._store.checkpoints(tenant, from_sequence=after, to_sequence=wanted)
            if earlier:
                after = earlier[-1].sequence
            else:
                after = wanted
                before = self._store.event(tenant, after)
                if before is not None:
                    resume = chain.resume_line(tenant, before.sequence, before.hash)
        checkpoints = {
            cp.sequence: cp
            for cp in self._store.checkpoints(tenant, from_sequence=after, to_sequence=until)
        }
        checkpoints[until] = covering
        return self._export_lines(tenant, after, until, resume, checkpoints)

    def _export_lines(
        self,
        tenant: str,
        after: int,
        until: int,
        resume: str | None,
        checkpoints: dict[int, Checkpoint],
    ) -> Iterator[str]:
        if resume is not None:
            yield resume
        anchor = checkpoints.pop(after, None)
        if anchor is not None:
            yield chain.checkpoint_line(anchor)
        last = after
        for event in self._events(tenant, after, until):
            yield chain.event_line(event)
            last = event.sequence
            cp = checkpoints.pop(event.sequence, None)
            if cp is not None:
                yield chain.checkpoint_line(cp)
        for seq in sorted(checkpoints):
            if seq > last:
                yield chain.checkpoint_line(checkpoints[seq])

    def query(
        self, tenant: str, flt: AuditFilter, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ChainEvent], str]:
        """One page of a tenant's events matching ``flt``, oldest first (AIP-158).

        Returns:
            ``(events, next_page_token)``; the token is empty on the last page.

        Raises:
            InvalidArgument: a bad page size or a token from another query.
            Unavailable: storage is down.
        """
        if page_size < 0:
            raise InvalidArgument(
                "page_size must not be negative",
                reason="INVALID_PAGE_SIZE",
                violations=[FieldViolation("page_size", "must not be negative")],
            )
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        digest = _filter_digest(tenant, flt)
        after = read_token(page_token, digest) if page_token else 0
        self._read_barrier()
        rows = self._store.query(tenant, flt, after_sequence=after, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        token = make_token(rows[-1].sequence, digest) if more and rows else ""
        return rows, token


def _filter_digest(tenant: str, flt: AuditFilter) -> str:
    text = json.dumps(
        [
            tenant,
            flt.action,
            flt.actor,
            flt.target,
            flt.outcome,
            flt.start_time.isoformat() if flt.start_time else "",
            flt.end_time.isoformat() if flt.end_time else "",
            flt.project,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_token(after_sequence: int, digest: str) -> str:
    """A query page token resuming after ``after_sequence`` (the one codec,
    core/page_tokens.py: authenticated under a server key, range-checked)."""
    return page_tokens.codec().encode("audit_events", digest, after_sequence)


def read_token(token: str, digest: str) -> int:
    """The sequence a token from :func:`make_token` resumes after.

    Raises:
        InvalidArgument: ``INVALID_PAGE_TOKEN``.
    """
    return page_tokens.codec().decode("audit_events", digest, token)[0]
