"""Break-glass fails closed when its audit events cannot be made durable: a request, approval or
use whose event is not stored does not take effect (both backends)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from zumik_secrets.app.actor import Actor
from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.app.grants import BreakGlass
from zumik_secrets.core.break_glass import BreakGlassPolicy, PermissionSet
from zumik_secrets.core.errors import FailedPrecondition, PermissionDenied, Unavailable

ALICE = Actor("spiffe://zumik.local/operator/alice")
BOB = Actor("spiffe://zumik.local/operator/bob")
OPEN = "/zumik.secrets.v1.SealService/Open"


class FlakyAudit:
    """Stores events in memory; refuses durable ones while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.events: list[AuditEntry] = []

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        if durable and self.down:
            raise Unavailable("audit down", reason="AUDIT_UNAVAILABLE")
        self.events.append(entry)


@pytest.fixture
def setup(store):
    policy = BreakGlassPolicy(
        {
            "open-secret": PermissionSet(
                "open-secret", "", frozenset({OPEN.lstrip("/")}), timedelta(minutes=15)
            )
        }
    )
    audit = FlakyAudit()
    return BreakGlass(store.grants, policy, "zumik.local", audit), audit, store


def test_unaudited_request_leaves_no_usable_grant(setup) -> None:
    bg, audit, store = setup
    audit.down = True
    with pytest.raises(Unavailable):
        bg.request(ALICE, "aa" * 32, "acme", "open-secret", "why", "INC-1", None)
    audit.down = False
    grants = store.grants.list("acme", 10)
    assert len(grants) == 1 and grants[0].state == "revoked"
    with pytest.raises(FailedPrecondition) as info:
        bg.approve(BOB, "bb" * 32, "acme", grants[0].grant_id)
    assert info.value.reason == "GRANT_NOT_PENDING"


def test_unaudited_approval_is_undone(setup) -> None:
    bg, audit, store = setup
    grant = bg.request(ALICE, "aa" * 32, "acme", "open-secret", "why", "INC-1", None)
    audit.down = True
    with pytest.raises(Unavailable):
        bg.approve(BOB, "bb" * 32, "acme", grant.grant_id)
    audit.down = False
    assert store.grants.get(grant.grant_id).state == "revoked"
    with pytest.raises(PermissionDenied) as info:
        bg.authorize_use(ALICE, OPEN, "acme", "tenants/acme/projects/p/secrets/x", grant.grant_id)
    assert info.value.reason == "GRANT_REVOKED"


def test_unaudited_use_does_not_run(setup) -> None:
    bg, audit, _ = setup
    grant = bg.request(ALICE, "aa" * 32, "acme", "open-secret", "why", "INC-1", None)
    bg.approve(BOB, "bb" * 32, "acme", grant.grant_id)
    bg.authorize_use(ALICE, OPEN, "acme", "tenants/acme/projects/p/secrets/x", grant.grant_id)
    audit.down = True
    with pytest.raises(Unavailable):
        bg.authorize_use(ALICE, OPEN, "acme", "tenants/acme/projects/p/secrets/x", grant.grant_id)
    uses = [e for e in audit.events if e.action == "break_glass.use" and e.outcome == "success"]
    assert len(uses) == 1 and uses[0].attributes["grant_id"] == grant.grant_id
