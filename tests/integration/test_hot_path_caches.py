"""The per-process caches of the hot paths stay inside the revocation bound (issue 18).

Two in-process servers over one store, on each backend: what one server changes (a deleted or
updated secret, a revoked key, a purged project) stops being served from the other server's
caches (Open's sealed rows, VerifyApiKey's digest marks, verified claims) within the stated
bound; what a server changes itself is never served from its own caches afterwards. And every
call, the benchmarks' empty RPC included, goes through the one interceptor, which reads the
claim of each call even though it wraps each method once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from zumik.secrets.v1 import common_pb2, key_service_pb2, seal_service_pb2, tenant_service_pb2

from tests.fix_server import RunningServer, ServerFactory
from tests.integration.purge_support import claim_refused
from tests.integration.test_audit_service import find
from tests.integration.test_revocation_propagation import BOUND_SECONDS, _time_until_revoked
from zumik_secrets.cli.dev_pki import DevPki, issue_client_cert
from zumik_secrets.server.config import dev_policy_path
from zumik_secrets.server.grpc_server import BENCH_EMPTY_METHOD

pytestmark = pytest.mark.integration

T = "cachet"
SEAL_SCOPES = ("secrets.seal", "secrets.read", "secrets.admin")
OPEN_SCOPES = ("secrets.open", "secrets.read")
GATEWAY = "spiffe://zumik.local/svc/gateway"
STRANGER = "spiffe://zumik.local/svc/stranger"


def _seal(server: RunningServer, parent: str, plaintext: bytes) -> str:
    tenant, project = parent.split("/")[1], parent.split("/")[3]
    claim = server.mint_claim(tenant, project, SEAL_SCOPES)
    answer = server.stubs("console", claim=claim).seal.Seal(
        seal_service_pb2.SealRequest(parent=parent, plaintext=plaintext), timeout=5
    )
    return str(answer.secret.name)


def _admin(server: RunningServer, parent: str) -> Any:
    tenant, project = parent.split("/")[1], parent.split("/")[3]
    return server.stubs("console", claim=server.mint_claim(tenant, project, SEAL_SCOPES)).seal


def _opener(server: RunningServer, name: str) -> Callable[[], bytes]:
    tenant, project = name.split("/")[1], name.split("/")[3]
    stub = server.stubs("executor", claim=server.mint_claim(tenant, project, OPEN_SCOPES)).seal

    def open_() -> bytes:
        return bytes(stub.Open(seal_service_pb2.OpenRequest(name=name), timeout=5).plaintext)

    return open_


def _code(call: Callable[[], object]) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined, no-any-return]
    return None


def _time_until(
    call: Callable[[], object], code: grpc.StatusCode, change: Callable[[], object]
) -> float:
    started = time.monotonic()
    change()
    while time.monotonic() - started < 5:
        if _code(call) == code:
            return time.monotonic() - started
        time.sleep(0.01)
    pytest.fail(f"still served 5 s after the change (expected {code.name})")


def test_open_row_cache_stays_inside_the_bound_on_each_backend(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    first = zumik_server_factory(store_url)
    second = zumik_server_factory(store_url)
    assert second.runtime.sealed_secrets._rows is not None  # the cache is on by default
    parent = f"tenants/{T}/projects/rows"
    admin = _admin(first, parent)

    # Deleted on the other server: not opened here after the bound.
    delays = []
    for i in range(3):
        name = _seal(first, parent, f"value-{i}".encode())
        open_ = _opener(second, name)
        assert open_() == open_() == f"value-{i}".encode()  # cached on the second server
        delays.append(
            _time_until(
                open_,
                grpc.StatusCode.NOT_FOUND,
                lambda n=name: admin.DeleteSecret(
                    seal_service_pb2.DeleteSecretRequest(name=n), timeout=5
                ),
            )
        )
    print(
        f"\ndeleted secret refused on the other server after {[round(d * 1000) for d in delays]} ms"
    )
    assert max(delays) < BOUND_SECONDS

    # Updated on the other server: the new version within the bound.
    name = _seal(first, parent, b"old")
    open_ = _opener(second, name)
    assert open_() == b"old"
    admin.UpdateSecret(seal_service_pb2.UpdateSecretRequest(name=name, plaintext=b"new"), timeout=5)
    started = time.monotonic()
    while open_() != b"new":
        assert time.monotonic() - started < BOUND_SECONDS
        time.sleep(0.01)

    # Deleted or updated on this server: never served from this server's cache afterwards.
    name = _seal(first, parent, b"here")
    open_ = _opener(second, name)
    assert open_() == b"here"
    local = _admin(second, parent)
    local.UpdateSecret(
        seal_service_pb2.UpdateSecretRequest(name=name, plaintext=b"there"), timeout=5
    )
    assert open_() == b"there"
    local.DeleteSecret(seal_service_pb2.DeleteSecretRequest(name=name), timeout=5)
    assert _code(open_) == grpc.StatusCode.NOT_FOUND


def test_feed_drops_cached_rows_on_each_backend(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    """A delete, an update, a data-key change and a purge made on one server drop the other's
    cached rows through the change feed (the rows are kept an hour here, so only the feed can
    drop them within the bound)."""
    first = zumik_server_factory(store_url)
    second = zumik_server_factory(store_url)
    second.runtime.sealed_secrets.enable_row_cache(
        4096, second.runtime.watcher.is_fresh, ttl=3600.0
    )
    rows = second.runtime.sealed_secrets._rows
    assert rows is not None
    parent = f"tenants/{T}/projects/doomed"
    control = first.stubs("control-plane")

    def cached(name: str) -> tuple[str, str, str]:
        open_ = _opener(second, name)
        assert open_() == open_()
        key = (T, "doomed", name.rsplit("/", 1)[-1])
        assert rows.get(key) is not None
        return key

    def dropped_within(key: tuple[str, str, str], bound: float) -> None:
        started = time.monotonic()
        while rows.get(key) is not None:
            assert time.monotonic() - started < bound, "the feed did not drop the cached row"
            time.sleep(0.01)

    # Deleted on the first server: Open on the second refuses it within the feed bound.
    admin = _admin(first, parent)
    for i in range(3):
        name = _seal(first, parent, f"delete-me-{i}".encode())
        key = cached(name)
        delay = _time_until(
            _opener(second, name),
            grpc.StatusCode.NOT_FOUND,
            lambda n=name: admin.DeleteSecret(
                seal_service_pb2.DeleteSecretRequest(name=n), timeout=5
            ),
        )
        assert delay < BOUND_SECONDS
        assert rows.get(key) is None

    # Updated (a new ciphertext) on the first server: the new value within the bound.
    name = _seal(first, parent, b"old")
    key = cached(name)
    admin.UpdateSecret(seal_service_pb2.UpdateSecretRequest(name=name, plaintext=b"new"), timeout=5)
    dropped_within(key, BOUND_SECONDS)
    assert _opener(second, name)() == b"new"

    key = cached(_seal(first, parent, b"before-rotation"))
    control.seal.RotateDataKey(
        seal_service_pb2.RotateDataKeyRequest(
            parent=parent, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL
        ),
        timeout=10,
    )
    dropped_within(key, BOUND_SECONDS)

    name = _seal(first, parent, b"purge-me")
    key = cached(name)
    control.tenants.PurgeProject(
        tenant_service_pb2.PurgeProjectRequest(name=parent, confirm=parent), timeout=60
    )
    dropped_within(key, BOUND_SECONDS)
    claim_refused(_opener(second, name))  # the purged project's claim: CLAIM_REVOKED


def test_row_cache_is_bypassed_while_the_feed_is_not_read(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    """While the change feed is behind (``fresh`` False) Open reads the store on every call and
    the cached rows are dropped: a feed outage cannot stretch the bound to the rows' TTL."""
    first = zumik_server_factory(store_url)
    second = zumik_server_factory(store_url)
    feed_read = [True]
    second.runtime.sealed_secrets.enable_row_cache(4096, lambda: feed_read[0], ttl=3600.0)
    rows = second.runtime.sealed_secrets._rows
    assert rows is not None
    parent = f"tenants/{T}/projects/stale"
    name = _seal(first, parent, b"cached")
    open_ = _opener(second, name)
    assert open_() == b"cached"
    assert len(rows) == 1
    second.runtime.watcher.stop()  # the feed is not read any more: only the bypass helps
    feed_read[0] = False
    _admin(first, parent).DeleteSecret(seal_service_pb2.DeleteSecretRequest(name=name), timeout=5)
    assert _code(open_) == grpc.StatusCode.NOT_FOUND  # no cache while stale
    assert len(rows) == 0


