"""The fixed cost of one call in our own code, measured in process (no network, no scheduler).

The harness measures whole calls over mTLS on a shared machine, where the load of other
processes moves server CPU per call by a third from one run to the next. This measures the part
of a call our code adds around grpcio, with a stand-in servicer context and CPU time of the
whole process (the log writer thread included), so two trees can be compared run against run:

    .venv/bin/python -m bench.percall                       # this tree
    PYTHONPATH=<other tree>/service .venv/bin/python -m bench.percall

Rows: the interceptor around the benchmarks' empty RPC (policy check, span, access line,
deadline and call context; ``intercept_service`` included); one task through the server's
unary pool (submit, run, done-callback, as grpcio drives it); and the whole call below grpcio
for warm VerifyApiKey and Open 1 KiB (interceptor, servicer, use case, SQLite store, the audit
writer thread; 16 callers at once, so that audit events are group-committed as under load),
over a real :class:`Runtime` in a temp dir. Request parsing and response serialisation are
included; grpcio's own work (HTTP/2, TLS, its polling thread) is not. ``--rows verify_event``:
the verification audit event alone (render, draft, chain link; no database).
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
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


class _Md:
    __slots__ = ("key", "value")

    def __init__(self, key: str, value: str) -> None:
        self.key = key
        self.value = value


class _ClaimContext(_Context):
    def __init__(self, peer: bytes, claim: str | None) -> None:
        self._auth = {"peer_spiffe_id": [peer], "ssl_tls_version": [b"TLSv1.3"]}
        self._md = (_Md("zumik-claim", claim),) if claim else ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._md


class _Collect:
    """Stands in for a grpc server: collects the handlers a servicer registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        return None

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler


DATABASE_URL = ""
"""The store of the full-path rows (``--database-url``; default: SQLite in a temp dir)."""


