"""SigningKeys across replicas: one first key, and an unknown kid found promptly but cheaply."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zumik_secrets.app.signing_keys import SigningKeys
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.ports import Store

REPLICAS = 4


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[Store]]:
    opened = [open_store(f"sqlite:///{tmp_path}/z.db") for _ in range(REPLICAS)]
    opened[0].migrate()
    yield opened
    for s in opened:
        s.close()


class _ReadTogether:
    """A SigningKeyStore whose first ``list`` returns only after every replica's has run:
    all of them see an empty table before any creates a key (the race of a cold start)."""

    def __init__(self, inner: Any, barrier: threading.Barrier) -> None:
        self._inner = inner
        self._barrier = barrier
        self._first = True
        self.lists = 0

    def list(self, purpose: str) -> Any:
        self.lists += 1
        rows = self._inner.list(purpose)
        if self._first:
            self._first = False
            self._barrier.wait(timeout=10)
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _keys(store: Any, keyring: MasterKeyring) -> SigningKeys:
    return SigningKeys(store, keyring, purpose="claims", audience="zumik-secrets")


def test_replicas_starting_together_on_an_empty_store_share_one_key(
    stores: list[Store],
) -> None:
    keyring = MasterKeyring.from_text(generate_keyring())
    barrier = threading.Barrier(REPLICAS)
    replicas = [_keys(_ReadTogether(s.signing_keys, barrier), keyring) for s in stores]
    errors: list[BaseException] = []

    def load(k: SigningKeys) -> None:
        try:
            k.load()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=load, args=(k,)) for k in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    kids = {k.signer.kid for k in replicas}
    assert len(kids) == 1, "each replica signed with its own first key"
    assert [r.kid for r in stores[0].signing_keys.list("claims")] == list(kids)


def test_an_unknown_kid_is_looked_up_even_right_after_a_refresh(stores: list[Store]) -> None:
    keyring = MasterKeyring.from_text(generate_keyring())
    a = _keys(stores[0].signing_keys, keyring)
    a.load()
    b_store = _ReadTogether(stores[1].signing_keys, threading.Barrier(1))
    b = _keys(b_store, keyring)
    b.load()
    b.refresh()  # B's change feed fired (for something else) just now
    new, _previous = a.rotate()  # then replica A rotates; B has not heard of it yet
    assert b.public_key(new.kid) == new.public_key

    # A caller inventing kids costs at most one read a second.
    before = b_store.lists
    for i in range(20):
        assert b.public_key(f"sk_invented{i}") is None
    assert b_store.lists - before <= 2  # one reload (it lists twice)