def test_warm_verify_marks_stay_inside_the_bound_on_each_backend(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    first = zumik_server_factory(store_url)
    second = zumik_server_factory(store_url)
    control = first.stubs("control-plane").keys
    gateway = second.stubs("gateway").keys
    parent = f"tenants/{T}/projects/keys"
    delays = []
    for _ in range(3):
        key = control.CreateApiKey(
            key_service_pb2.CreateApiKeyRequest(parent=parent, scopes=["keys.read"]), timeout=5
        )

        def verify(raw: str) -> key_service_pb2.VerifyApiKeyResponse:
            return gateway.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key=raw), timeout=5)

        verify(key.raw_key)  # the first verification leaves the digest mark
        marks = second.runtime.api_keys._verified
        assert key.api_key.name.rsplit("/", 1)[-1] in marks.values()
        delays.append(
            _time_until_revoked(
                verify,
                key.raw_key,
                lambda n=key.api_key.name: control.RevokeApiKey(
                    key_service_pb2.RevokeApiKeyRequest(name=n)
                ),
            )
        )
    print(f"\nrevoked key refused on the other server after {[round(d * 1000) for d in delays]} ms")
    assert max(delays) < BOUND_SECONDS


def test_each_call_brings_its_own_claim_through_the_shared_wrapper(
    zumik_server: RunningServer,
) -> None:
    """The interceptor wraps each method once; the claim is still read from every call."""
    server = zumik_server
    control = server.stubs("control-plane").keys
    for tenant in ("cla", "clb"):
        control.CreateApiKey(
            key_service_pb2.CreateApiKeyRequest(
                parent=f"tenants/{tenant}/projects/p", scopes=["keys.read"]
            ),
            timeout=5,
        )
    parent_a = "tenants/cla/projects/p"
    for _ in range(2):
        for tenant, code in (("cla", None), ("clb", grpc.StatusCode.NOT_FOUND)):
            keys = server.stubs(
                "console", claim=server.mint_claim(tenant, "p", ("keys.read",))
            ).keys
            assert (
                _code(
                    lambda k=keys: k.ListApiKeys(
                        key_service_pb2.ListApiKeysRequest(parent=parent_a)
                    )
                )
                == code
            )
        no_claim = server.stubs("console").keys
        assert (
            _code(
                lambda k=no_claim: k.ListApiKeys(
                    key_service_pb2.ListApiKeysRequest(parent=parent_a)
                )
            )
            == grpc.StatusCode.UNAUTHENTICATED
        )


