"""Break-glass access: the pure rules (no I/O).

Nobody holds standing access to tenant secrets. In an emergency an *operator* (a human identity,
``spiffe://<trust-domain>/operator/<name>``) asks for a grant on one tenant, naming a permission
set from the policy file, a reason and a ticket; a second, different operator approves it; the
grant then lets its requester, and only them, call the set's methods on that tenant until it
expires (at most the set's maximum after approval) or is revoked. A grant is never extended.

The policy file declares the sets::

    [break_glass]
    approval_window_seconds = 900          # a request not approved by then is dead

    [break_glass.permission_sets.read-secret-metadata]
    description = "Look at a tenant's secret metadata"
    allow = ["zumik.secrets.v1.SealService/GetSecret", "zumik.secrets.v1.SealService/ListSecrets"]
    max_duration_seconds = 3600
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from zumik_secrets.core.errors import InvalidArgument

#: Metadata key a call under a grant carries (the grant id; not a secret: it only works for its
#: requester's certificate identity).
GRANT_METADATA_KEY = "zumik-grant"

#: Hard ceiling on any permission set's duration, whatever the policy says.
HARD_MAX_DURATION = timedelta(hours=4)
DEFAULT_APPROVAL_WINDOW = timedelta(minutes=15)

_SET_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_GRANT_ID = re.compile(r"^bg_[0-9A-Za-z]{22}$")
_METHOD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$")
_OPERATOR_SEGMENT = "/operator/"
#: The service operators manage grants with; never a method a grant can allow.
BREAK_GLASS_SERVICE = "zumik.secrets.v1.BreakGlassService"

STATE_PENDING = "pending"
STATE_ACTIVE = "active"
STATE_REVOKED = "revoked"
STATE_EXPIRED = "expired"


def is_operator(identity: str, trust_domain: str) -> bool:
    """Whether ``identity`` is a human operator identity of the trust domain."""
    prefix = f"spiffe://{trust_domain}{_OPERATOR_SEGMENT}"
    rest = identity[len(prefix) :] if identity.startswith(prefix) else ""
    return bool(rest) and "/" not in rest


def valid_grant_id(value: str) -> bool:
    """Whether ``value`` has the shape of a grant id (``bg_`` + 22 base62)."""
    return len(value) <= 64 and _GRANT_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class PermissionSet:
    """A named set of methods a grant may allow, and how long at most."""

    name: str
    description: str
    methods: frozenset[str]
    max_duration: timedelta

    def allows(self, method: str) -> bool:
        """Whether ``method`` (``/pkg.Service/Method`` or bare) is in the set."""
        return method.lstrip("/") in self.methods


@dataclass(frozen=True, slots=True)
class BreakGlassPolicy:
    """The break-glass section of the policy file."""

    permission_sets: Mapping[str, PermissionSet]
    approval_window: timedelta = DEFAULT_APPROVAL_WINDOW

    @classmethod
    def empty(cls) -> BreakGlassPolicy:
        """No permission sets: every grant request is refused."""
        return cls({})

    @classmethod
    def from_mapping(cls, data: Any) -> BreakGlassPolicy:
        """Parse ``[break_glass]``.

        Raises:
            InvalidArgument: reason ``POLICY_INVALID``.
        """

        def bad(message: str) -> InvalidArgument:
            return InvalidArgument(f"authorization policy: {message}", reason="POLICY_INVALID")

        if not isinstance(data, Mapping):
            raise bad("[break_glass] must be a table")
        unknown = set(data) - {"approval_window_seconds", "permission_sets"}
        if unknown:
            raise bad(f"[break_glass] has unknown keys {sorted(unknown)}")
        window = data.get("approval_window_seconds", int(DEFAULT_APPROVAL_WINDOW.total_seconds()))
        if not isinstance(window, int) or isinstance(window, bool) or not 60 <= window <= 3600:
            raise bad("break_glass.approval_window_seconds must be an integer in 60..3600")
        sets_section = data.get("permission_sets", {})
        if not isinstance(sets_section, Mapping):
            raise bad("[break_glass.permission_sets] must be a table")
        sets: dict[str, PermissionSet] = {}
        for name, body in sets_section.items():
            where = f"break_glass.permission_sets.{name}"
            if not isinstance(name, str) or not _SET_NAME.fullmatch(name):
                raise bad(f"{where}: name must match [a-z][a-z0-9-]*")
            if not isinstance(body, Mapping):
                raise bad(f"{where} must be a table")
            unknown = set(body) - {"description", "allow", "max_duration_seconds"}
            if unknown:
                raise bad(f"{where} has unknown keys {sorted(unknown)}")
            allow = body.get("allow")
            if not isinstance(allow, list) or not allow:
                raise bad(f"{where}.allow must be a non-empty list of full method names")
            for method in allow:
                if not isinstance(method, str) or not _METHOD.fullmatch(method):
                    raise bad(f"{where}.allow: {method!r} is not 'package.Service/Method'")
                if method.startswith(BREAK_GLASS_SERVICE + "/"):
                    raise bad(f"{where}.allow: a grant cannot allow managing grants")
            seconds = body.get("max_duration_seconds")
            if (
                not isinstance(seconds, int)
                or isinstance(seconds, bool)
                or not 60 <= seconds <= HARD_MAX_DURATION.total_seconds()
            ):
                raise bad(
                    f"{where}.max_duration_seconds must be an integer in "
                    f"60..{int(HARD_MAX_DURATION.total_seconds())}"
                )
            description = body.get("description", "")
            if not isinstance(description, str):
                raise bad(f"{where}.description must be a string")
            sets[name] = PermissionSet(
                name, description, frozenset(allow), timedelta(seconds=seconds)
            )
        return cls(sets, timedelta(seconds=window))


@dataclass(frozen=True, slots=True)
class GrantView:
    """The fields of a stored grant the rules look at."""

    requester: str
    state: str  # pending | active | revoked (as stored)
    requested_at: datetime
    expires_at: datetime | None


def effective_state(grant: GrantView, now: datetime, approval_window: timedelta) -> str:
    """The grant's state at ``now``: a stored ``pending`` or ``active`` grant past its time is
    ``expired`` without anyone having to write it."""
    if grant.state == STATE_PENDING and now >= grant.requested_at + approval_window:
        return STATE_EXPIRED
    if grant.state == STATE_ACTIVE and (grant.expires_at is None or now >= grant.expires_at):
        return STATE_EXPIRED
    return grant.state


def use_refusal(
    grant: GrantView | None,
    identity: str,
    now: datetime,
    approval_window: timedelta,
) -> str | None:
    """Why a call by ``identity`` under ``grant`` is refused, or None when it may proceed
    (the permission set and tenant are checked by the caller).

    A grant of someone else answers like a missing one: the grant id is not a bearer token.
    """
    if grant is None or grant.requester != identity:
        return "GRANT_NOT_FOUND"
    state = effective_state(grant, now, approval_window)
    if state == STATE_ACTIVE:
        return None
    return {
        STATE_PENDING: "GRANT_NOT_APPROVED",
        STATE_REVOKED: "GRANT_REVOKED",
        STATE_EXPIRED: "GRANT_EXPIRED",
    }.get(state, "GRANT_NOT_FOUND")
