"""The fixed cost of one call in our own code, measured in process (no network, no scheduler).

The harness measures whole calls over mTLS on a shared machine, where the load of other
processes moves server CPU per call by a third from one run to the next. This measures the part
of a call our code adds around grpcio, with a stand-in servicer context and CPU time of the
whole process (the log writer thread included), so two trees can be compared run against run:

    .venv/bin/python -m bench.percall                       # this tree
    PYTHONPATH=<other tree>/service .venv/bin/python -m bench.percall

Rows: the interceptor around the benchmarks' empty RPC (policy check, span, access line,
deadline and call context; ``intercept_service`` included), and one task through the server's
unary pool (submit, run, done-callback, as grpcio drives it).
"""

from __future__ import annotations

import argparse
import io
import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import grpc

from bench.harness import _BENCH_POLICY
from zumik_secrets.api.contracts import method_guards
from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.core.claims import TenantClaim
from zumik_secrets.core.errors import Unauthenticated
from zumik_secrets.core.policy import Policy
from zumik_secrets.server.authorization import Authorizer
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.grpc_server import BENCH_EMPTY_METHOD, bench_empty_handler, served_methods
from zumik_secrets.server.interceptor import GuardInterceptor
from zumik_secrets.server.limits import Limits, LimitSettings
from zumik_secrets.server.log_setup import BackgroundJsonHandler, JsonFormatter, RedactionFilter
from zumik_secrets.server.telemetry import ACCESS_LOG, Telemetry

_PEER = b"spiffe://zumik.local/svc/bench"


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Context:
    """What the interceptor reads of a grpcio servicer context."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_spiffe_id": [_PEER], "ssl_tls_version": [b"TLSv1.3"]}

    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()

    def time_remaining(self) -> float:
        return 30.0

    def abort_with_status(self, status: Any) -> None:
        raise RuntimeError(f"aborted: {status.code}")


class _NoAudit:
    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        return None

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Any:
        yield


def _no_claim(_token: str) -> TenantClaim:
    raise Unauthenticated("no claims here", reason="CLAIM_MALFORMED")


def _cpu_per_call(body: Callable[[], None], calls: int, settle: Callable[[], None]) -> float:
    started = time.process_time()
    for _ in range(calls):
        body()
    settle()
    return (time.process_time() - started) / calls * 1e6


def interceptor_us(calls: int) -> float:
    """Server CPU (us) our interceptor adds to one empty RPC."""
    root = logging.getLogger()
    handler = BackgroundJsonHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ACCESS_LOG.setLevel(logging.INFO)
    policy = Policy.from_mapping(_policy())
    limits = Limits(LimitSettings())
    interceptor = GuardInterceptor(
        Authorizer(policy, _no_claim),
        Telemetry(lambda _tenant: False, None, served_methods()),
        _NoAudit(),  # type: ignore[arg-type]
        method_guards(),
        limits,
    )
    generic = bench_empty_handler()
    details = _Details(BENCH_EMPTY_METHOD)
    context = _Context()

    def one() -> None:
        h = interceptor.intercept_service(generic.service, details)  # type: ignore[arg-type]
        h.unary_unary(b"", context)  # type: ignore[misc]

    def drain() -> None:
        handler.close()  # writes what is queued (the writer's CPU is counted)

    one()
    try:
        return _cpu_per_call(one, calls, drain)
    finally:
        limits.shutdown()
        limits.unary_pool.shutdown()


def pool_us(calls: int) -> float:
    """Server CPU (us) of one task through the unary pool, driven as grpcio drives it."""
    limits = Limits(LimitSettings())
    pool = limits.unary_pool
    done = threading.Semaphore(0)

    def task() -> None:
        return None

    def one() -> None:
        pool.submit(task).add_done_callback(lambda _f: done.release())

    def settle() -> None:
        for _ in range(calls):
            done.acquire()

    try:
        return _cpu_per_call(one, calls, settle)
    finally:
        limits.shutdown()
        pool.shutdown()


def _policy() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(dev_policy_path().read_text() + _BENCH_POLICY)


def main() -> None:
    """Print the best of ``--rounds`` measurements of each row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name, fn in (("interceptor (empty RPC)", interceptor_us), ("unary pool task", pool_us)):
        best = min(fn(args.calls) for _ in range(args.rounds))
        print(f"{name:28s} {best:7.1f} us/call (best of {args.rounds} x {args.calls})")
    grpc_version = getattr(grpc, "__version__", "?")
    print(f"grpcio {grpc_version}")


if __name__ == "__main__":
    main()
