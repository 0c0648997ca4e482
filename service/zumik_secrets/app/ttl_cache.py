"""A small thread-safe LRU cache whose entries also expire after a fixed time."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    """At most ``max_entries`` values, each for at most ``ttl`` seconds, least recent evicted.

    A hit costs one dict lookup and a move-to-end under a lock; nothing is ever refreshed
    behind the caller's back, so an expired entry makes the caller load it again.
    """

    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Create an empty cache.

        Raises:
            ValueError: ``max_entries`` < 1 or ``ttl`` <= 0.
        """
        if max_entries < 1 or ttl <= 0:
            raise ValueError("max_entries must be >= 1 and ttl > 0")
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        #: Look-ups that found a live value, and those that did not (read by the metrics).
        self.hits = 0
        self.misses = 0

    @property
    def ttl(self) -> float:
        """Seconds an entry lives."""
        return self._ttl

    @property
    def max_entries(self) -> int:
        """Capacity."""
        return self._max

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"TtlLru(entries={len(self._data)}, max={self._max}, ttl={self._ttl})"

    def get(self, key: K) -> V | None:
        """The live value for ``key``, or None (missing or expired)."""
        now = self._clock()
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            if item[0] <= now:
                del self._data[key]
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: K, value: V) -> None:
        """Insert or replace, evicting the least recently used entry when full."""
        expires = self._clock() + self._ttl
        with self._lock:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        """Forget ``key`` (no error if absent)."""
        with self._lock:
            self._data.pop(key, None)

    def pop_where(self, predicate: Callable[[K], bool]) -> int:
        """Forget every key matching ``predicate`` (a scan: for rare invalidations only)."""
        with self._lock:
            doomed = [k for k in self._data if predicate(k)]
            for k in doomed:
                del self._data[k]
        return len(doomed)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._data.clear()
