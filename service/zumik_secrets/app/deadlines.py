"""The caller's deadline, for outbound work done on its behalf (customer key servers).

The server installs the gRPC deadline of each call here (a context variable, so it follows the
call and nothing else); an outbound call takes ``min(its own timeout, time left)`` as its
overall budget. A call without a deadline gets the outbound call's own timeout only.
"""

from __future__ import annotations

from contextvars import Token

from zumik_secrets.core import deadlines as _core

_NO_DEADLINE = 1e6
"""grpcio reports a call without a deadline as a huge remaining time."""


def set_deadline(time_remaining: float | None) -> Token[float | None]:
    """Install the current call's deadline (``time_remaining`` seconds from now, None: none).

    The one deadline of the call (:mod:`zumik_secrets.core.deadlines`), shared with the
    database waits.
    """
    if time_remaining is not None and time_remaining > _NO_DEADLINE:
        time_remaining = None
    return _core.enter(None if time_remaining is None else max(0.0, time_remaining))


def reset_deadline(token: Token[float | None]) -> None:
    """Undo :func:`set_deadline`."""
    _core.leave(token)


def budget(cap: float) -> float:
    """Seconds an outbound call may take now: ``cap``, or less if the caller's deadline is
    nearer (may be zero or negative: the caller has no time left)."""
    left = _core.time_left()
    return cap if left is None else min(cap, left)
