"""ApiKeyStore conformance."""

from __future__ import annotations

import dataclasses
from datetime import UTC, timedelta, timezone

import pytest

from tests.storage.data import T0, api_key, at, session
from zumik_secrets.core import errors


def test_insert_assigns_increasing_seq_and_round_trips(store):
    first = store.api_keys.insert(api_key())
    second = store.api_keys.insert(api_key())
    assert 0 < first.seq < second.seq
    got = store.api_keys.get_by_id(first.key_id)
    assert got == first
    assert got.created_at.tzinfo is not None
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.created_at == T0  # microseconds survive
    assert isinstance(got.salt, bytes)
    assert isinstance(got.scopes, tuple)


def test_non_utc_input_is_stored_as_the_same_instant(store):
    plus2 = timezone(timedelta(hours=2))
    rec = store.api_keys.insert(api_key(created=T0.astimezone(plus2)))
    got = store.api_keys.get_by_id(rec.key_id)
    assert got.created_at == T0
    assert got.created_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(store):
    with pytest.raises(ValueError, match="timezone-aware"):
        store.api_keys.insert(api_key(created=T0.replace(tzinfo=None)))


def test_duplicate_key_id_is_already_exists(store):
    rec = store.api_keys.insert(api_key())
    with pytest.raises(errors.AlreadyExists) as info:
        store.api_keys.insert(api_key(key_id=rec.key_id, tenant="other"))
    assert rec.key_id not in str(info.value)  # the message names no identifier


def test_get_is_scoped_to_tenant_and_project(store):
    rec = store.api_keys.insert(api_key("acme", "web"))
    assert store.api_keys.get("acme", "web", rec.key_id) == rec
    assert store.api_keys.get("evil", "web", rec.key_id) is None
    assert store.api_keys.get("acme", "other", rec.key_id) is None
    assert store.api_keys.get("acme", "web", "key_missing") is None
    assert store.api_keys.get_by_id("key_missing") is None


def test_list_paginates_by_seq_and_filters_revoked(store):
    recs = [store.api_keys.insert(api_key()) for _ in range(5)]
    store.api_keys.insert(api_key("acme", "other"))
    store.api_keys.insert(api_key("zeta", "web"))
    store.api_keys.revoke("acme", "web", recs[1].key_id, at(1))

    pages, after = [], None
    while True:
        page = store.api_keys.list(
            "acme", "web", page_size=2, after_seq=after, include_revoked=True
        )
        if not page:
            break
        pages.append([r.key_id for r in page])
        after = page[-1].seq
    assert pages == [[r.key_id for r in recs[i : i + 2]] for i in (0, 2, 4)]

    active = store.api_keys.list("acme", "web", page_size=10, after_seq=None, include_revoked=False)
    assert [r.key_id for r in active] == [recs[i].key_id for i in (0, 2, 3, 4)]
    assert (
        store.api_keys.list("nobody", "web", page_size=10, after_seq=0, include_revoked=True) == []
    )


def test_list_rejects_non_positive_page_size(store):
    with pytest.raises(ValueError):
        store.api_keys.list("acme", "web", page_size=0, after_seq=None, include_revoked=True)


def test_revoke_is_idempotent_and_records_one_change(store):
    rec = store.api_keys.insert(api_key())
    before = store.changes.latest_seq()
    revoked = store.api_keys.revoke("acme", "web", rec.key_id, at(10))
    assert revoked.state == "revoked"
    assert revoked.revoke_time == at(10)
    again = store.api_keys.revoke("acme", "web", rec.key_id, at(20))
    assert again == revoked  # first revoke time kept
    changes = store.changes.since(before)
    assert [(ch.kind, ch.entity_id) for ch in changes] == [("api_key", rec.key_id)]
    assert store.changes.latest_seq() == changes[0].seq


def test_revoke_not_found_or_other_tenant_is_none_and_records_nothing(store):
    rec = store.api_keys.insert(api_key())
    before = store.changes.latest_seq()
    assert store.api_keys.revoke("evil", "web", rec.key_id, at(1)) is None
    assert store.api_keys.revoke("acme", "web", "key_missing", at(1)) is None
    assert store.api_keys.get_by_id(rec.key_id).state == "active"
    assert store.changes.since(before) == []


def test_set_expiry_sets_clears_and_records_changes(store):
    rec = store.api_keys.insert(api_key())
    before = store.changes.latest_seq()
    updated = store.api_keys.set_expiry("acme", "web", rec.key_id, at(3600))
    assert updated.expire_time == at(3600)
    cleared = store.api_keys.set_expiry("acme", "web", rec.key_id, None)
    assert cleared.expire_time is None
    assert store.api_keys.set_expiry("evil", "web", rec.key_id, at(1)) is None
    assert [ch.entity_id for ch in store.changes.since(before)] == [rec.key_id] * 2


