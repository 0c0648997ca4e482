"""Conformance of the data-key, sealed-secret and customer-key stores on both backends."""

from __future__ import annotations

import dataclasses
import secrets
import threading
from datetime import UTC, datetime, timedelta

import pytest

from zumik_secrets.core.errors import AlreadyExists, FailedPrecondition
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.records import CustomerKeyRecord, DataKeyRecord, SealedSecretRecord

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def dk(tenant: str = "acme", project: str = "web", purpose: str = "seal") -> DataKeyRecord:
    return DataKeyRecord(
        tenant_id=tenant,
        project_id=project,
        purpose=purpose,
        version=1,
        state="primary",
        wrapped_key=secrets.token_bytes(60),
        wrapped_by="keyring",
        created_at=T0,
        destroyed_at=None,
    )


def secret(tenant: str = "acme", project: str = "web", dkv: int = 1) -> SealedSecretRecord:
    return SealedSecretRecord(
        secret_id="sec_" + secrets.token_hex(11),
        tenant_id=tenant,
        project_id=project,
        display_name="OpenAI ü",
        metadata={"provider": "openai", "env": "prod"},
        version=1,
        data_key_version=dkv,
        size_bytes=20,
        ciphertext=secrets.token_bytes(53),
        created_at=T0,
        updated_at=T0,
    )


def test_first_data_key_is_insert_if_absent(store):
    a, b = dk(), dk()
    store.data_keys.insert_first(a)
    store.data_keys.insert_first(b)  # the loser inserts nothing
    primary = store.data_keys.primary("acme", "web", "seal")
    assert primary == a
    assert store.data_keys.get("acme", "web", "seal", 1) == a
    assert store.data_keys.primary("acme", "web", "fingerprint") is None
    assert store.data_keys.primary("acme", "api", "seal") is None
    assert "wrapped_key" not in repr(primary) or a.wrapped_key.hex() not in repr(primary)


