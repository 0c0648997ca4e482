"""Who may mint what: the one rule that keeps authority from growing (DESIGN.md section 11).

Scope vocabulary. A scope names one right; no scope implies another, and no right to *mint* a
credential implies any right the minted credential could carry:

- ``keys.write`` is the right to create, rotate and revoke API keys of the claim's project. It
  lets a caller mint a key carrying at most the caller's *own* scopes (a ``keys.write``-only
  claim can mint a key carrying ``keys.write`` and nothing else).
- ``sessions.write`` is the same for sessions (create, rotate, revoke), and additionally binds
  the session's user to the caller's own subject.
- Impersonation, creating or rotating a session for a user other than the caller's own subject,
  is a separately named right: the policy flag ``impersonate`` of a calling identity (the
  development policy grants it to no one). It is never a scope, so no credential can carry it
  and no minting can pass it on.
- An identity the policy lets act *without a claim* for a method (the control plane creating
  sessions at login, provisioning the first key of a project) is the root of a tenant's
  authority for that method: it is bounded by the policy, not by a claim, and every such call
  is audited.

Lifetime. Authority is bounded in time too: a claim minted from an API key that expires carries
the key's ``expire_time`` as its authority's ``not_after`` (read from the key's record by the
authorizer, on the minting methods only), and nothing minted with it may be valid after that
instant. Otherwise a short-lived key could mint (or rotate into) a permanent one. A credential
asked for beyond the bound is *refused* (``LIFETIME_ESCALATION``), not silently shortened, just
as a scope beyond the caller's is refused rather than dropped: the caller gets exactly the
credential it asked for or an error that says why, never a key that dies earlier than it was
told. The bounds by origin of the claim:

- an API key with an ``expire_time``: that instant (a key rotated with a grace period: the end of
  the grace); a claim naming a key the store does not hold (or another kind of credential than
  a key or a session): the claim's own ``exp`` (deny by default);
- an API key without expiry: none;
- a session: none. A user logged in to the console creating a long-lived API key is the normal
  flow, so a session's absolute timeout does not cap what its claim mints; what a session
  mints is still bounded by its scopes and subject, and is revoked like any key;
- an identity acting without a claim (:meth:`Authority.unbounded`): none, by policy.

The rule, :func:`check_grant`: the scopes a call would put into a credential must be a subset of
the authority's scopes, a session's subject must be the authority's subject unless the
authority may impersonate, and the credential must not be valid after the authority's
``not_after``. Every RPC that accepts a scope list or a subject calls it (API key creation and
rotation, session creation and rotation); rotation checks what the rotated credential will
carry (its scopes and its new expiry), since the new secret is handed to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from zumik_secrets.core.errors import PermissionDenied

REASON_SCOPE_ESCALATION = "SCOPE_ESCALATION"
"""A call would mint or widen a credential with a scope the caller's claim does not carry."""
REASON_IMPERSONATION_NOT_ALLOWED = "IMPERSONATION_NOT_ALLOWED"
"""A call would mint or rotate a session of a user other than the caller's own subject."""
REASON_LIFETIME_ESCALATION = "LIFETIME_ESCALATION"
"""A call would mint or rotate a credential valid after the caller's authority ends (the expiry
of the API key its claim was minted from)."""

MINTING_RIGHTS = {
    "keys.write": "create, rotate and revoke the project's API keys, carrying at most own scopes",
    "sessions.write": "create, rotate and revoke the project's sessions of the caller's own user,"
    " carrying at most own scopes",
}
"""The scopes that let a caller mint credentials, and what they allow."""

TENANT_WIDE_SCOPES = frozenset({"tenant.admin", "tenant.purge", "audit.read.tenant"})
"""Scopes that reach resources of the whole tenant (settings, purge, receipts, the whole audit
chain) from a claim minted for one project. Every other scope stays inside the claim's project."""

