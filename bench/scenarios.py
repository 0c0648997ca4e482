"""The measured scenarios: how each is set up through the real RPCs and what each call sends.

A scenario's ``prepare`` runs before every measured run (claims live at most 5 minutes; cold runs
need fresh keys). A probe answering UNIMPLEMENTED raises :class:`NotServed`, so a scenario turns
on by itself once its RPC lands.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from zumik.secrets.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    fingerprint_service_pb2,
    fingerprint_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    seal_service_pb2,
    seal_service_pb2_grpc,
)

from bench.harness import EMPTY_METHOD
from bench.loadgen import Tls
from bench.runner import RunSpec

TENANT = "bench"
PROJECT = "p1"
PARENT = f"tenants/{TENANT}/projects/{PROJECT}"
CLAIM_KEY = "zumik-claim"
SCOPES = (
    "secrets.seal",
    "secrets.open",
    "secrets.read",
    "fingerprints.compute",
    "audit.write",
    "keys.read",
)
HOT_KEYS = 64  # distinct keys cycled by the warm verify run (all cached after warm-up)


class NotServed(Exception):
    """The server answers UNIMPLEMENTED for a method the scenario needs."""


class SetupFailed(Exception):
    """Set-up failed for another reason (message: the gRPC code and details)."""


@dataclass
class Prepared:
    """What the generators send for one run."""

    method: str
    requests: list[bytes]
    metadata: tuple[tuple[str, str], ...] = ()
    distinct: bool = False
    items_per_call: int = 1

    def spec(
        self,
        kind: str,
        target: str,
        tls: Tls,
        concurrency: int,
        warmup: float,
        duration: float,
        channels: int,
    ) -> RunSpec:
        """How the generators drive these requests at one concurrency."""
        return RunSpec(
            kind=kind,
            target=target,
            tls=tls,
            method=self.method,
            requests=self.requests,
            metadata=self.metadata,
            concurrency=concurrency,
            warmup=warmup,
            duration=duration,
            channels_per_generator=channels,
            distinct=self.distinct,
            items_per_call=self.items_per_call,
        )


@dataclass
class Ctx:
    """What set-up needs: a sync channel as the bench identity and the database."""

    channel: grpc.Channel
    database_url: str
    cache: dict[str, Any] = field(default_factory=dict)

    def call(self, fn: Callable[..., Any], request: Any, claim: str = "") -> Any:
        """One set-up call; UNIMPLEMENTED becomes NotServed, other errors SetupFailed."""
        md = ((CLAIM_KEY, claim),) if claim else None
        try:
            return fn(request, metadata=md, timeout=30)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise NotServed(exc.details() or "UNIMPLEMENTED") from None
            raise SetupFailed(f"{code.name}: {exc.details()}") from None

    @property
    def keys(self) -> key_service_pb2_grpc.KeyServiceStub:
        """KeyService stub."""
        return key_service_pb2_grpc.KeyServiceStub(self.channel)

    def api_key(self, scopes: tuple[str, ...] = SCOPES) -> str:
        """A raw API key of the bench project (made once per invocation)."""
        if "key" not in self.cache:
            resp = self.call(
                self.keys.CreateApiKey,
                key_service_pb2.CreateApiKeyRequest(
                    parent=PARENT, display_name="bench", scopes=list(scopes)
                ),
            )
            self.cache["key"] = resp.raw_key
        key: str = self.cache["key"]
        return key

    def claim(self) -> str:
        """A fresh claim for the bench project (via VerifyApiKey)."""
        resp = self.call(
            self.keys.VerifyApiKey, key_service_pb2.VerifyApiKeyRequest(key=self.api_key())
        )
        if not resp.claim:
            raise SetupFailed(f"VerifyApiKey gave no claim (result {resp.result})")
        claim: str = resp.claim
        return claim


@dataclass(frozen=True)
class Scenario:
    """A named scenario. ``prepare(ctx, run_calls)`` gives the run's requests."""

    name: str
    label: str
    prepare: Callable[[Ctx, int], Prepared]
    items_per_call: int = 1
    quick: bool = True


