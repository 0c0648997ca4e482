"""The caller's deadline, carried down to every wait the call makes (issue 24).

The interceptor sets the remaining time of the gRPC call (:func:`enter`); storage and the audit
log ask :func:`budget` how long they may wait (pool checkout, statement, durable audit wait).
The budget is the remaining time minus :data:`MARGIN`, so the server answers UNAVAILABLE (with
a retry hint) before the caller's deadline instead of the caller seeing DEADLINE_EXCEEDED from
a server still working. Outside a call (background threads) there is no deadline and each wait
keeps its own configured bound.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from zumik_secrets.core.errors import Unavailable

MARGIN = 0.2
"""Seconds kept back from the caller's deadline to build and send the answer (a fifth of the
time left when that is less, so a short deadline still leaves time for the work)."""

REASON_DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "zumik_call_deadline", default=None
)


def enter(remaining: float | None) -> contextvars.Token[float | None]:
    """Start a call with ``remaining`` seconds to its deadline (None: no deadline)."""
    return _DEADLINE.set(None if remaining is None else time.monotonic() + remaining)


def leave(token: contextvars.Token[float | None]) -> None:
    """End the call started by :func:`enter`."""
    _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds to the call's deadline (no margin; may be negative), None if unbounded."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def remaining() -> float | None:
    """Seconds left for work in this call (its deadline minus the margin), None if unbounded."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    return left - min(MARGIN, max(0.0, left) / 5)


def too_short() -> Unavailable:
    """The error of a wait the caller's deadline leaves no time for."""
    return Unavailable(
        "the call's deadline leaves no time to finish this request, retry with a longer one",
        reason=REASON_DEADLINE_TOO_SHORT,
    )


def budget(limit: float) -> float:
    """How long a wait bounded by ``limit`` seconds may last in this call.

    Raises:
        Unavailable: reason ``DEADLINE_TOO_SHORT``, when the caller's deadline (minus the
            margin) has passed already.
    """
    left = remaining()
    if left is None:
        return limit
    if left <= 0:
        raise too_short()
    return min(limit, left)


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Within the block, waits end within ``seconds`` (or the call's deadline, if sooner).

    ``seconds`` is work time: the margin is added so that :func:`budget` gives ``seconds``.
    """
    deadline = time.monotonic() + seconds + min(MARGIN, seconds / 4)
    current = _DEADLINE.get()
    token = _DEADLINE.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _DEADLINE.reset(token)
