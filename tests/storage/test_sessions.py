"""SessionStore conformance."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from tests.storage.data import T0, at, session
from zumik_secrets.core import errors


def test_insert_and_lookups(store):
    rec = store.sessions.insert(session())
    assert rec.seq > 0
    assert store.sessions.get_by_token_hash(rec.token_hash) == rec
    assert store.sessions.get("acme", "web", rec.session_id) == rec
    assert store.sessions.get("evil", "web", rec.session_id) is None
    assert store.sessions.get("acme", "api", rec.session_id) is None
    assert store.sessions.get("acme", "web", "ses_missing") is None
    assert store.sessions.get_by_token_hash(hashlib.sha256(b"nope").digest()) is None


def test_duplicates_are_already_exists(store):
    rec = store.sessions.insert(session())
    with pytest.raises(errors.AlreadyExists):
        store.sessions.insert(dataclasses.replace(session(), session_id=rec.session_id))
    with pytest.raises(errors.AlreadyExists):
        store.sessions.insert(dataclasses.replace(session(), token_hash=rec.token_hash))


def test_touch_only_moves_forward(store):
    a = store.sessions.insert(session())
    b = store.sessions.insert(session())
    store.sessions.touch(a.session_id, at(100))
    store.sessions.touch(a.session_id, at(50))
    assert store.sessions.get_by_token_hash(a.token_hash).last_seen_at == at(100)
    store.sessions.touch_many({a.session_id: at(90), b.session_id: at(70), "ses_x": at(1)})
    assert store.sessions.get_by_token_hash(a.token_hash).last_seen_at == at(100)
    assert store.sessions.get_by_token_hash(b.token_hash).last_seen_at == at(70)
    store.sessions.touch_many({})


def test_replace_token_rotates_hash_and_records_change(store):
    rec = store.sessions.insert(session())
    before = store.changes.latest_seq()
    new_hash = hashlib.sha256(b"new token").digest()
    updated = store.sessions.replace_token(
        "acme", "web", rec.session_id, new_hash, ("console", "admin"), at(30)
    )
    assert updated.token_hash == new_hash
    assert updated.scopes == ("console", "admin")
    assert updated.last_seen_at == at(30)
    assert store.sessions.get_by_token_hash(rec.token_hash) is None
    assert store.sessions.get_by_token_hash(new_hash) == updated
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("session", rec.session_id)
    ]


def test_replace_token_refuses_other_tenant_revoked_and_taken_hash(store):
    rec = store.sessions.insert(session())
    other = store.sessions.insert(session())
    new_hash = hashlib.sha256(b"x").digest()
    assert store.sessions.replace_token("evil", "web", rec.session_id, new_hash, (), at(1)) is None
    with pytest.raises(errors.AlreadyExists):
        store.sessions.replace_token("acme", "web", rec.session_id, other.token_hash, (), at(1))
    assert store.sessions.get_by_token_hash(rec.token_hash) == rec  # rolled back
    store.sessions.revoke("acme", "web", rec.session_id, at(2))
    assert store.sessions.replace_token("acme", "web", rec.session_id, new_hash, (), at(3)) is None


def test_revoke_is_idempotent_and_scoped(store):
    rec = store.sessions.insert(session())
    before = store.changes.latest_seq()
    assert store.sessions.revoke("evil", "web", rec.session_id, at(1)) is None
    revoked = store.sessions.revoke("acme", "web", rec.session_id, at(5))
    assert revoked.state == "revoked"
    assert revoked.revoke_time == at(5)
    assert store.sessions.revoke("acme", "web", rec.session_id, at(9)) == revoked
    assert store.sessions.revoke("acme", "web", "ses_missing", at(9)) is None
    assert [c.entity_id for c in store.changes.since(before)] == [rec.session_id]


def test_revoke_user_revokes_only_that_users_active_sessions(store):
    mine = [store.sessions.insert(session(user="alice")) for _ in range(3)]
    theirs = store.sessions.insert(session(user="bob"))
    elsewhere = store.sessions.insert(session("acme", "api", user="alice"))
    store.sessions.revoke("acme", "web", mine[0].session_id, at(1))
    before = store.changes.latest_seq()

    assert store.sessions.revoke_user("acme", "web", "alice", at(10)) == 2
    for s in mine:
        assert store.sessions.get("acme", "web", s.session_id).state == "revoked"
    assert store.sessions.get("acme", "web", theirs.session_id).state == "active"
    assert store.sessions.get("acme", "api", elsewhere.session_id).state == "active"
    assert sorted(c.entity_id for c in store.changes.since(before)) == sorted(
        s.session_id for s in mine[1:]
    )
    assert store.sessions.revoke_user("acme", "web", "alice", at(11)) == 0
    assert store.sessions.revoke_user("evil", "web", "bob", at(11)) == 0


def test_delete_expired(store):
    live = store.sessions.insert(session(idle=600))
    idle_dead = store.sessions.insert(session(idle=60))
    touched = store.sessions.insert(session(idle=60))
    store.sessions.touch(touched.session_id, at(50))
    abs_dead = store.sessions.insert(session(idle=6000, absolute=at(100)))
    revoked = store.sessions.insert(session())
    store.sessions.revoke("acme", "web", revoked.session_id, at(1))

    assert store.sessions.delete_expired(at(100)) == 3
    assert store.sessions.get_by_token_hash(live.token_hash) is not None
    assert store.sessions.get_by_token_hash(touched.token_hash) is not None
    for gone in (idle_dead, abs_dead, revoked):
        assert store.sessions.get_by_token_hash(gone.token_hash) is None
    assert store.sessions.delete_expired(at(100)) == 0
    assert store.sessions.delete_expired(T0 + (at(111) - T0)) == 1  # touched: 50 + 60 <= 111