def _empty(ctx: Ctx, calls: int) -> Prepared:
    try:
        ctx.channel.unary_unary(EMPTY_METHOD)(b"", timeout=10)  # type: ignore[call-arg]
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise NotServed("empty RPC off (ZUMIK_BENCH_EMPTY_RPC)") from None
        raise SetupFailed(f"{exc.code().name}: {exc.details()}") from None
    return Prepared(EMPTY_METHOD, [b""])


_VERIFY = "/zumik.secrets.v1.KeyService/VerifyApiKey"


def _verify_warm(ctx: Ctx, calls: int) -> Prepared:
    if "hot_keys" not in ctx.cache:
        keys = []
        for i in range(HOT_KEYS):
            resp = ctx.call(
                ctx.keys.CreateApiKey,
                key_service_pb2.CreateApiKeyRequest(
                    parent=PARENT, display_name=f"hot-{i}", scopes=["secrets.open"]
                ),
            )
            keys.append(resp.raw_key)
        ctx.cache["hot_keys"] = keys
    reqs = [
        key_service_pb2.VerifyApiKeyRequest(key=k).SerializeToString()
        for k in ctx.cache["hot_keys"]
    ]
    ctx.call(ctx.keys.VerifyApiKey, key_service_pb2.VerifyApiKeyRequest(key=ctx.api_key()))
    return Prepared(_VERIFY, reqs)


def insert_keys(
    database_url: str, count: int, scopes: tuple[str, ...] = ("secrets.open",)
) -> list[str]:
    """Store ``count`` new API keys straight through the storage port; returns the raw keys.

    Used for cold runs, which need more distinct keys than CreateApiKey could make in time. The
    rows are what CreateApiKey would store (same generator, same port).
    """
    from datetime import UTC, datetime

    from zumik_secrets.core.api_keys import generate_api_key
    from zumik_secrets.storage.factory import open_store
    from zumik_secrets.storage.records import ApiKeyRecord

    store = open_store(database_url)
    raws = []
    try:
        now = datetime.now(UTC)
        for _ in range(count):
            g = generate_api_key("live")
            store.api_keys.insert(
                ApiKeyRecord(
                    key_id=g.handle,
                    tenant_id=TENANT,
                    project_id=PROJECT,
                    display_name="cold",
                    env=g.env,
                    masked_prefix=g.masked_prefix,
                    salt=g.salt,
                    secret_hash=g.secret_hash,
                    scopes=scopes,
                    state="active",
                    created_at=now,
                    expire_time=None,
                    revoke_time=None,
                    last_used_at=None,
                    rotated_from=None,
                )
            )
            raws.append(g.raw)
    finally:
        store.close()
    return raws


def _verify_cold(ctx: Ctx, calls: int) -> Prepared:
    # Probe first, so an unserved RPC is reported before keys are written.
    ctx.call(ctx.keys.VerifyApiKey, key_service_pb2.VerifyApiKeyRequest(key=ctx.api_key()))
    raws = insert_keys(ctx.database_url, calls)
    reqs = [key_service_pb2.VerifyApiKeyRequest(key=k).SerializeToString() for k in raws]
    return Prepared(_VERIFY, reqs, distinct=True)


def _verify_session(ctx: Ctx, calls: int) -> Prepared:
    if "sessions" not in ctx.cache:
        tokens = []
        for i in range(HOT_KEYS):
            resp = ctx.call(
                ctx.keys.CreateSession,
                key_service_pb2.CreateSessionRequest(
                    parent=PARENT, user_subject=f"user-{i}", scopes=["secrets.open"]
                ),
            )
            tokens.append(resp.token)
        ctx.cache["sessions"] = tokens
    reqs = [
        key_service_pb2.VerifySessionRequest(token=t).SerializeToString()
        for t in ctx.cache["sessions"]
    ]
    return Prepared("/zumik.secrets.v1.KeyService/VerifySession", reqs)


def _seal(size: int) -> Callable[[Ctx, int], Prepared]:
    def prepare(ctx: Ctx, calls: int) -> Prepared:
        claim = ctx.claim()
        stub = seal_service_pb2_grpc.SealServiceStub(ctx.channel)
        req = seal_service_pb2.SealRequest(
            parent=PARENT, display_name="bench", plaintext=os.urandom(size)
        )
        ctx.call(stub.Seal, req, claim)
        return Prepared(
            "/zumik.secrets.v1.SealService/Seal",
            [req.SerializeToString()],
            ((CLAIM_KEY, claim),),
        )

    return prepare


