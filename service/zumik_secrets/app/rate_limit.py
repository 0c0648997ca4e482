"""Token buckets that limit *failed* credential verifications.

Only failures are charged, so a caller presenting valid credentials is never slowed down, while
someone probing keys or tokens at speed soon gets RESOURCE_EXHAUSTED instead of an answer (and
so learns nothing from the probe). Buckets are kept per key (a calling identity or an API key id)
in a bounded dict; when it is full the least recently charged buckets are dropped (a dropped
bucket starts full again, which only ever errs towards letting a caller through).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """Refill rate (tokens per second) and burst (bucket size) of one family of buckets."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")


class FailureLimiter:
    """Token buckets per key; :meth:`charge` takes one token and says when to retry if none.

    Thread-safe: one lock, held only for dict work.
    """

    def __init__(
        self,
        spec: BucketSpec,
        *,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the limiter.

        Args:
            spec: Rate and burst of every bucket.
            max_buckets: Bound on remembered buckets.
            clock: Monotonic seconds (tests inject their own).
        """
        self.spec = spec
        self._max = max_buckets
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, time of last update); dict order is "least recently charged first".
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def blocked_for(self, key: str) -> float:
        """Seconds until ``key`` may fail again without being limited (0.0 if it may now)."""
        now = self._clock()
        with self._lock:
            tokens = self._tokens(key, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.spec.rate

    def charge(self, key: str) -> float:
        """Take one token from ``key``'s bucket.

        Returns:
            0.0 if a token was available, else the seconds until one will be (nothing taken).
        """
        now = self._clock()
        with self._lock:
            tokens = self._tokens(key, now)
            if tokens >= 1.0:
                self._buckets.pop(key, None)
                self._buckets[key] = (tokens - 1.0, now)
                while len(self._buckets) > self._max:
                    del self._buckets[next(iter(self._buckets))]
                return 0.0
        return (1.0 - tokens) / self.spec.rate

    def _tokens(self, key: str, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return self.spec.burst
        tokens, at = held
        return min(self.spec.burst, tokens + (now - at) * self.spec.rate)
