"""Opaque public handles: MintHandle and ResolveHandle.

A handle is ``<kind>_`` and 22 base62 characters of 128 random bits from the injected random
source (the OS CSPRNG in the server), never derived from the reference it stands for, so two
mints of the same reference give unrelated handles. Handles are unique per tenant: an insert that
collides (astronomically unlikely with real randomness; forced in tests with a seeded source) is
retried with a fresh handle a few times, then the call fails UNAVAILABLE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry, AuditRecorder, audited_change, event
from zumik_secrets.core.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    Unavailable,
    resource_not_found,
)
from zumik_secrets.core.handles import new_handle, validate_kind
from zumik_secrets.core.names import HandleName, TenantName
from zumik_secrets.core.primitives import random_bytes
from zumik_secrets.storage.ports import HandleStore
from zumik_secrets.storage.records import HandleRecord

_LOG = logging.getLogger("zumik.handles")

MAX_REFERENCE = 256
MINT_ATTEMPTS = 4
REASON_HANDLE_COLLISION = "HANDLE_COLLISION"


def _now() -> datetime:
    return datetime.now(UTC)


def check_reference(reference: str) -> None:
    """Check a handle's reference: 1 to 256 printable characters.

    Raises:
        InvalidArgument: reason ``INVALID_REFERENCE`` (the value is never echoed).
    """
    if not 1 <= len(reference) <= MAX_REFERENCE or not reference.isprintable():
        problem = f"must be 1 to {MAX_REFERENCE} printable characters"
        raise InvalidArgument(
            f"reference {problem}",
            reason="INVALID_REFERENCE",
            metadata={"field": "reference"},
            violations=[FieldViolation("reference", problem)],
        )


class Handles:
    """Mint and resolve handles."""

    def __init__(
        self,
        store: HandleStore,
        audit: AuditRecorder,
        *,
        rand: Callable[[int], bytes] = random_bytes,
        clock: Callable[[], datetime] = _now,
        attempts: int = MINT_ATTEMPTS,
    ) -> None:
        """Create the service.

        Args:
            store: Handle rows.
            audit: Where mints are recorded (not durably: a mint reveals nothing).
            rand: Random source for handles (tests inject a seeded one).
            clock: Current time.
            attempts: Inserts tried before a collision streak is reported UNAVAILABLE.
        """
        self._store = store
        self._audit = audit
        self._rand = rand
        self._clock = clock
        self._attempts = attempts

    def mint(
        self, parent: TenantName, kind: str, reference: str, actor: Actor, *, project: str = ""
    ) -> HandleRecord:
        """Mint a new random handle for ``reference``, owned by ``project`` (the minting
        claim's project; "" for a tenant-wide caller).

        Raises:
            InvalidArgument: bad kind (``INVALID_HANDLE``) or reference (``INVALID_REFERENCE``).
            Unavailable: storage, or ``HANDLE_COLLISION`` after repeated collisions.
        """
        validate_kind(kind)
        check_reference(reference)
        for _attempt in range(self._attempts):
            rec = HandleRecord(
                tenant_id=parent.tenant,
                handle=new_handle(kind, self._rand),
                kind=kind,
                reference=reference,
                created_at=self._clock(),
                project_id=project,
            )
            try:
                with audited_change(self._audit, self._entry(actor, rec)):
                    self._store.insert(rec)
            except AlreadyExists:
                _LOG.warning("handle collision; minting another", extra={"kind": kind})
                continue
            return rec
        raise Unavailable("could not mint a unique handle; retry", reason=REASON_HANDLE_COLLISION)

    def resolve(self, name: HandleName, *, project: str | None = None) -> HandleRecord:
        """The handle named ``name``, if ``project`` (a project claim's) owns it.

        Args:
            name: The handle's name.
            project: The caller's project; None for a tenant-wide caller (sees every handle).

        Raises:
            NotFound: no such handle for this tenant and project (identical to another
                tenant's or project's handle).
            Unavailable: storage.
        """
        rec = self._store.get(name.tenant, name.id)
        if rec is None or (project is not None and rec.project_id != project):
            raise resource_not_found(str(name))
        return rec

    @staticmethod
    def _entry(actor: Actor, rec: HandleRecord) -> AuditEntry:
        """The event of a minted handle (written in the transaction that stores it)."""
        target = str(HandleName(rec.tenant_id, rec.handle))
        return event(actor, rec.tenant_id, "handle.mint", target, attributes={"kind": rec.kind})
