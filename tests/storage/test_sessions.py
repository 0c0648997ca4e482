"""SessionStore conformance."""

from __future__ import annotations

import dataclasses
import hashlib
import threading

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
        "acme",
        "web",
        rec.session_id,
        new_hash,
        ("console", "admin"),
        at(30),
        expected_token_hash=rec.token_hash,
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
    old = rec.token_hash
    replace = store.sessions.replace_token
    assert (
        replace("evil", "web", rec.session_id, new_hash, (), at(1), expected_token_hash=old) is None
    )
    with pytest.raises(errors.AlreadyExists):
        replace("acme", "web", rec.session_id, other.token_hash, (), at(1), expected_token_hash=old)
    assert store.sessions.get_by_token_hash(rec.token_hash) == rec  # rolled back
    store.sessions.revoke("acme", "web", rec.session_id, at(2))
    assert (
        replace("acme", "web", rec.session_id, new_hash, (), at(3), expected_token_hash=old) is None
    )


def test_replace_token_is_a_compare_and_swap_on_the_token_read(store):
    """Adversary finding 10: of two rotations that read the same token, the second must not
    replace the first's token (both callers were told OK; only one token verified)."""
    rec = store.sessions.insert(session())
    first = hashlib.sha256(b"first").digest()
    second = hashlib.sha256(b"second").digest()
    replace = store.sessions.replace_token
    won = replace(
        "acme", "web", rec.session_id, first, ("a",), at(1), expected_token_hash=rec.token_hash
    )
    assert won.token_hash == first
    before = store.changes.latest_seq()
    with pytest.raises(errors.FailedPrecondition) as caught:
        replace(
            "acme", "web", rec.session_id, second, ("b",), at(2), expected_token_hash=rec.token_hash
        )
    assert caught.value.reason == "SESSION_ROTATED"
    assert store.sessions.get_by_token_hash(first) == won  # the winner's token stays
    assert store.sessions.get_by_token_hash(second) is None
    assert store.changes.since(before) == []  # the loser recorded no change
    # A rotation from the current token still works.
    again = replace("acme", "web", rec.session_id, second, (), at(3), expected_token_hash=first)
    assert again.token_hash == second


def test_concurrent_replace_token_has_exactly_one_winner(store):
    rec = store.sessions.insert(session())
    n = 8
    barrier = threading.Barrier(n)
    outcomes: list[object] = [None] * n

    def rotate(i: int) -> None:
        new_hash = hashlib.sha256(f"token {i}".encode()).digest()
        barrier.wait()
        try:
            outcomes[i] = store.sessions.replace_token(
                "acme",
                "web",
                rec.session_id,
                new_hash,
                (),
                at(5),
                expected_token_hash=rec.token_hash,
            )
        except errors.FailedPrecondition as error:
            outcomes[i] = error.reason

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if not isinstance(o, str)]
    assert len(winners) == 1, outcomes
    assert outcomes.count("SESSION_ROTATED") == n - 1
    assert store.sessions.get_by_id(rec.session_id).token_hash == winners[0].token_hash


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