def test_rotation_with_grace_sets_old_expiry_in_one_transaction(store):
    old = store.api_keys.insert(api_key(expire=at(10_000)))
    before = store.changes.latest_seq()
    new = store.api_keys.insert_rotation(api_key(created=at(100)), old.key_id, at(400))
    assert new.seq > old.seq
    assert new.rotated_from == old.key_id
    assert store.api_keys.get_by_id(new.key_id) == new
    old_after = store.api_keys.get_by_id(old.key_id)
    assert old_after.state == "active"
    assert old_after.expire_time == at(400)
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [("api_key", old.key_id)]


def test_rotation_never_extends_the_old_expiry(store):
    old = store.api_keys.insert(api_key(expire=at(200)))
    store.api_keys.insert_rotation(api_key(created=at(100)), old.key_id, at(5000))
    assert store.api_keys.get_by_id(old.key_id).expire_time == at(200)


def test_rotation_without_grace_revokes_old(store):
    old = store.api_keys.insert(api_key())
    new = store.api_keys.insert_rotation(api_key(created=at(100)), old.key_id, at(100))
    old_after = store.api_keys.get_by_id(old.key_id)
    assert old_after.state == "revoked"
    assert old_after.revoke_time == at(100)
    assert store.api_keys.get_by_id(new.key_id).state == "active"


def test_rotation_failures_roll_back_entirely(store):
    old = store.api_keys.insert(api_key())
    other = store.api_keys.insert(api_key("evil", "web"))
    seq_before = store.changes.latest_seq()

    # Cross-tenant old key: NotFound, and the new key is not inserted.
    new = api_key(created=at(1))
    with pytest.raises(errors.NotFound):
        store.api_keys.insert_rotation(new, other.key_id, at(100))
    assert store.api_keys.get_by_id(new.key_id) is None

    # Duplicate new key id: AlreadyExists, and the old key keeps its state.
    with pytest.raises(errors.AlreadyExists):
        store.api_keys.insert_rotation(
            dataclasses.replace(api_key(created=at(1)), key_id=other.key_id), old.key_id, at(0)
        )
    assert store.api_keys.get_by_id(old.key_id).state == "active"
    assert store.changes.latest_seq() == seq_before

    # Revoked old key: FailedPrecondition.
    store.api_keys.revoke("acme", "web", old.key_id, at(2))
    with pytest.raises(errors.FailedPrecondition) as info:
        store.api_keys.insert_rotation(api_key(created=at(3)), old.key_id, at(100))
    assert info.value.reason == "API_KEY_REVOKED"


def test_record_last_used_only_moves_forward(store):
    a = store.api_keys.insert(api_key())
    b = store.api_keys.insert(api_key())
    store.api_keys.record_last_used({a.key_id: at(50), b.key_id: at(10), "key_missing": at(1)})
    store.api_keys.record_last_used({a.key_id: at(20), b.key_id: at(30)})
    assert store.api_keys.get_by_id(a.key_id).last_used_at == at(50)
    assert store.api_keys.get_by_id(b.key_id).last_used_at == at(30)
    store.api_keys.record_last_used({})  # no-op


def test_last_used_does_not_feed_changes(store):
    a = store.api_keys.insert(api_key())
    before = store.changes.latest_seq()
    store.api_keys.record_last_used({a.key_id: at(5)})
    assert store.changes.latest_seq() == before


def test_delete_revoked_before(store):
    old_revoked = store.api_keys.insert(api_key())
    new_revoked = store.api_keys.insert(api_key())
    expired = store.api_keys.insert(api_key(expire=at(50)))
    live = store.api_keys.insert(api_key(expire=at(5000)))
    forever = store.api_keys.insert(api_key())
    store.api_keys.revoke("acme", "web", old_revoked.key_id, at(10))
    store.api_keys.revoke("acme", "web", new_revoked.key_id, at(1000))

    assert store.api_keys.delete_revoked_before(at(100)) == 2
    assert store.api_keys.get_by_id(old_revoked.key_id) is None
    assert store.api_keys.get_by_id(expired.key_id) is None
    for kept in (new_revoked, live, forever):
        assert store.api_keys.get_by_id(kept.key_id) is not None
    assert store.api_keys.delete_revoked_before(at(100)) == 0


def test_seq_is_not_reused_after_delete(store):
    a = store.api_keys.insert(api_key())
    b = store.api_keys.insert(api_key())
    store.api_keys.revoke("acme", "web", b.key_id, at(1))
    store.api_keys.delete_revoked_before(at(2))
    c = store.api_keys.insert(api_key())
    assert c.seq > b.seq > a.seq


def test_repr_hides_hashes(store):
    rec = store.api_keys.insert(api_key())
    text = repr(rec)
    assert rec.secret_hash.hex() not in text
    assert "secret_hash" not in text
    assert "salt" not in text


def test_timestamps_come_back_in_utc(store):
    rec = store.api_keys.insert(api_key(expire=at(60)))
    got = store.api_keys.get("acme", "web", rec.key_id)
    assert got.expire_time.tzinfo is not None
    assert got.expire_time.astimezone(UTC) == got.expire_time
    assert got.expire_time.utcoffset() == timedelta(0)


