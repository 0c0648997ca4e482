"""Revocation that reaches claims: revoked credentials and purge tombstones (DESIGN.md s. 11).

A claim names the credential it was minted from (``cid``: an API key or session id, never a
secret). This module keeps, per process, what the change feed says about those credentials and
about purged scopes, and refuses a claim that outlived its source:

- **credentials**: on every ``api_key`` / ``session`` change the credential is read again. Gone
  (purged) or revoked: every claim it minted is refused. An expiry (an API key's, including the
  end of a rotation's grace period; a session's absolute timeout): refused from that time on. A
  live session that changed (its token was rotated, perhaps with new scopes): claims issued
  up to the end of the change's second are refused (claims carry whole seconds); the new
  token's claims are minted with ``iat`` after that second (``issue_floor``, within the
  verifier's ``nbf`` leeway), so they are not caught by the cut.
  Only credentials whose claims could still be alive are kept: an entry is dropped once
  ``max_claim_lifetime`` passed after its cut-off, so the set is bounded by the changes of the
  last few minutes, not by history.
- **tombstones**: a purged (or being purged) tenant or project is closed for good. Every claim
  naming it is refused, whatever its ``iat``, and nothing acting without a claim may create
  data in it again. Tombstones are persistent (read from the purge jobs at start and on every
  ``purge`` change).

The bound is the change watcher's: a change committed on any replica is applied here within
``poll_interval`` plus one feed read (a PostgreSQL NOTIFY wakes the watcher at once); the
replica that made the change applies it before answering (the use cases poll the feed).
At start-up the feed's recent past (``max_claim_lifetime``) is replayed, so a replica started
after a revocation still refuses the claims it did not see being revoked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from zumik_secrets.core.claims import DEFAULT_LEEWAY_SECONDS, MAX_TTL_SECONDS, TenantClaim
from zumik_secrets.core.errors import FailedPrecondition, Unauthenticated
from zumik_secrets.storage.ports import ApiKeyStore, ChangeFeed, PurgeStore, SessionStore
from zumik_secrets.storage.records import ChangeRecord

_LOG = logging.getLogger("zumik.claims")

REASON_CLAIM_REVOKED = "CLAIM_REVOKED"
"""The claim's credential was revoked, expired or purged, or its tenant/project was purged."""
REASON_CLAIM_NO_CREDENTIAL = "CLAIM_NO_CREDENTIAL"
"""The claim names no credential (``cid``), so no revocation could reach it: refused."""
REASON_SCOPE_PURGED = "SCOPE_PURGED"
"""A call acting without a claim names a purged tenant or project (FAILED_PRECONDITION)."""

_FOREVER = float("inf")


