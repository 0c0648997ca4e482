"""The caller's deadline, for outbound work done on its behalf (customer key servers).

The server installs the gRPC deadline of each call here (a context variable, so it follows the
call and nothing else); an outbound call takes ``min(its own timeout, time left)`` as its
overall budget. A call without a deadline gets the outbound call's own timeout only.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_DEADLINE: ContextVar[float | None] = ContextVar("zumik_call_deadline", default=None)


def set_deadline(time_remaining: float | None) -> Token[float | None]:
    """Install the current call's deadline (``time_remaining`` seconds from now, None: none)."""
    deadline = None if time_remaining is None else time.monotonic() + max(0.0, time_remaining)
    return _DEADLINE.set(deadline)


def reset_deadline(token: Token[float | None]) -> None:
    """Undo :func:`set_deadline`."""
    _DEADLINE.reset(token)


def budget(cap: float) -> float:
    """Seconds an outbound call may take now: ``cap``, or less if the caller's deadline is
    nearer (may be zero or negative: the caller has no time left)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return cap
    return min(cap, deadline - time.monotonic())
