"""Break-glass grants: request, approve (by a second operator), revoke, use.

The rules are in :mod:`zumik_secrets.core.break_glass`; this module applies them to the store and
records every step as a durable audit event carrying the grant id (``break_glass.request``,
``.approve``, ``.revoke``, ``.use``; refusals as ``outcome=denied``) in the tenant's chain. Each
step also writes a WARNING line on the ``zumik.break_glass`` logger with ``alert=break_glass``
and counts it in :data:`EVENT_COUNTS`: the hook a pager or metric exporter fires on.

A step that cannot be audited does not happen: a request or use whose event cannot be made
durable is refused UNAVAILABLE, and an approval whose event cannot be made durable is revoked
again before the error is returned.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditRecorder, event, record
from zumik_secrets.core import break_glass as bg
from zumik_secrets.core.encoding import base62_encode
from zumik_secrets.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    ZumikError,
    resource_not_found,
)
from zumik_secrets.storage.ports import GrantStore
from zumik_secrets.storage.records import GrantRecord

_ALERT = logging.getLogger("zumik.break_glass")
_TICKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#/-]{0,63}$")
MAX_REASON = 500

#: Break-glass events by ``action:outcome`` since the process started (a metric source).
EVENT_COUNTS: Counter[str] = Counter()
_COUNT_LOCK = threading.Lock()


def grant_name(tenant_id: str, grant_id: str) -> str:
    """`tenants/{tenant}/breakGlassGrants/{grant_id}`."""
    return f"tenants/{tenant_id}/breakGlassGrants/{grant_id}"


def new_grant_id() -> str:
    """``bg_`` + 128 random bits as 22 base62 characters."""
    return "bg_" + base62_encode(secrets.token_bytes(16), 22)


def _use_refused(refusal: str) -> PermissionDenied:
    """The refusal of a call under a grant, its message saying why (the reason's own words; one
    literal reason per case: the reason scan of tests/unit/test_error_reasons.py follows
    literals). The messages tell nothing the reason does not already."""
    if refusal == "GRANT_NOT_APPROVED":
        return PermissionDenied(
            "the break-glass grant has not been approved", reason="GRANT_NOT_APPROVED"
        )
    if refusal == "GRANT_EXPIRED":
        return PermissionDenied("the break-glass grant has expired", reason="GRANT_EXPIRED")
    if refusal == "GRANT_REVOKED":
        return PermissionDenied("the break-glass grant was revoked", reason="GRANT_REVOKED")
    if refusal == "GRANT_METHOD_NOT_ALLOWED":
        return PermissionDenied(
            "the break-glass grant's permission set does not include this method",
            reason="GRANT_METHOD_NOT_ALLOWED",
        )
    if refusal == "GRANT_WRONG_TENANT":
        return PermissionDenied(
            "the request names a resource outside the break-glass grant's tenant",
            reason="GRANT_WRONG_TENANT",
        )
    return PermissionDenied("no such break-glass grant of the caller's", reason="GRANT_NOT_FOUND")


def _now() -> datetime:
    return datetime.now(UTC)


class BreakGlass:
    """The break-glass use cases."""

    def __init__(
        self,
        store: GrantStore,
        policy: bg.BreakGlassPolicy,
        trust_domain: str,
        audit: AuditRecorder,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Create the use cases.

        Args:
            store: Where grants live.
            policy: The policy file's permission sets.
            trust_domain: SPIFFE trust domain (operators are ``spiffe://<td>/operator/<name>``).
            audit: Recorder of the step events (durable).
            clock: Current time (tests move it).
        """
        self._store = store
        self.policy = policy
        self._trust_domain = trust_domain
        self._audit = audit
        self._clock = clock

    # -- helpers -------------------------------------------------------------------------------

    def state(self, grant: GrantRecord) -> str:
        """The grant's effective state now (``expired`` computed)."""
        return bg.effective_state(
            bg.GrantView(grant.requester, grant.state, grant.requested_at, grant.expires_at),
            self._clock(),
            self.policy.approval_window,
        )

    def _event(
        self,
        actor: Actor,
        action: str,
        grant_id: str,
        tenant_id: str,
        outcome: str,
        reason: str,
        *,
        target: str = "",
        durable: bool,
        **attributes: str,
    ) -> None:
        entry = event(
            actor,
            tenant_id or None,
            f"break_glass.{action}",
            target or (grant_name(tenant_id, grant_id) if tenant_id and grant_id else ""),
            outcome,
            reason,
            {"grant_id": grant_id, **attributes},
        )
        with _COUNT_LOCK:
            EVENT_COUNTS[f"{action}:{outcome}"] += 1
        _ALERT.warning(
            "break-glass %s %s",
            action,
            outcome,
            extra={
                "alert": "break_glass",
                "break_glass": {
                    "action": action,
                    "outcome": outcome,
                    "reason": reason,
                    "grant_id": grant_id,
                    "tenant": tenant_id,
                    "actor": actor.identity,
                    **attributes,
                },
            },
        )
        if not record(self._audit, entry, durable=durable):
            _ALERT.error("audit of a break-glass refusal failed", extra={"grant_id": grant_id})

    def _require_operator(self, actor: Actor, action: str, tenant_id: str, grant_id: str) -> None:
        if not bg.is_operator(actor.identity, self._trust_domain):
            self._event(
                actor, action, grant_id, tenant_id, "denied", "NOT_AN_OPERATOR", durable=False
            )
            raise PermissionDenied(
                "only operator identities (spiffe://<trust-domain>/operator/<name>) manage grants",
                reason="NOT_AN_OPERATOR",
            )

    def _load(self, tenant_id: str, grant_id: str) -> GrantRecord:
        grant = self._store.get(grant_id) if bg.valid_grant_id(grant_id) else None
        if grant is None or grant.tenant_id != tenant_id:
            # Another tenant's grant answers exactly like a missing one.
            raise resource_not_found(grant_name(tenant_id, grant_id))
        return grant

    def _refuse(
        self,
        actor: Actor,
        action: str,
        grant: GrantRecord,
        error: ZumikError,
    ) -> ZumikError:
        self._event(
            actor, action, grant.grant_id, grant.tenant_id, "denied", error.reason, durable=False
        )
        return error

    # -- the steps -----------------------------------------------------------------------------

    def request(
        self,
        actor: Actor,
        actor_cert: str,
        tenant_id: str,
        permission_set: str,
        reason: str,
        ticket: str,
        duration: timedelta | None,
    ) -> GrantRecord:
        """Ask for a grant (state ``pending``).

        Raises:
            PermissionDenied: ``NOT_AN_OPERATOR``.
            InvalidArgument: unknown set (``UNKNOWN_PERMISSION_SET``), bad reason/ticket, or a
                duration over the set's maximum (``GRANT_TOO_LONG``).
            Unavailable: the request could not be audited.
        """
        self._require_operator(actor, "request", tenant_id, "")
        pset = self.policy.permission_sets.get(permission_set)
        if pset is None:
            self._event(
                actor, "request", "", tenant_id, "denied", "UNKNOWN_PERMISSION_SET", durable=False
            )
            raise InvalidArgument(
                "permission_set is not a permission set of the policy file",
                reason="UNKNOWN_PERMISSION_SET",
                violations=[FieldViolation("permission_set", "unknown permission set")],
            )
        if not 1 <= len(reason.strip()) <= MAX_REASON:
            raise InvalidArgument(
                f"reason is required (1 to {MAX_REASON} characters)",
                reason="FIELD_REQUIRED" if not reason.strip() else "INVALID_ARGUMENT",
                metadata={"field": "reason"},
            )
        if not _TICKET.fullmatch(ticket):
            raise InvalidArgument(
                "ticket must be a ticket reference such as INC-1234 (1 to 64 characters)",
                reason="INVALID_TICKET",
                metadata={"field": "ticket"},
            )
        wanted = pset.max_duration if duration is None else duration
        if wanted > pset.max_duration or wanted < timedelta(minutes=1):
            self._event(
                actor,
                "request",
                "",
                tenant_id,
                "denied",
                "GRANT_TOO_LONG" if wanted > pset.max_duration else "GRANT_TOO_SHORT",
                durable=False,
                permission_set=pset.name,
            )
            raise InvalidArgument(
                f"duration must be between 60 s and the set's maximum "
                f"({int(pset.max_duration.total_seconds())} s)",
                reason="GRANT_TOO_LONG" if wanted > pset.max_duration else "GRANT_TOO_SHORT",
                metadata={
                    "field": "duration",
                    "max_seconds": str(int(pset.max_duration.total_seconds())),
                },
            )
        grant = GrantRecord(
            grant_id=new_grant_id(),
            tenant_id=tenant_id,
            permission_set=pset.name,
            requester=actor.identity,
            requester_cert=actor_cert,
            reason=reason,
            ticket=ticket,
            duration=timedelta(seconds=int(wanted.total_seconds())),
            state=bg.STATE_PENDING,
            requested_at=self._clock(),
        )
        self._store.create(grant)
        try:
            self._event(
                actor,
                "request",
                grant.grant_id,
                tenant_id,
                "success",
                "REQUESTED",
                durable=True,
                permission_set=pset.name,
                ticket=ticket,
                duration_s=str(int(grant.duration.total_seconds())),
            )
        except ZumikError:
            self._store.revoke(grant.grant_id, "zumik-secrets", self._clock())
            raise
        return grant

    def approve(self, actor: Actor, actor_cert: str, tenant_id: str, grant_id: str) -> GrantRecord:
        """Approve a pending grant: it becomes active for its duration from now.

        Raises:
            PermissionDenied: ``NOT_AN_OPERATOR``, ``SELF_APPROVAL`` (the requester, whatever
                certificate), ``SAME_CERTIFICATE`` (the requester's certificate).
            FailedPrecondition: ``GRANT_NOT_PENDING`` (approved, revoked or expired).
            NotFound: no such grant in this tenant.
            Unavailable: the approval could not be audited (the grant is revoked again).
        """
        self._require_operator(actor, "approve", tenant_id, grant_id)
        grant = self._load(tenant_id, grant_id)
        if actor.identity == grant.requester:
            raise self._refuse(
                actor,
                "approve",
                grant,
                PermissionDenied(
                    "a grant must be approved by a second, different operator",
                    reason="SELF_APPROVAL",
                ),
            )
        if not actor_cert or actor_cert == grant.requester_cert:
            raise self._refuse(
                actor,
                "approve",
                grant,
                PermissionDenied(
                    "a grant cannot be approved with the requester's certificate",
                    reason="SAME_CERTIFICATE",
                ),
            )
        state = self.state(grant)
        if state != bg.STATE_PENDING:
            raise self._refuse(
                actor,
                "approve",
                grant,
                FailedPrecondition(
                    f"the grant is {state}, not pending", reason="GRANT_NOT_PENDING"
                ),
            )
        now = self._clock()
        if not self._store.approve(grant_id, actor.identity, actor_cert, now):
            raise self._refuse(
                actor,
                "approve",
                grant,
                FailedPrecondition("the grant is no longer pending", reason="GRANT_NOT_PENDING"),
            )
        approved = self._load(tenant_id, grant_id)
        try:
            self._event(
                actor,
                "approve",
                grant_id,
                tenant_id,
                "success",
                "APPROVED",
                durable=True,
                permission_set=grant.permission_set,
                requester=grant.requester,
                expires_at=approved.expires_at.isoformat() if approved.expires_at else "",
            )
        except ZumikError:
            self._store.revoke(grant_id, "zumik-secrets", self._clock())
            raise
        return approved

    def revoke(self, actor: Actor, tenant_id: str, grant_id: str) -> GrantRecord:
        """Revoke a pending or active grant (any operator). Revoking a finished grant returns it
        unchanged.

        Raises:
            PermissionDenied: ``NOT_AN_OPERATOR``.
            NotFound: no such grant in this tenant.
            Unavailable: the revocation could not be audited (the grant stays revoked).
        """
        self._require_operator(actor, "revoke", tenant_id, grant_id)
        grant = self._load(tenant_id, grant_id)
        if self._store.revoke(grant_id, actor.identity, self._clock()):
            grant = self._load(tenant_id, grant_id)
            self._event(
                actor,
                "revoke",
                grant_id,
                tenant_id,
                "success",
                "REVOKED",
                durable=True,
                permission_set=grant.permission_set,
            )
        return grant

    def get(self, tenant_id: str, grant_id: str) -> GrantRecord:
        """A grant of the tenant.

        Raises:
            NotFound: missing or another tenant's.
        """
        return self._load(tenant_id, grant_id)

    def list(self, tenant_id: str, limit: int) -> list[GrantRecord]:
        """The tenant's grants, newest first."""
        return self._store.list(tenant_id, limit)

    def authorize_use(
        self,
        actor: Actor,
        method: str,
        tenant_id: str,
        target: str,
        grant_id: str,
    ) -> GrantRecord:
        """Check (and durably audit) one call made under a grant.

        Args:
            actor: The caller (its identity must be the grant's requester).
            method: ``/pkg.Service/Method`` being called.
            tenant_id: Tenant of the resource the request names.
            target: That resource name.
            grant_id: The presented grant id.

        Raises:
            PermissionDenied: ``GRANT_NOT_FOUND`` (missing, malformed, or someone else's),
                ``GRANT_NOT_APPROVED``, ``GRANT_EXPIRED``, ``GRANT_REVOKED``,
                ``GRANT_METHOD_NOT_ALLOWED``, ``GRANT_WRONG_TENANT``.
            Unavailable: the use could not be audited (the call does not run).
        """
        grant = self._store.get(grant_id) if bg.valid_grant_id(grant_id) else None
        view = (
            None
            if grant is None
            else bg.GrantView(grant.requester, grant.state, grant.requested_at, grant.expires_at)
        )
        refusal = bg.use_refusal(view, actor.identity, self._clock(), self.policy.approval_window)
        bare = method.lstrip("/")
        if refusal is None and grant is not None:
            pset = self.policy.permission_sets.get(grant.permission_set)
            if pset is None or not pset.allows(bare):
                refusal = "GRANT_METHOD_NOT_ALLOWED"
            elif tenant_id != grant.tenant_id:
                refusal = "GRANT_WRONG_TENANT"
        audit_tenant = tenant_id if tenant_id not in ("", "-") else ""
        if refusal is not None or grant is None:
            refusal = refusal or "GRANT_NOT_FOUND"
            shown = grant_id if grant is not None else ""
            self._event(
                actor,
                "use",
                shown,
                # Someone else's grant is still recorded in its tenant's chain (an attempt to
                # use another operator's grant is exactly what the alert is for).
                grant.tenant_id if grant is not None else "",
                "denied",
                refusal,
                target=target,
                durable=False,
                method=bare,
            )
            raise _use_refused(refusal)
        try:
            self._event(
                actor,
                "use",
                grant_id,
                audit_tenant,
                "success",
                "ALLOWED_UNDER_GRANT",
                target=target,
                durable=True,
                method=bare,
                permission_set=grant.permission_set,
            )
        except ZumikError as error:
            raise Unavailable(
                "the call under a break-glass grant could not be audited; it was not run",
                reason="AUDIT_UNAVAILABLE",
            ) from error
        return grant
