"""Fuzz every RPC of a running server with requests generated from its descriptors.

Requests are sent as an identity the policy allows (control-plane where it may, else another
allowed one) with a valid claim carrying every scope, so they get past authorization and reach
the servicers. Every answer must be a success or a non-INTERNAL status whose ErrorInfo reason
the contract documents for that method (tests/contract_docs.py); afterwards the server
must still be SERVING, its SQLite file must pass ``PRAGMA integrity_check`` and
``foreign_key_check``, and the fuzzed tenant's audit chain must verify (when AuditService is
implemented). Example counts are in the terminal summary ("hardening suite: cases run").

Bounded in CI (profile ``ci``: 25 examples per RPC); ``make fuzz`` runs profile ``long``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st

from tests.contract_docs import documented_reasons
from tests.fix_server import RunningServer
from tests.grpc_errors import error_info
from tests.security.conftest import dev_policy, role_of
from tests.security.report import count_cases
from tests.security.rpcs import Rpc, all_rpcs, by_name
from tests.security.strategies import fuzz_settings, request_strategy

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

TENANT, PROJECT = "fuzz", "proj"
POLICY = dev_policy()
ALL_SCOPES = tuple(sorted({r.guard.scope for r in all_rpcs() if r.guard.scope}))


def fuzz_role(rpc: Rpc) -> str:
    allowed = [i for i in POLICY.identities if POLICY.decide(i, rpc.full_method).allowed]
    if not allowed:
        pytest.skip(f"no identity of the dev policy may call {rpc.name}")
    control = [i for i in allowed if i.endswith("/control-plane")]
    return role_of((control or allowed)[0])


class ClaimedChannel:
    """A channel as ``role`` with a claim re-minted well before it expires (long profiles)."""

    def __init__(self, server: RunningServer, role: str) -> None:
        self._server, self._role = server, role
        self._lock = threading.Lock()
        self._minted = 0.0
        self._channel: grpc.Channel | None = None

    def get(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None or time.monotonic() - self._minted > 120:
                claim = self._server.mint_claim(TENANT, PROJECT, ALL_SCOPES)
                self._channel = self._server.channel(self._role, claim=claim)
                self._minted = time.monotonic()
            return self._channel


def answer_problem(
    call: Callable[[], Any], codes: Counter[str] | None = None, method: str | None = None
) -> str | None:
    """None if the call succeeded or failed with a non-INTERNAL status, else what went wrong.

    With ``method`` (``Service.Method``), an error's ErrorInfo reason must also be one the
    contract documents for that method (its comment's ``Errors:`` part or the errors of every
    call in common.proto).
    """
    try:
        call()
        if codes is not None:
            codes["OK"] += 1
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        if codes is not None:
            codes[code.name] += 1
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            return f"{code}: {err.details()}"  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "DEADLINE_EXCEEDED: the server hung on this input"
        if method is not None and rpc_status.from_call(err) is not None:  # type: ignore[arg-type]
            reason = error_info(err).reason
            if reason not in documented_reasons(method):
                return f"{method} answered {code.name} {reason}, which its comment does not list"
    return None


def check_server_intact(server: RunningServer) -> None:
    """Health SERVING, storage integrity ok, the fuzzed tenant's audit chain verifies."""
    health = health_pb2_grpc.HealthStub(server.channel("console"))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    url = server.runtime.config.database_url
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    verify = by_name("AuditService.VerifyChain")
    for parent in (f"tenants/{TENANT}", "tenants/-"):
        try:
            answer = verify.call(
                server.channel("auditor"), verify.guard.input_type(parent=parent), timeout=30
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                return
            raise
        assert answer.ok, f"audit chain of {parent} broken: {answer}"  # type: ignore[union-attr]


@pytest.mark.parametrize("rpc", all_rpcs(), ids=lambda r: r.name)
def test_fuzzed_requests_never_break_the_server(
    rpc: Rpc, module_server: RunningServer, request: pytest.FixtureRequest
) -> None:
    channel = ClaimedChannel(module_server, fuzz_role(rpc))
    examples = [0]
    codes: Counter[str] = Counter()
    problems: list[str] = []

    @fuzz_settings()
    @given(message=request_strategy(rpc, TENANT, PROJECT))
    def run(message: Message) -> None:
        examples[0] += 1
        problem = answer_problem(
            lambda: rpc.call(channel.get(), message, timeout=15), codes, rpc.name
        )
        if problem:
            problems.append(problem)
        assert problem is None, problem

    try:
        run()
    finally:
        count_cases(request, "fuzz examples (server)", rpc.guard.service, examples[0])
        for code, n in codes.items():
            count_cases(request, "fuzz answers by code", code, n)
    check_server_intact(module_server)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def undecodable_bodies(rpc: Rpc) -> dict[str, bytes]:
    """Request bodies the server's deserializer must refuse (one per defect)."""
    valid = rpc.request(TENANT, PROJECT).SerializeToString() if rpc.shape else b""
    bodies = {
        "garbage": b"\xff\xff\xff\xff\x0f",
        "truncated length": b"\x0a\x40tenants/",
        "wrong wire type": bytes([(1 << 3) | 5]) + b"\x00\x00",
    }
    for fd in rpc.guard.input_type.DESCRIPTOR.fields:
        if fd.type == fd.TYPE_STRING:
            payload = b"tenants/\xff\xfe\xc0\xaf"
            tag = _varint((fd.number << 3) | 2)
            bodies[f"invalid UTF-8 in {fd.name}"] = valid + tag + _varint(len(payload)) + payload
    return bodies


def test_undecodable_request_bodies_are_invalid_argument(
    module_server: RunningServer, request: pytest.FixtureRequest
) -> None:
    problems = []
    cases = 0
    for rpc in all_rpcs():
        channel = ClaimedChannel(module_server, fuzz_role(rpc)).get()
        for label, body in undecodable_bodies(rpc).items():
            cases += 1
            problem = answer_problem(
                lambda rpc=rpc, body=body, ch=channel: rpc.call(ch, body, timeout=10)
            )
            if problem:
                problems.append(f"{rpc.name} {label}: {problem}")
    count_cases(request, "undecodable bodies", "all", cases)
    check_server_intact(module_server)
    assert not problems, f"{len(problems)} of {cases}:\n" + "\n".join(problems[:20])


@fuzz_settings()
@given(body=st.binary(max_size=512))
def test_random_bytes_as_a_request_body(module_server: RunningServer, body: bytes) -> None:
    """Random bodies: a success or a clean refusal, never INTERNAL or a hang."""
    rpc = by_name("TenantService.GetTenantSettings")
    channel = module_server.channel("control-plane")
    problem = answer_problem(lambda: rpc.call(channel, body, timeout=10))
    assert problem is None, problem
