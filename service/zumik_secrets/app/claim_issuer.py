"""Mints tenant claims for verified credentials, reusing a recent one instead of re-signing.

DESIGN.md section 10: a signature costs about a third of an empty RPC, so a credential verified
over and over gets the same claim back while that claim still has at least half of its lifetime
left. The cache is keyed by credential id and holds one claim per credential (for the scopes and
signing key it was minted with); revoking or rotating the credential forgets it.
"""

from __future__ import annotations

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
    ) -> IssuedClaim:
        """A claim for the credential: the cached one if still fresh enough, else a new one.

        Raises:
            InvalidArgument: a claim value is malformed (a stored record out of grammar).
        """
        now = int(self._clock())
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
            and 2 * (cached.claim.expires_at - now) >= self._ttl
        ):
            return cached.claim
        token, claim = signer.mint(
            tenant_id,
            project_id,
            subject,
            scope_tuple,
            now,
            self._ttl,
            credential_id=credential_id,
        )
        issued = IssuedClaim(token, claim.expires_at)
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