AUDIT_TENANT_VIEW = "audit.read.tenant"
"""With ``audit.read``, lets a project claim read the whole tenant's audit chain (every project's
events, export, verification, checkpoints); without it a project claim sees only the events of its
own project."""


@dataclass(frozen=True, slots=True)
class Authority:
    """What the caller of one RPC may hand on.

    Attributes:
        scopes: The scopes the caller holds; None for an identity acting without a claim by
            policy (bounded by the policy, not by a claim).
        subject: The caller's own subject (the claim's ``sub``); None without a claim.
        impersonate: Whether the calling identity holds the policy's impersonation right.
        not_after: The latest instant a credential minted with this authority may still be
            valid (the expiry of the API key the claim was minted from); None: not bounded in
            time. Filled by the authorizer on the methods that mint or rotate credentials only.
    """

    scopes: frozenset[str] | None
    subject: str | None
    impersonate: bool = False
    not_after: datetime | None = None

    @classmethod
    def of_claim(
        cls,
        scopes: Iterable[str],
        subject: str,
        *,
        impersonate: bool = False,
        not_after: datetime | None = None,
    ) -> Authority:
        """The authority of a call carrying a claim with ``scopes`` and ``subject``."""
        return cls(frozenset(scopes), subject, impersonate, not_after)

    @classmethod
    def unbounded(cls) -> Authority:
        """The authority of an identity the policy lets act without a claim."""
        return cls(None, None, True)

    def holds(self, scopes: Iterable[str]) -> bool:
        """Whether every scope of ``scopes`` is within this authority."""
        return self.scopes is None or self.scopes.issuperset(scopes)


NO_AUTHORITY = Authority(frozenset(), None, False)
"""Holds nothing: the default of a call that carries neither a claim nor a privilege."""


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_grant(
    authority: Authority,
    scopes: Iterable[str],
    subject: str | None = None,
    *,
    expire_time: datetime | None,
) -> None:
    """Refuse a grant above ``authority``.

    Args:
        authority: The caller's authority.
        scopes: Every scope the minted (or rotated) credential will carry.
        subject: For a session, the user it will belong to; None for credentials without one.
        expire_time: When the minted (or rotated) credential stops being valid (a key's
            ``expire_time``, a session's absolute expiry); None if never.

    Raises:
        PermissionDenied: reason ``SCOPE_ESCALATION`` (metadata ``scope``: the first scope, in
            sorted order, that the caller lacks), ``IMPERSONATION_NOT_ALLOWED``, or
            ``LIFETIME_ESCALATION`` (metadata ``not_after``: the authority's bound, RFC 3339).
    """
    if authority.scopes is not None:
        missing = sorted(set(scopes) - authority.scopes)
        if missing:
            raise PermissionDenied(
                "a credential cannot carry a scope the caller's claim does not carry",
                reason=REASON_SCOPE_ESCALATION,
                metadata={"scope": missing[0]},
            )
    if subject is not None and not authority.impersonate and subject != authority.subject:
        raise PermissionDenied(
            "a session can only be created or rotated for the caller's own subject",
            reason=REASON_IMPERSONATION_NOT_ALLOWED,
        )
    bound = authority.not_after
    if bound is not None and subject is not None and subject != authority.subject:
        # A session carries its bound on only through its subject (a session of an API key's
        # id is bounded by its own expiry when it mints): another user's session would not.
        raise PermissionDenied(
            "an authority bounded in time (an expiring API key's claim) can only open or"
            " rotate sessions for its own subject (metadata.not_after)",
            reason=REASON_LIFETIME_ESCALATION,
            metadata={"not_after": _rfc3339(bound)},
        )
    if bound is not None and (expire_time is None or expire_time > bound):
        raise PermissionDenied(
            "a credential minted or rotated with the authority of an expiring API key cannot be"
            " valid after that key expires (metadata.not_after)",
            reason=REASON_LIFETIME_ESCALATION,
            metadata={"not_after": _rfc3339(bound)},
        )
