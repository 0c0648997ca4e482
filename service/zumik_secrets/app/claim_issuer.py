"""Mints tenant claims for verified credentials, reusing a recent one instead of re-signing.

DESIGN.md section 10: a signature costs about a third of an empty RPC, so a credential verified
over and over gets the same claim back while that claim still has at least half of its lifetime
left. The cache is keyed by credential id and holds one claim per credential (for the scopes and
signing key it was minted with); revoking or rotating the credential forgets it.

A claim never outlives its credential: ``issue`` takes the moment the credential stops verifying
(an API key's expiry or the end of its rotation grace, a session's absolute timeout or the end of
its current idle period) and the claim's ``exp`` is at most that (rounded down to the second;
a credential with less than a second left gets a one-second claim). Without it a claim minted
just before a key's ``ttl`` ran out kept working for the whole claim TTL, and no change record
announces an expiry, so the revocation set could not reach it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from zumik_secrets.core.claims import ClaimSigner

DEFAULT_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class IssuedClaim:
    """A minted claim token (hidden from repr) and its expiry (unix seconds)."""

    token: str = field(repr=False)
    expires_at: int
    issued_at: int = 0


@dataclass(frozen=True, slots=True)
class _Cached:
    tenant_id: str
    project_id: str
    subject: str
    scopes: tuple[str, ...]
    kid: str
    claim: IssuedClaim


class ClaimIssuer:
    """Mints claims with the current signer, caching one per credential.

    Thread-safe: one lock around dict work; signing happens outside it.
    """

    def __init__(
        self,
        signer: Callable[[], ClaimSigner],
        ttl_seconds: int,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create the issuer.

        Args:
            signer: Returns the signer of the current active key (it changes on rotation).
            ttl_seconds: Lifetime of minted claims (1..300).
            max_entries: Bound on cached claims.
            clock: Unix time in seconds (tests inject their own).
        """
        self._signer = signer
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def issue(
        self,
        credential_id: str,
        tenant_id: str,
        project_id: str,
        subject: str,
        scopes: Sequence[str],
        *,
        not_after: float | None = None,
        not_before: float = 0.0,
    ) -> IssuedClaim:
        """A claim for the credential: the cached one if still fresh enough, else a new one.

        ``not_after`` (unix seconds) is when the credential stops verifying, if ever: the
        claim expires no later than that. ``not_before`` is the earliest ``iat`` the claim may
        carry (a rotated session's claims must be from after the rotation's second): the claim
        is then minted valid from that second, at most a second ahead of the clock.

        Raises:
            InvalidArgument: a claim value is malformed (a stored record out of grammar).
        """
        now = max(int(self._clock()), math.ceil(not_before))
        ttl = self._ttl
        if not_after is not None:
            ttl = max(1, min(ttl, int(not_after) - now))
        signer = self._signer()
        scope_tuple = tuple(sorted(scopes))
        cached = self._cache.get(credential_id)
        if (
            cached is not None
            and cached.kid == signer.kid
            and cached.scopes == scope_tuple
            and cached.tenant_id == tenant_id
            and cached.project_id == project_id
            and cached.subject == subject
            and cached.claim.issued_at >= not_before
            and 2 * (cached.claim.expires_at - now) >= ttl
            and cached.claim.expires_at <= now + ttl
        ):
            return cached.claim
        token, claim = signer.mint(
            tenant_id,
            project_id,
            subject,
            scope_tuple,
            now,
            ttl,
            credential_id=credential_id,
        )
        issued = IssuedClaim(token, claim.expires_at, claim.issued_at)
        entry = _Cached(tenant_id, project_id, subject, scope_tuple, signer.kid, issued)
        with self._lock:
            self._cache.pop(credential_id, None)
            self._cache[credential_id] = entry
            while len(self._cache) > self._max:
                del self._cache[next(iter(self._cache))]
        return issued

    def forget(self, credential_id: str) -> None:
        """Drop the cached claim of a credential (revoked, rotated or changed)."""
        with self._lock:
            self._cache.pop(credential_id, None)

    def clear(self) -> None:
        """Drop every cached claim."""
        with self._lock:
            self._cache.clear()
