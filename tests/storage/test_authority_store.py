"""Storage pieces of the authority model, on both backends: handles carry their project,
sessions are found by id (the change feed names them so), audit queries confine to a project."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.storage.data import T0, handle, session
from zumik_secrets.core import audit_chain as ac
from zumik_secrets.storage.ports import AuditFilter, Store
from zumik_secrets.storage.records import HandleRecord


def test_handles_keep_the_project_that_minted_them(store: Store) -> None:
    rec = HandleRecord("acme", handle("hdl"), "hdl", "ref", T0, project_id="web")
    store.handles.insert(rec)
    assert store.handles.get("acme", rec.handle) == rec
    legacy = HandleRecord("acme", handle("hdl"), "hdl", "ref", T0)
    store.handles.insert(legacy)
    assert store.handles.get("acme", legacy.handle).project_id == ""  # type: ignore[union-attr]


def test_sessions_are_found_by_id_alone(store: Store) -> None:
    rec = store.sessions.insert(session("acme", "web"))
    assert store.sessions.get_by_id(rec.session_id) == rec
    assert store.sessions.get_by_id(handle("ses")) is None


def test_audit_query_confines_to_one_project(store: Store) -> None:
    targets = [
        "tenants/acme/projects/web",
        "tenants/acme/projects/web/secrets/sec_x",
        "tenants/acme/projects/web2/secrets/sec_y",  # a longer project id sharing the prefix
        "tenants/acme/projects/we",
        "tenants/acme/handles/hdl_z",
        "plan",
    ]
    store.audit.append(
        [
            ac.EventDraft(
                "acme", f"evt_{i}", datetime.now(UTC), "a", "", "x.y", t, "success", "", "", ()
            )
            for i, t in enumerate(targets)
        ]
    )
    seen = store.audit.query(
        "acme", AuditFilter(project="tenants/acme/projects/web"), after_sequence=0, limit=100
    )
    assert [e.target for e in seen] == targets[:2]
    every = store.audit.query("acme", AuditFilter(), after_sequence=0, limit=100)
    assert len(every) == len(targets)
