"""The bounded TTL LRU cache that holds unwrapped data keys."""

from __future__ import annotations

import pytest

from zumik_secrets.app.ttl_cache import TtlLru


def test_lru_eviction_and_ttl() -> None:
    now = [0.0]
    cache: TtlLru[str, int] = TtlLru(2, 10.0, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    now[0] = 9.9
    assert cache.get("a") == 1
    now[0] = 10.0
    assert cache.get("a") is None and cache.get("c") is None
    assert len(cache) == 0


def test_pop_where_and_clear() -> None:
    cache: TtlLru[tuple[str, int], str] = TtlLru(100, 60.0)
    for i in range(5):
        cache.put(("t1", i), "x")
        cache.put(("t2", i), "y")
    assert cache.pop_where(lambda k: k[0] == "t1") == 5
    assert cache.get(("t1", 0)) is None and cache.get(("t2", 0)) == "y"
    cache.pop(("t2", 0))
    assert cache.get(("t2", 0)) is None
    cache.clear()
    assert len(cache) == 0
    assert "entries=0" in repr(cache)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TtlLru(0, 1.0)
    with pytest.raises(ValueError):
        TtlLru(1, 0.0)