def test_the_empty_rpc_goes_through_the_same_interceptor(
    zumik_server_factory: ServerFactory, dev_pki: DevPki, tmp_path: Path
) -> None:
    """The benchmarks' ceiling is authorized, audited and logged like every method: an
    identity the policy does not allow it is refused (and the refusal audited), an unknown
    certificate too, and the allowed one is answered; the same on every call."""
    bench_id = "spiffe://zumik.local/svc/benchcheck"
    policy = tmp_path / "policy.toml"
    policy.write_text(
        dev_policy_path().read_text()
        + f'\n[identities."{bench_id}"]\nallow = ["zumik.bench.v1.BenchService/Empty"]\n'
    )
    server = zumik_server_factory(ZUMIK_POLICY_FILE=str(policy), ZUMIK_BENCH_EMPTY_RPC="1")
    bench = issue_client_cert(dev_pki.directory, "benchcheck", bench_id, tmp_path / "certs")
    stranger = issue_client_cert(dev_pki.directory, "stranger", STRANGER, tmp_path / "certs")

    def empty(role: str | object) -> grpc.StatusCode | None:
        channel = server.channel(role)  # type: ignore[arg-type]
        call = channel.unary_unary(BENCH_EMPTY_METHOD)
        return _code(lambda: call(b"", timeout=5))

    for _ in range(2):  # the wrapper is built on the first call and reused
        assert empty(bench) is None
        assert empty("gateway") == grpc.StatusCode.PERMISSION_DENIED
        assert empty(stranger) == grpc.StatusCode.PERMISSION_DENIED
    for actor, reason in ((GATEWAY, "METHOD_NOT_ALLOWED"), (STRANGER, "UNKNOWN_IDENTITY")):
        events = find(server, "-", action="authz.deny", actor=actor)
        assert events, f"no authz.deny event for {actor}"
        assert {(e.attributes["method"], e.reason) for e in events} == {
            (BENCH_EMPTY_METHOD.lstrip("/"), reason)
        }