def _open(ctx: Ctx, calls: int) -> Prepared:
    claim = ctx.claim()
    stub = seal_service_pb2_grpc.SealServiceStub(ctx.channel)
    if "secrets" not in ctx.cache:
        names = []
        for _ in range(HOT_KEYS):
            resp = ctx.call(
                stub.Seal,
                seal_service_pb2.SealRequest(
                    parent=PARENT, display_name="bench", plaintext=os.urandom(1024)
                ),
                claim,
            )
            names.append(resp.secret.name)
        ctx.cache["secrets"] = names
    ctx.call(stub.Open, seal_service_pb2.OpenRequest(name=ctx.cache["secrets"][0]), claim)
    reqs = [seal_service_pb2.OpenRequest(name=n).SerializeToString() for n in ctx.cache["secrets"]]
    return Prepared("/zumik.secrets.v1.SealService/Open", reqs, ((CLAIM_KEY, claim),))


def _fingerprint(batch: int) -> Callable[[Ctx, int], Prepared]:
    def prepare(ctx: Ctx, calls: int) -> Prepared:
        claim = ctx.claim()
        stub = fingerprint_service_pb2_grpc.FingerprintServiceStub(ctx.channel)
        reqs = [
            fingerprint_service_pb2.FingerprintRequest(
                parent=PARENT,
                namespace="email",
                values=[f"user{j}-{i}@example.com".encode() for j in range(batch)],
            )
            for i in range(16)
        ]
        ctx.call(stub.Fingerprint, reqs[0], claim)
        return Prepared(
            "/zumik.secrets.v1.FingerprintService/Fingerprint",
            [r.SerializeToString() for r in reqs],
            ((CLAIM_KEY, claim),),
            items_per_call=batch,
        )

    return prepare


def _create_key(ctx: Ctx, calls: int) -> Prepared:
    """CreateApiKey as the control plane calls it (no claim): a state change with its audit."""
    req = key_service_pb2.CreateApiKeyRequest(
        parent=PARENT, display_name="bench-create", scopes=["secrets.open"]
    )
    ctx.call(ctx.keys.CreateApiKey, req)
    return Prepared("/zumik.secrets.v1.KeyService/CreateApiKey", [req.SerializeToString()])


def _audit_append(ctx: Ctx, calls: int) -> Prepared:
    stub = audit_service_pb2_grpc.AuditServiceStub(ctx.channel)
    req = audit_service_pb2.AppendEventRequest(
        parent=f"tenants/{TENANT}",
        action="billing.plan_changed",
        target=f"tenants/{TENANT}",
        outcome=audit_service_pb2.AUDIT_OUTCOME_SUCCESS,
        reason="PLAN_UPGRADED",
        attributes={"plan": "pro"},
    )
    ctx.call(stub.AppendEvent, req)  # as the billing service does: no claim, by policy
    return Prepared("/zumik.secrets.v1.AuditService/AppendEvent", [req.SerializeToString()])


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("empty", "Empty RPC (ceiling)", _empty),
    Scenario("verify_warm", "VerifyApiKey warm", _verify_warm),
    Scenario("verify_cold", "VerifyApiKey cold", _verify_cold),
    Scenario("verify_session", "VerifySession", _verify_session),
    Scenario("seal_64", "Seal 64 B", _seal(64)),
    Scenario("seal_1k", "Seal 1 KiB", _seal(1024)),
    Scenario("open_1k", "Open 1 KiB (+durable audit)", _open),
    Scenario("fp_1", "Fingerprint batch 1", _fingerprint(1)),
    Scenario("fp_100", "Fingerprint batch 100", _fingerprint(100), items_per_call=100),
    Scenario("audit_append", "Audit Append", _audit_append),
    Scenario("create_key", "CreateApiKey (+audit of the change)", _create_key),
)

BY_NAME = {s.name: s for s in SCENARIOS}