def test_first_data_key_race_between_store_instances(store_url):
    stores = [open_store(store_url) for _ in range(6)]
    for s in stores:
        s.migrate()
    candidates = [dk("race", "p") for _ in stores]
    barrier = threading.Barrier(len(stores))

    def go(i):
        barrier.wait()
        stores[i].data_keys.insert_first(candidates[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = {s.data_keys.primary("race", "p", "seal").wrapped_key for s in stores}
    assert len(winners) == 1 and winners.pop() in {c.wrapped_key for c in candidates}
    assert [
        r.version
        for r in stores[0].data_keys.list("race", "p", "seal", page_size=10, after_version=0)
    ] == [1]
    for s in stores:
        s.close()


def test_rotate_destroy_and_change_feed(store):
    store.data_keys.insert_first(dk())
    before = store.changes.latest_seq()
    calls = []

    def make(version):
        calls.append(version)
        return (b"wrapped-%d" % version, "keyring")

    v2 = store.data_keys.rotate("acme", "web", "seal", make, T0 + timedelta(seconds=1))
    assert calls == [2] and v2.version == 2 and v2.state == "primary"
    assert v2.wrapped_key == b"wrapped-2"
    assert store.data_keys.get("acme", "web", "seal", 1).state == "enabled"
    assert store.data_keys.primary("acme", "web", "seal").version == 2
    changes = store.changes.since(before)
    assert [(c.kind, c.entity_id) for c in changes] == [("data_key", "acme/web/seal")]
    with pytest.raises(FailedPrecondition) as caught:
        store.data_keys.destroy("acme", "web", "seal", 2, T0)
    assert caught.value.reason == "DATA_KEY_PRIMARY"
    gone = store.data_keys.destroy("acme", "web", "seal", 1, T0 + timedelta(seconds=2))
    assert gone.state == "destroyed" and gone.wrapped_key is None
    assert gone.destroyed_at == T0 + timedelta(seconds=2)
    assert store.data_keys.destroy("acme", "web", "seal", 1, T0 + timedelta(seconds=9)) == gone
    assert store.data_keys.destroy("acme", "web", "seal", 7, T0) is None
    page = store.data_keys.list("acme", "web", "seal", page_size=1, after_version=0)
    assert [r.version for r in page] == [1]
    page = store.data_keys.list("acme", "web", "seal", page_size=5, after_version=1)
    assert [r.version for r in page] == [2]
    # rotation with no key yet makes version 1
    fresh = store.data_keys.rotate("acme", "web", "fingerprint", make, T0)
    assert fresh.version == 1


def test_concurrent_rotations_never_collide(store_url):
    stores = [open_store(store_url) for _ in range(4)]
    for s in stores:
        s.migrate()
    stores[0].data_keys.insert_first(dk("rot", "p"))
    errors = []

    def go(s):
        try:
            for _ in range(5):
                s.data_keys.rotate("rot", "p", "seal", lambda v: (b"w%d" % v, "keyring"), T0)
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    versions = stores[0].data_keys.list("rot", "p", "seal", page_size=100, after_version=0)
    assert [v.version for v in versions] == list(range(1, 22))
    assert [v.version for v in versions if v.state == "primary"] == [21]
    for s in stores:
        s.close()


def test_wrapped_key_compare_and_swap_and_scans(store):
    for t in ("a", "b", "c"):
        store.data_keys.insert_first(dk(t, "p"))
    store.data_keys.rotate("b", "p", "seal", lambda v: (b"bw%d" % v, "keyring"), T0)
    store.data_keys.destroy("b", "p", "seal", 1, T0)
    everything = store.data_keys.list_wrapped(after=None, limit=100)
    assert [(r.tenant_id, r.version) for r in everything] == [("a", 1), ("b", 2), ("c", 1)]
    second = store.data_keys.list_wrapped(after=("a", "p", "seal", 1), limit=1)
    assert [(r.tenant_id, r.version) for r in second] == [("b", 2)]
    assert [r.version for r in store.data_keys.list_tenant("b")] == [2]
    rec = everything[0]
    key = ("a", "p", "seal", 1)
    assert store.data_keys.replace_wrapped(key, rec.wrapped_key, b"new", "keyring")
    assert not store.data_keys.replace_wrapped(key, rec.wrapped_key, b"newer", "keyring")
    assert store.data_keys.get(*key).wrapped_key == b"new"


def test_sealed_secrets(store):
    a = store.sealed_secrets.insert(secret())
    b = store.sealed_secrets.insert(secret(dkv=2))
    other = store.sealed_secrets.insert(secret("acme", "api"))
    assert a.seq < b.seq
    assert store.sealed_secrets.get("acme", "web", a.secret_id) == a
    assert store.sealed_secrets.get("acme", "api", a.secret_id) is None
    assert store.sealed_secrets.get("other", "web", a.secret_id) is None
    assert a.ciphertext.hex() not in repr(a)
    with pytest.raises(AlreadyExists):
        store.sealed_secrets.insert(a)
    assert store.sealed_secrets.list("acme", "web", page_size=10, after_seq=0) == [a, b]
    assert store.sealed_secrets.list("acme", "web", page_size=10, after_seq=a.seq) == [b]
    assert store.sealed_secrets.list(
        "acme", "web", page_size=10, after_seq=0, not_on_version=2
    ) == [a]
    assert store.sealed_secrets.count_by_data_key_version("acme", "web") == {1: 1, 2: 1}
    new = store.sealed_secrets.replace_ciphertext(
        a, version=2, data_key_version=2, size_bytes=5, ciphertext=b"c2", at=T0 + timedelta(1)
    )
    assert (new.version, new.data_key_version, new.ciphertext, new.seq) == (2, 2, b"c2", a.seq)
    assert new.updated_at == T0 + timedelta(1) and new.created_at == T0
    # a stale writer loses
    assert (
        store.sealed_secrets.replace_ciphertext(
            a, version=2, data_key_version=2, size_bytes=5, ciphertext=b"c3", at=T0
        )
        is None
    )
    assert store.sealed_secrets.delete("acme", "web", a.secret_id)
    assert not store.sealed_secrets.delete("acme", "web", a.secret_id)
    assert not store.sealed_secrets.delete("acme", "web", other.secret_id)
    assert store.sealed_secrets.get("acme", "api", other.secret_id) == other
    # The replace and the delete that changed a row are in the change feed (other replicas'
    # Open caches drop the row); inserts, the stale replace and the misses are not.
    changes = [(ch.kind, ch.entity_id) for ch in store.changes.since(0)]
    assert changes == [("sealed_secret", f"acme/web/{a.secret_id}")] * 2


def test_concurrent_inserts_each_get_their_own_outcome(store):
    """Seal's insert under contention (on SQLite concurrent inserts share one transaction, each
    in its own savepoint): every new row is stored and readable, a duplicate id fails alone with
    AlreadyExists, and nothing else in its batch is lost."""
    existing = store.sealed_secrets.insert(secret())
    records = [secret() for _ in range(63)] + [
        dataclasses.replace(secret(), secret_id=existing.secret_id)
    ]
    barrier = threading.Barrier(16)
    outcomes: dict[str, object] = {}

    def work(chunk: list[SealedSecretRecord]) -> None:
        barrier.wait()
        for rec in chunk:
            try:
                outcomes[rec.secret_id + str(id(rec))] = store.sealed_secrets.insert(rec)
            except AlreadyExists as exc:
                outcomes[rec.secret_id + str(id(rec))] = exc

    threads = [threading.Thread(target=work, args=(records[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [o for o in outcomes.values() if isinstance(o, AlreadyExists)]
    stored = [o for o in outcomes.values() if isinstance(o, SealedSecretRecord)]
    assert len(failed) == 1 and len(stored) == 63
    assert len({r.seq for r in stored} | {existing.seq}) == 64  # distinct sequence numbers
    for rec in stored:
        got = store.sealed_secrets.get(rec.tenant_id, rec.project_id, rec.secret_id)
        assert got is not None and got.ciphertext == rec.ciphertext and got.seq == rec.seq
    original = store.sealed_secrets.get("acme", "web", existing.secret_id)
    assert original is not None and original.ciphertext == existing.ciphertext


def test_customer_keys(store):
    store.data_keys.insert_first(dk("acme", "p"))
    old = store.data_keys.get("acme", "p", "seal", 1).wrapped_key
    rec = CustomerKeyRecord(
        tenant_id="acme",
        address="https://bao.example:8200",
        mount="transit",
        key_name="acme-key",
        wrapped_token=b"wrapped-token",
        ca_certificate_pem="",
        updated_at=T0,
    )
    before = store.changes.latest_seq()
    store.customer_keys.put(rec, [(("acme", "p", "seal", 1), old, b"vault:v1:xyz")])
    assert store.customer_keys.get("acme") == rec
    assert store.customer_keys.get("other") is None
    now = store.data_keys.get("acme", "p", "seal", 1)
    assert (now.wrapped_key, now.wrapped_by) == (b"vault:v1:xyz", "customer")
    assert [(c.kind, c.entity_id) for c in store.changes.since(before)] == [
        ("customer_key", "acme")
    ]
    # A stale rewrap list fails the whole transaction: nothing changes.
    changed = dataclasses.replace(rec, address="https://other.example", key_name="k2")
    with pytest.raises(FailedPrecondition) as caught:
        store.customer_keys.put(changed, [(("acme", "p", "seal", 1), old, b"vault:v1:zzz")])
    assert caught.value.reason == "DATA_KEYS_CHANGED"
    assert store.customer_keys.get("acme") == rec
    assert store.data_keys.get("acme", "p", "seal", 1).wrapped_key == b"vault:v1:xyz"


def test_signing_key_rewrap_compare_and_swap(store):
    from tests.storage.data import signing_key

    rec = signing_key()
    store.signing_keys.add(rec)
    assert store.signing_keys.replace_wrapped(rec.kid, rec.wrapped_private_key, b"new", 2)
    assert not store.signing_keys.replace_wrapped(rec.kid, rec.wrapped_private_key, b"x", 3)
    (got,) = [k for k in store.signing_keys.list(rec.purpose) if k.kid == rec.kid]
    assert (got.wrapped_private_key, got.keyring_version) == (b"new", 2)