def test_a_server_behind_the_feed_reads_it_before_answering_from_memory(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    """A paused or starved process (its watcher thread has not read the feed for seconds)
    must not answer a revoked key VALID, accept its claim, or open a deleted secret from memory
    in the moment after it resumes (found by issue 18's adversary: a paused PostgreSQL worker
    answered VALID 2.5-4 s after the revocation)."""
    first = zumik_server_factory(store_url)
    second = zumik_server_factory(store_url)
    parent = f"tenants/{T}/projects/behind"
    key = first.stubs("control-plane").keys.CreateApiKey(
        key_service_pb2.CreateApiKeyRequest(parent=parent, scopes=["keys.read"]), timeout=5
    )
    gateway = second.stubs("gateway").keys
    verify = key_service_pb2.VerifyApiKeyRequest(key=key.raw_key)
    claim = gateway.VerifyApiKey(verify, timeout=5).claim
    assert gateway.VerifyApiKey(verify, timeout=5).result == common_pb2.VERIFY_RESULT_VALID
    keys = second.stubs("console", claim=claim).keys
    keys.ListApiKeys(key_service_pb2.ListApiKeysRequest(parent=parent), timeout=5)
    name = _seal(first, parent, b"behind the feed")
    open_ = _opener(second, name)
    assert open_() == b"behind the feed"
    # The second server's watcher stalls (as in a SIGSTOP), and last read the feed 10 s ago.
    watcher = second.runtime.watcher
    watcher.stop()

    def stalled() -> None:
        watcher.last_success = time.monotonic() - 10

    stalled()
    first.stubs("control-plane").keys.RevokeApiKey(
        key_service_pb2.RevokeApiKeyRequest(name=key.api_key.name), timeout=5
    )
    _admin(first, parent).DeleteSecret(seal_service_pb2.DeleteSecretRequest(name=name), timeout=5)
    assert gateway.VerifyApiKey(verify, timeout=5).result == common_pb2.VERIFY_RESULT_REVOKED
    stalled()  # each path reads the feed itself, not only the first call after the stall
    claim_refused(
        lambda: keys.ListApiKeys(key_service_pb2.ListApiKeysRequest(parent=parent), timeout=5)
    )
    stalled()
    with pytest.raises(grpc.RpcError) as err:
        open_()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
