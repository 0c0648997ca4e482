"""The metrics port: what use cases record, without knowing where it goes.

:class:`Recorder` is a no-op; the server installs its OpenTelemetry implementation
(:mod:`zumik_secrets.server.metrics`) when metrics are configured, so with metrics off a hot
path pays one method call that returns at once. Counts that would be recorded on every cache
hit are not recorded here at all: the caches keep plain integer counters and the server reads
them when it is scraped (observable instruments), which costs nothing per hit.

Every label value passed here must come from a small, fixed set (method names the server
serves, reason codes, result names, breaker kinds): never a tenant id, a resource name or
anything else a caller controls. docs/observability.md lists every metric.

Two ways to reach a recorder: objects built by the server runtime get one injected (the audit
log, the key servicer); code far from the runtime (the customer-key HTTP client, breakers)
calls :func:`recorder`, the process-wide one.
"""

from __future__ import annotations

__all__ = ["NOOP", "Recorder", "install", "recorder"]


class Recorder:
    """Records nothing. Subclasses override what they export; every method must be cheap."""

    enabled = False

    def verify_result(self, kind: str, result: str) -> None:
        """A credential verification answered ``result`` (``kind``: api_key, session)."""

    def audit_batch(self, events: int, seconds: float, ok: bool) -> None:
        """The audit writer committed (or failed to commit) one batch of ``events``."""

    def audit_durable_wait(self, seconds: float, outcome: str) -> None:
        """A durable audit record waited ``seconds`` for its commit (``ok``/``timeout``/
        ``error``)."""

    def audit_append_failed(self, events: int, durable: bool) -> None:
        """``events`` audit events could not be committed (retried or failed closed)."""

    def customer_key_call(self, operation: str, seconds: float, outcome: str) -> None:
        """One call to a tenant's key server (``operation``: encrypt/decrypt/...;
        ``outcome``: ok or a reason code)."""

    def breaker_state(self, kind: str, key: str, state: str) -> None:
        """A circuit breaker changed state (``kind``: database, customer_key; ``key``
        identifies the breaker and is never exported as a label; ``state``: closed, open,
        half_open)."""

    def change_applied(self, delay_seconds: float) -> None:
        """A change-feed record was applied ``delay_seconds`` after it was committed."""


NOOP = Recorder()

_CURRENT: list[Recorder] = [NOOP]


def recorder() -> Recorder:
    """The process-wide recorder (the no-op until the server installs one)."""
    return _CURRENT[0]


def install(new: Recorder) -> Recorder:
    """Make ``new`` the process-wide recorder; returns the previous one."""
    old = _CURRENT[0]
    _CURRENT[0] = new
    return old