# -- a key's machine sessions (sessions whose subject is the key's id) end with it ----------
# Adversary finding 9: a session an API key's claim opened for itself stayed VALID after the
# key was revoked, and its claim still minted keys.


def _machine_sessions(store, key_id):
    """Two sessions of the key's subject in its project, plus bystanders that must not move:
    another user's, and the key's subject in another project and another tenant (not the
    key's: its claim could not have opened them)."""
    mine = [store.sessions.insert(session(user=key_id)) for _ in range(2)]
    others = [
        store.sessions.insert(session(user="user-1")),
        store.sessions.insert(session("acme", "api", user=key_id)),
        store.sessions.insert(session("zeta", "web", user=key_id)),
    ]
    return mine, others


def test_revoking_a_key_revokes_its_machine_sessions_in_the_same_transaction(store):
    key = store.api_keys.insert(api_key())
    mine, others = _machine_sessions(store, key.key_id)
    store.sessions.revoke("acme", "web", mine[1].session_id, at(1))  # already revoked: no change
    before = store.changes.latest_seq()
    store.api_keys.revoke("acme", "web", key.key_id, at(5))
    first = store.sessions.get_by_id(mine[0].session_id)
    assert (first.state, first.revoke_time) == ("revoked", at(5))
    assert store.sessions.get_by_id(mine[1].session_id).revoke_time == at(1)
    for rec in others:
        assert store.sessions.get_by_id(rec.session_id) == rec
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("api_key", key.key_id),
        ("session", mine[0].session_id),
    ]


def test_revoking_a_revoked_key_again_revokes_a_session_opened_since(store):
    key = store.api_keys.insert(api_key())
    store.api_keys.revoke("acme", "web", key.key_id, at(5))
    late = store.sessions.insert(session(user=key.key_id))  # opened by a not-yet-refused claim
    before = store.changes.latest_seq()
    again = store.api_keys.revoke("acme", "web", key.key_id, at(9))
    assert again.revoke_time == at(5)  # the key is unchanged
    assert store.sessions.get_by_id(late.session_id).state == "revoked"
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("session", late.session_id)
    ]
    before = store.changes.latest_seq()
    store.api_keys.revoke("acme", "web", key.key_id, at(10))
    assert store.changes.since(before) == []  # nothing left to revoke: nothing recorded


def test_rotation_without_grace_revokes_the_old_keys_machine_sessions(store):
    old = store.api_keys.insert(api_key())
    mine, others = _machine_sessions(store, old.key_id)
    before = store.changes.latest_seq()
    store.api_keys.insert_rotation(api_key(created=at(100)), old.key_id, at(100))
    for rec in mine:
        got = store.sessions.get_by_id(rec.session_id)
        assert (got.state, got.revoke_time) == ("revoked", at(100))
    for rec in others:
        assert store.sessions.get_by_id(rec.session_id) == rec
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("api_key", old.key_id),
        *sorted(("session", r.session_id) for r in mine),
    ]


def test_rotation_with_grace_bounds_the_old_keys_machine_sessions_to_the_grace_end(store):
    old = store.api_keys.insert(api_key(expire=at(10_000)))
    short = store.sessions.insert(session(user=old.key_id, absolute=at(300)))
    mine, others = _machine_sessions(store, old.key_id)  # absolute expiry T0 + 12 h
    before = store.changes.latest_seq()
    store.api_keys.insert_rotation(api_key(created=at(100)), old.key_id, at(400))
    for rec in mine:
        got = store.sessions.get_by_id(rec.session_id)
        assert (got.state, got.absolute_expire_time) == ("active", at(400))
    assert store.sessions.get_by_id(short.session_id) == short  # already ends before: kept
    for rec in others:
        assert store.sessions.get_by_id(rec.session_id) == rec
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("api_key", old.key_id),
        *sorted(("session", r.session_id) for r in mine),
    ]
    # A grace longer than the key's own life bounds them by the key's expiry.
    key = store.api_keys.insert(api_key(expire=at(200)))
    ses = store.sessions.insert(session(user=key.key_id))
    store.api_keys.insert_rotation(api_key(created=at(100)), key.key_id, at(5000))
    assert store.sessions.get_by_id(ses.session_id).absolute_expire_time == at(200)


def test_a_new_expiry_bounds_the_keys_machine_sessions(store):
    key = store.api_keys.insert(api_key())
    mine, others = _machine_sessions(store, key.key_id)
    before = store.changes.latest_seq()
    store.api_keys.set_expiry("acme", "web", key.key_id, at(600))
    for rec in mine:
        assert store.sessions.get_by_id(rec.session_id).absolute_expire_time == at(600)
    for rec in others:
        assert store.sessions.get_by_id(rec.session_id) == rec
    assert [c.kind for c in store.changes.since(before)] == ["api_key", "session", "session"]
    before = store.changes.latest_seq()
    store.api_keys.set_expiry("acme", "web", key.key_id, None)  # clearing extends nothing
    assert store.sessions.get_by_id(mine[0].session_id).absolute_expire_time == at(600)
    assert [c.kind for c in store.changes.since(before)] == ["api_key"]