@dataclass(frozen=True, slots=True)
class _Cut:
    valid_until: float
    """Claims of the credential are refused from this unix time on (inf: no limit)."""
    issued_from: float
    """Claims whose ``iat`` is before this are refused."""
    keep_until: float
    """When the entry can be forgotten (no claim it refuses can still be alive)."""


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class ClaimRevocations:
    """The revoked-credential set and the purge tombstones of one process. Thread-safe."""

    def __init__(
        self,
        api_keys: ApiKeyStore,
        sessions: SessionStore,
        purges: PurgeStore,
        *,
        max_claim_lifetime: float = MAX_TTL_SECONDS + DEFAULT_LEEWAY_SECONDS,
        clock: Callable[[], float] = time.time,
        accept_without_credential: bool = False,
    ) -> None:
        """Create the set (empty until :meth:`load`).

        Args:
            api_keys: Read on ``api_key`` changes.
            sessions: Read on ``session`` changes.
            purges: The persistent tombstones.
            max_claim_lifetime: Longest a claim can be accepted after it was minted (TTL plus
                leeway), in seconds: how long a cut-off must be remembered.
            clock: Unix time.
            accept_without_credential: Accept claims that name no credential (minted by the
                previous release) during a rolling upgrade; they are still checked against the
                purge tombstones, but no revocation can reach them before they expire.
        """
        self._accept_without_credential = accept_without_credential
        self._api_keys = api_keys
        self._sessions = sessions
        self._purges = purges
        self._horizon = max_claim_lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._cuts: dict[str, _Cut] = {}
        self._tenants: dict[str, float] = {}
        self._projects: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        """How many credentials are remembered (bounded by recent changes)."""
        return len(self._cuts)

    # -- feeding -----------------------------------------------------------------------------

    def load(self, feed: ChangeFeed | None = None) -> None:
        """Load the tombstones and replay the recent past of ``feed``.

        Raises:
            Unavailable: storage is down.
        """
        self.reload_tombstones()
        if feed is None:
            return
        horizon = self._clock() - self._horizon
        seq = 0
        while True:
            batch = feed.since(seq)
            for record in batch:
                seq = record.seq
                if record.at.timestamp() >= horizon:
                    self.on_change(record)
            if len(batch) < 1000:
                return

    def reload_tombstones(self, _record: ChangeRecord | None = None) -> None:
        """Read every tombstone again (a ``purge`` change subscriber)."""
        tenants: dict[str, float] = {}
        projects: dict[tuple[str, str], float] = {}
        for tenant, project, at in self._purges.tombstones():
            if project is None:
                tenants[tenant] = min(tenants.get(tenant, _FOREVER), at.timestamp())
            else:
                key = (tenant, project)
                projects[key] = min(projects.get(key, _FOREVER), at.timestamp())
        with self._lock:
            self._tenants = tenants
            self._projects = projects

    def on_change(self, record: ChangeRecord) -> None:
        """Apply an ``api_key`` or ``session`` change (a change-watcher subscriber)."""
        if record.kind == "api_key":
            self._note(record.entity_id, self._key_cut(record))
        elif record.kind == "session":
            self._note(record.entity_id, self._session_cut(record))
        elif record.kind == "purge":
            self.reload_tombstones()

    def _key_cut(self, record: ChangeRecord) -> tuple[float, float]:
        rec = self._api_keys.get_by_id(record.entity_id)
        if rec is None:
            return 0.0, _FOREVER
        if rec.state == "revoked" or rec.revoke_time is not None:
            return 0.0, _FOREVER
        until = _ts(rec.expire_time)
        return (_FOREVER if until is None else until), 0.0

    def _session_cut(self, record: ChangeRecord) -> tuple[float, float]:
        rec = self._sessions.get_by_id(record.entity_id)
        if rec is None or rec.state == "revoked" or rec.revoke_time is not None:
            return 0.0, _FOREVER
        # A live session changed: its token was rotated (perhaps with narrower scopes). Claims
        # carry whole seconds, so every claim of the rotation's second is refused too (one
        # minted from the old token a moment before would otherwise keep the old scopes for
        # its whole TTL); the new token's claims are minted after it (``issue_floor``).
        return rec.absolute_expire_time.timestamp(), float(int(record.at.timestamp()) + 1)

    def _note(self, cid: str, cut: tuple[float, float]) -> None:
        valid_until, issued_from = cut
        now = self._clock()
        last = now if valid_until == 0.0 else max(now, min(valid_until, now + 10 * 365 * 86400))
        entry = _Cut(valid_until, issued_from, last + self._horizon)
        with self._lock:
            old = self._cuts.get(cid)
            if old is not None:
                entry = _Cut(
                    min(old.valid_until, entry.valid_until),
                    max(old.issued_from, entry.issued_from),
                    max(old.keep_until, entry.keep_until),
                )
            self._cuts[cid] = entry
            if len(self._cuts) % 256 == 0:
                self._prune(now)

    def _prune(self, now: float) -> None:
        stale = [cid for cid, cut in self._cuts.items() if cut.keep_until < now]
        for cid in stale:
            del self._cuts[cid]

    def prune(self) -> int:
        """Forget entries no live claim can need; returns how many remain."""
        with self._lock:
            self._prune(self._clock())
            return len(self._cuts)

    def cut(self, cid: str) -> tuple[float, float] | None:
        """The cut-off of credential ``cid``, if one is remembered: ``(valid_until,
        issued_from)`` in unix seconds (``inf`` / ``0.0``: no limit), what the revocation feed
        tells gateways."""
        cut = self._cuts.get(cid)
        return None if cut is None else (cut.valid_until, cut.issued_from)

    def issue_floor(self, cid: str) -> float:
        """The earliest ``iat`` a new claim of credential ``cid`` may carry to be accepted here
        (0.0: no constraint): after a session's rotation, the second that follows it."""
        cut = self._cuts.get(cid)
        return 0.0 if cut is None or cut.issued_from == _FOREVER else cut.issued_from

    # -- checking ----------------------------------------------------------------------------

    def check_claim(self, claim: TenantClaim, now: float) -> TenantClaim:
        """Return ``claim`` if neither its credential nor its scope was revoked or purged.

        Raises:
            Unauthenticated: reason ``CLAIM_REVOKED`` or ``CLAIM_NO_CREDENTIAL``.
        """
        if not claim.credential_id and not self._accept_without_credential:
            raise Unauthenticated(
                "tenant claim names no credential", reason=REASON_CLAIM_NO_CREDENTIAL
            )
        cut = self._cuts.get(claim.credential_id) if claim.credential_id else None
        if (
            (cut is not None and (now >= cut.valid_until or claim.issued_at < cut.issued_from))
            or claim.tenant_id in self._tenants
            or (claim.tenant_id, claim.project_id) in self._projects
        ):
            raise Unauthenticated("tenant claim was revoked", reason=REASON_CLAIM_REVOKED)
        return claim

    def purged(self, tenant: str, project: str | None) -> bool:
        """Whether ``tenant`` (or its ``project``) is a tombstone."""
        return tenant in self._tenants or (
            project is not None and (tenant, project) in self._projects
        )

    def check_scope(self, tenant: str, project: str | None) -> None:
        """Refuse a call without a claim that names a purged scope.

        Raises:
            FailedPrecondition: reason ``SCOPE_PURGED``.
        """
        if self.purged(tenant, project):
            raise FailedPrecondition(
                "the tenant or project was purged; nothing can be created in it again",
                reason=REASON_SCOPE_PURGED,
            )