def full_path_us(calls: int, scenario: str, callers: int = 16) -> float:
    """Server CPU (us) of one warm VerifyApiKey or Open 1 KiB below grpcio (see the module
    docstring), ``callers`` at once."""
    import tempfile
    from pathlib import Path

    from zumik.secrets.v1 import (
        key_service_pb2,
        key_service_pb2_grpc,
        seal_service_pb2,
        seal_service_pb2_grpc,
    )

    from bench.harness import BENCH_ROLE
    from zumik_secrets.api.servicers.keys import KeyServicer
    from zumik_secrets.api.servicers.seal import SealServicer
    from zumik_secrets.app.actor import Actor
    from zumik_secrets.cli.dev_pki import generate_dev_pki, spiffe_id_for
    from zumik_secrets.core.authority import Authority
    from zumik_secrets.core.keyring import generate_keyring
    from zumik_secrets.core.names import ProjectName
    from zumik_secrets.server.config import ServerConfig
    from zumik_secrets.server.runtime import Runtime

    root = Path(tempfile.mkdtemp(prefix="zumik-percall-"))
    database_url = DATABASE_URL
    if DATABASE_URL.startswith("postgresql"):
        from bench.harness import create_scratch_db

        # Fresh (a new keyring each time): the scratch database, under its per-process name.
        database_url = create_scratch_db(DATABASE_URL.rsplit("/", 1)[-1])
    pki = generate_dev_pki(root / "pki")
    (root / "keyring.json").write_text(generate_keyring())
    (root / "policy.toml").write_text(dev_policy_path().read_text() + _BENCH_POLICY)
    config = ServerConfig.load(
        {
            "ZUMIK_DATABASE_URL": database_url or f"sqlite:///{root}/z.db",
            "ZUMIK_TLS_CERT": str(pki.server.cert),
            "ZUMIK_TLS_KEY": str(pki.server.key),
            "ZUMIK_TLS_CLIENT_CA": str(pki.ca_cert),
            "ZUMIK_POLICY_FILE": str(root / "policy.toml"),
            "ZUMIK_MASTER_KEYRING_FILE": str(root / "keyring.json"),
        }
    )
    runtime = Runtime.open(config)
    limits = Limits(LimitSettings())
    try:
        interceptor = GuardInterceptor(
            Authorizer(runtime.policy, runtime.verify_claim, runtime.revocations.check_scope),
            Telemetry(lambda _tenant: False, None, served_methods()),
            runtime.audit,
            method_guards(),
            limits,
        )
        collect = _Collect()
        key_service_pb2_grpc.add_KeyServiceServicer_to_server(
            KeyServicer(
                runtime.claim_keys,
                runtime.api_keys,
                runtime.sessions,
                revocation_feed=runtime.revocation_feed,
            ),
            collect,
        )
        seal_service_pb2_grpc.add_SealServiceServicer_to_server(
            SealServicer(runtime.sealed_secrets), collect
        )
        peer = spiffe_id_for("zumik.local", BENCH_ROLE).encode()

        def mint(scopes: tuple[str, ...]) -> str:
            token, _ = runtime.claim_keys.signer.mint(
                "bench", "p", "bench", scopes, int(time.time()), 300, credential_id="key_bench"
            )
            return str(token)

        parent = ProjectName("bench", "p")
        actor = Actor(identity=peer.decode())
        if scenario == "verify_warm":
            method = "/zumik.secrets.v1.KeyService/VerifyApiKey"
            raws = [
                runtime.api_keys.create(
                    parent,
                    display_name="k",
                    scopes=["keys.read"],
                    ttl=None,
                    environment="",
                    actor=actor,
                    authority=Authority.unbounded(),
                ).raw_key
                for _ in range(64)
            ]
            bodies = [
                key_service_pb2.VerifyApiKeyRequest(key=raw).SerializeToString() for raw in raws
            ]
            claim = None
        elif scenario == "seal_1k":
            method = "/zumik.secrets.v1.SealService/Seal"
            bodies = [
                seal_service_pb2.SealRequest(
                    parent="tenants/bench/projects/p", plaintext=bytes([i]) * 1024
                ).SerializeToString()
                for i in range(64)
            ]
            claim = mint(("secrets.seal", "secrets.read"))
        else:
            method = "/zumik.secrets.v1.SealService/Open"
            names = [
                runtime.sealed_secrets.seal(parent, "s", b"x" * 1024, {}, actor).secret_id
                for _ in range(64)
            ]
            bodies = [
                seal_service_pb2.OpenRequest(
                    name=f"tenants/bench/projects/p/secrets/{n}"
                ).SerializeToString()
                for n in names
            ]
            claim = mint(("secrets.open", "secrets.read"))
        context = _ClaimContext(peer, claim)
        details = _Details(method)
        details.invocation_metadata = context.invocation_metadata()  # type: ignore[assignment]

        def continuation(d: Any) -> Any:
            return collect.handlers.get(d.method)

        def one(i: int) -> None:
            handler = interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]
            request = handler.request_deserializer(bodies[i % 64])  # type: ignore[misc]
            response = handler.unary_unary(request, context)  # type: ignore[misc]
            handler.response_serializer(response)  # type: ignore[misc]

        def drive(total: int) -> None:
            # ``callers`` threads, each looping over its share: no per-call submit or Future
            # of the driver's own in the measured CPU.
            share = total // callers
            threads = [
                threading.Thread(target=lambda b=k * share: [one(b + i) for i in range(share)])
                for k in range(callers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        drive(256)  # warm: caches, claims, data keys
        started = time.process_time()
        drive(calls)
        runtime.audit_log.drain_outbox()
        return (time.process_time() - started) / (calls // callers * callers) * 1e6
    finally:
        limits.shutdown()
        limits.unary_pool.shutdown()
        runtime.close()
        shutil.rmtree(root, ignore_errors=True)  # PKI, keyring, database
        if database_url != DATABASE_URL:
            from bench.harness import drop_scratch_db

            drop_scratch_db(DATABASE_URL.rsplit("/", 1)[-1])


def verify_event_us(calls: int) -> float:
    """CPU (us) of one ``api_key.verify`` event of a stored key: rendered, drafted (id, time,
    cleaning) and linked into the chain (canonical form, hash), without the database."""
    import inspect

    from zumik_secrets.app.actor import Actor
    from zumik_secrets.app.audit_writer import AuditWriter
    from zumik_secrets.app.verification import VerifyResult, record_verification
    from zumik_secrets.core import audit_chain

    class _Chain:
        def append(self, drafts: Any) -> Any:
            return audit_chain.extend_chain(0, audit_chain.GENESIS_HASH, drafts)

    writer = AuditWriter(_Chain(), group_commit=False)  # type: ignore[arg-type]
    actor = Actor("spiffe://zumik.local/svc/gateway", "key_bench", "ab" * 16)
    name = "tenants/bench/projects/p/apiKeys/key_0123456789ABCDEFabcdef"
    # Trees before issue 18's rendering have no ``stored`` (run them with PYTHONPATH).
    kw: dict[str, Any] = (
        {"stored": True} if "stored" in inspect.signature(record_verification).parameters else {}
    )

    def one() -> None:
        record_verification(
            writer, actor, "api_key.verify", "bench", name, VerifyResult.VALID, **kw
        )

    return _cpu_per_call(one, calls, lambda: None)


def _policy() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(dev_policy_path().read_text() + _BENCH_POLICY)


def main() -> None:
    """Print the best of ``--rounds`` measurements of each row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", default="empty,pool,verify,open,seal", help="rows to measure")
    parser.add_argument("--database-url", default="", help="store of the full-path rows")
    args = parser.parse_args()
    global DATABASE_URL
    DATABASE_URL = args.database_url
    rows: dict[str, tuple[str, Callable[[int], float]]] = {
        "empty": ("interceptor (empty RPC)", interceptor_us),
        "pool": ("unary pool task", pool_us),
        "verify": ("VerifyApiKey warm, full", lambda n: full_path_us(n // 4, "verify_warm")),
        "open": ("Open 1 KiB, full", lambda n: full_path_us(n // 10, "open_1k")),
        "seal": ("Seal 1 KiB, full", lambda n: full_path_us(n // 10, "seal_1k")),
        "verify_event": ("api_key.verify event", verify_event_us),
    }
    for row in args.rows.split(","):
        name, fn = rows[row]
        values = sorted(fn(args.calls) for _ in range(args.rounds))
        print(
            f"{name:28s} {values[0]:7.1f} us/call best, {values[len(values) // 2]:7.1f} median"
            f" ({args.rounds} rounds)",
            flush=True,
        )
    grpc_version = getattr(grpc, "__version__", "?")
    print(f"grpcio {grpc_version}")


if __name__ == "__main__":
    main()
