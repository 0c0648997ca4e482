"""The client package over real mTLS against test servicers that count what reaches them.

A generic servicer answers every method of the contracts (and a test-only one) and records each
attempt, its claim metadata and its deadline, so these tests check on the server side what the
client sends: which methods are retried, which get a claim, what deadline travels, how calls
spread over two servers, and that every reason the server's own status builder can produce
comes back as its class (sync and aio).
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from zumik.secrets.v1 import options_pb2

import zumik_secrets
import zumik_secrets_client
from tests import fix_leaks
from tests.reason_scan import scan
from zumik_secrets.api.status import internal_status, to_status
from zumik_secrets.cli.dev_pki import DevPki
from zumik_secrets.core import errors as server_errors
from zumik_secrets_client import _retry, aio, errors

pytestmark = pytest.mark.integration

RAISE = "/test.Errors/Raise"
GET_SECRET = "/zumik.secrets.v1.SealService/GetSecret"
VERIFY_API_KEY = "/zumik.secrets.v1.KeyService/VerifyApiKey"
DESTRUCTIVE = {
    "/zumik.secrets.v1.TenantService/PurgeTenant",
    "/zumik.secrets.v1.TenantService/PurgeProject",
    "/zumik.secrets.v1.SealService/DestroyDataKeyVersion",
}

# Every server error class the server's status table maps, with a constructor for a reason.
SERVER_CLASSES: dict[str, Callable[[str], server_errors.ZumikError]] = {
    "InvalidArgument": lambda r: server_errors.InvalidArgument(
        "bad", reason=r, violations=[server_errors.FieldViolation("name", "is wrong")]
    ),
    "NotFound": lambda r: server_errors.NotFound("missing", reason=r, metadata={"k": "v"}),
    "AlreadyExists": lambda r: server_errors.AlreadyExists("exists", reason=r),
    "FailedPrecondition": lambda r: server_errors.FailedPrecondition("state", reason=r),
    "Unauthenticated": lambda r: server_errors.Unauthenticated("who", reason=r),
    "PermissionDenied": lambda r: server_errors.PermissionDenied("no", reason=r),
    "ResourceExhausted": lambda r: server_errors.ResourceExhausted(
        "slow down", reason=r, retry_after_seconds=2.5
    ),
    "Unavailable": lambda r: server_errors.Unavailable("down", reason=r),
    "Unimplemented": lambda r: server_errors.Unimplemented("later", reason=r),
    "Aborted": lambda r: server_errors.Aborted("again", reason=r),
}


@dataclass
class Recorder(grpc.GenericRpcHandler):
    """Answers every method; ``mode`` says how. Records attempts, claims and deadlines."""

    mode: str = "echo"  # echo | unavailable | slow
    calls: Counter[str] = field(default_factory=Counter)
    claims: list[tuple[str, list[str]]] = field(default_factory=list)
    remaining: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        def answer(context: grpc.ServicerContext) -> bytes:
            metadata = context.invocation_metadata()
            with self.lock:
                self.calls[method] += 1
                self.claims.append((method, [v for k, v in metadata if k == "zumik-claim"]))
                self.remaining[method] = context.time_remaining()
            wanted = dict(metadata)
            if method == RAISE:
                if wanted["x-class"] == "Internal":  # the server's one INTERNAL answer
                    context.abort_with_status(internal_status("corr-1234"))
                make = SERVER_CLASSES[wanted["x-class"]]
                status = to_status(make(wanted["x-reason"]))
                context.abort_with_status(status)
            if self.mode == "unavailable":
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            if self.mode == "slow":
                time.sleep(2.0)
            return b""

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return answer(context)

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            yield answer(context)

        if _is_streaming(method):
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)


def _is_streaming(method: str) -> bool:
    return method == "/zumik.secrets.v1.AuditService/ExportEvents"


def _contract_markers() -> dict[str, bool]:
    """Each contract method and its idempotency marker, read here independently of the client."""
    markers: dict[str, bool] = {}
    for file in _retry._file_descriptors():
        for service in file.services_by_name.values():
            for method in service.methods:
                policy = method.GetOptions().Extensions[options_pb2.method_policy]
                markers[f"/{service.full_name}/{method.name}"] = policy.idempotent
    return markers


@pytest.fixture
def start(dev_pki: DevPki) -> Iterator[Callable[..., tuple[str, Recorder]]]:
    servers: list[grpc.Server] = []

    def start_server(mode: str = "echo") -> tuple[str, Recorder]:
        recorder = Recorder(mode=mode)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[recorder])
        credentials = grpc.ssl_server_credentials(
            [(dev_pki.server.key.read_bytes(), dev_pki.server.cert.read_bytes())],
            root_certificates=dev_pki.ca_cert.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", recorder

    yield start_server
    for server in servers:
        server.stop(grace=None)


def _connect(dev_pki: DevPki, target: str, **kwargs: Any) -> grpc.Channel:
    pair = dev_pki.client("console")
    return zumik_secrets_client.connect(
        target,
        ca_file=dev_pki.ca_cert,
        cert_file=pair.cert,
        key_file=pair.key,
        server_name="localhost",
        **kwargs,
    )


def _aio_connect(dev_pki: DevPki, target: str, **kwargs: Any) -> grpc.aio.Channel:
    pair = dev_pki.client("console")
    return aio.connect(
        target,
        ca_file=dev_pki.ca_cert,
        cert_file=pair.cert,
        key_file=pair.key,
        server_name="localhost",
        **kwargs,
    )


# ---------------------------------------------------------------- errors: every reason


def _check(err: BaseException, reason: str, server_class: str) -> None:
    assert isinstance(err, errors.ZumikError), type(err)
    assert isinstance(err, grpc.RpcError)
    assert isinstance(err, errors.reason_class(reason)), (reason, type(err).__mro__)
    assert isinstance(err, getattr(errors, server_class)), (server_class, type(err).__mro__)
    assert err.reason == reason
    assert err.domain == errors.ERROR_DOMAIN
    assert err.code() == getattr(errors, server_class).status_code
    if server_class == "InvalidArgument":
        assert err.field_violations == (errors.FieldViolation("name", "is wrong"),)
    if server_class == "NotFound":
        assert err.metadata == {"k": "v"}
    if server_class == "ResourceExhausted":
        assert err.retry_after == 2.5
    elif server_class == "Unavailable":
        assert err.retry_after == 1.0  # every UNAVAILABLE carries a RetryInfo hint (issue 24)
    else:
        assert err.retry_after is None


def test_every_contract_reason_has_its_own_class() -> None:
    assert len(errors.REASONS) == len(set(errors.REASONS)) > 20
    names = set()
    for reason in errors.REASONS:
        cls = errors.reason_class(reason)  # KeyError: a reason without a class
        assert issubclass(cls, errors.ZumikError)
        assert getattr(errors, cls.__name__) is cls
        names.add(cls.__name__)
        if issubclass(cls, errors.ReasonError):
            assert reason == cls.REASON
    assert len(names) == len(errors.REASONS), "two reasons share a class"


def test_every_reason_from_the_servers_status_builder_maps_to_its_classes(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, recorder = start()
    with _connect(dev_pki, target) as channel:
        raise_ = channel.unary_unary(RAISE)
        for reason in errors.REASONS:
            for server_class in SERVER_CLASSES:
                metadata = (("x-reason", reason), ("x-class", server_class))
                with pytest.raises(grpc.RpcError) as info:
                    raise_(b"", metadata=metadata)
                _check(info.value, reason, server_class)
    assert recorder.calls[RAISE] == len(errors.REASONS) * len(SERVER_CLASSES)


def _server_error_classes() -> dict[str, type[server_errors.ZumikError]]:
    """Every ZumikError subclass defined in the service, by name."""
    for info in pkgutil.walk_packages(zumik_secrets.__path__, "zumik_secrets."):
        if ".cli" not in info.name:
            importlib.import_module(info.name)
    found: dict[str, type[server_errors.ZumikError]] = {}
    todo = [server_errors.ZumikError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def test_every_reason_the_server_code_sends_maps_to_its_classes(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    """The reasons come from reading the service's code (tests/reason_scan.py, issue 23), each
    with the error class it is raised with; the client must map every one to its reason class
    and to the status code that class gets on the wire."""
    scanned = scan(Path(zumik_secrets.__file__).parent)
    assert len(scanned.reasons) > 50
    assert not scanned.unresolved, scanned.unresolved
    missing = sorted(r for r in scanned.reasons if r not in errors.REASONS)
    assert not missing, f"reasons the server sends without a client class: {missing}"
    by_name = _server_error_classes()
    target, _ = start()
    checked = 0
    with _connect(dev_pki, target) as channel:
        raise_ = channel.unary_unary(RAISE)
        for reason, raised_as in sorted(scanned.classes.items()):
            for name in sorted(raised_as):
                if name == "ErrorInfo":  # built directly: the INTERNAL answer
                    assert reason == "INTERNAL"
                    with pytest.raises(errors.Internal) as internal:
                        raise_(b"", metadata=(("x-reason", reason), ("x-class", "Internal")))
                    assert internal.value.reason == "INTERNAL"
                    assert internal.value.metadata["correlation_id"] == "corr-1234"
                    checked += 1
                    continue
                # The wire status depends on the class only through its status code.
                base = next(
                    c.__name__ for c in by_name[name].__mro__ if c.__name__ in SERVER_CLASSES
                )
                metadata = (("x-reason", reason), ("x-class", base))
                with pytest.raises(grpc.RpcError) as info:
                    raise_(b"", metadata=metadata)
                _check(info.value, reason, base)
                checked += 1
    assert checked >= len(scanned.reasons)


def test_aio_maps_every_reason_like_the_sync_client(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, _ = start()

    async def run() -> None:
        async with _aio_connect(dev_pki, target) as channel:
            raise_ = channel.unary_unary(RAISE)
            for reason in errors.REASONS:
                for server_class in ("NotFound", "ResourceExhausted", "InvalidArgument"):
                    metadata = (("x-reason", reason), ("x-class", server_class))
                    with pytest.raises(grpc.RpcError) as info:
                        await raise_(b"", metadata=metadata)
                    _check(info.value, reason, server_class)

    asyncio.run(run())


def test_unknown_reason_and_no_rich_status_still_give_the_code_class(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, _ = start(mode="unavailable")
    with _connect(dev_pki, target) as channel:
        raise_ = channel.unary_unary(RAISE)
        with pytest.raises(errors.NotFound) as info:
            raise_(b"", metadata=(("x-reason", "FROM_A_NEWER_SERVER"), ("x-class", "NotFound")))
        assert type(info.value) is errors.NotFound
        assert info.value.reason == "FROM_A_NEWER_SERVER"
        with pytest.raises(errors.Unavailable) as plain:
            channel.unary_unary("/test.Plain/Call")(b"")
        assert plain.value.reason is None
        assert plain.value.details() == "try again"


# ---------------------------------------------------------------- retries, counted


def test_only_idempotent_non_destructive_methods_are_retried(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, recorder = start(mode="unavailable")
    markers = _contract_markers()
    assert set(markers) >= DESTRUCTIVE
    with _connect(dev_pki, target, claim="claim-for-retry-test") as channel:
        for method in markers:
            with pytest.raises(errors.Unavailable):
                if _is_streaming(method):
                    list(channel.unary_stream(method)(b""))
                else:
                    channel.unary_unary(method)(b"")
    attempts = _retry.RETRY_POLICY["maxAttempts"]
    for method, idempotent in markers.items():
        expected = attempts if idempotent and method not in DESTRUCTIVE else 1
        assert recorder.calls[method] == expected, (method, idempotent)
    for method in DESTRUCTIVE:
        assert recorder.calls[method] == 1, f"{method} was retried"
    # Whatever the contract says about DeleteSecret (issue 16), the client follows its marker.
    delete = "/zumik.secrets.v1.SealService/DeleteSecret"
    assert recorder.calls[delete] == (attempts if markers[delete] else 1)
    retried = sum(1 for m in markers if recorder.calls[m] > 1)
    assert retried == len(zumik_secrets_client.idempotent_methods()) > 10


def test_aio_retries_the_same_methods(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, recorder = start(mode="unavailable")
    methods = [GET_SECRET, *sorted(DESTRUCTIVE), "/zumik.secrets.v1.SealService/Seal"]

    async def run() -> None:
        async with _aio_connect(dev_pki, target) as channel:
            for method in methods:
                with pytest.raises(errors.Unavailable):
                    await channel.unary_unary(method)(b"")

    asyncio.run(run())
    assert recorder.calls[GET_SECRET] == _retry.RETRY_POLICY["maxAttempts"]
    for method in methods[1:]:
        assert recorder.calls[method] == 1, method


# ---------------------------------------------------------------- claims per call


def test_provider_is_asked_per_call_and_claimless_methods_get_none(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, recorder = start()
    issued = iter(f"claim-number-{i}" for i in range(100))
    with _connect(dev_pki, target, claim=lambda: next(issued)) as channel:
        get = channel.unary_unary(GET_SECRET)
        get(b"")
        get(b"")
        get(b"", metadata=(("zumik-claim", "the-callers-own"),))
        channel.unary_unary(VERIFY_API_KEY)(b"")
    assert recorder.claims == [
        (GET_SECRET, ["claim-number-0"]),
        (GET_SECRET, ["claim-number-1"]),
        (GET_SECRET, ["the-callers-own"]),  # one value: the provider is not asked
        (VERIFY_API_KEY, []),  # TENANT_BINDING_NONE: no claim sent
    ]


def test_a_failing_provider_raises_its_own_error_without_echoing_it(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, recorder = start()
    secret = "provider-secret-text-1234567890"
    fix_leaks.REGISTRY.add(secret, "test provider message")

    asked: Counter[str] = Counter()

    def broken() -> str:
        asked["broken"] += 1
        raise RuntimeError(secret)

    def down() -> str:
        asked["down"] += 1
        raise errors.Unavailable("verifier down", reason="STORAGE_UNAVAILABLE")

    def bad_value() -> str:
        return "not\na claim"

    with _connect(dev_pki, target, claim=broken) as channel:
        with pytest.raises(errors.ClaimProviderError) as info:
            channel.unary_unary(GET_SECRET)(b"")
        assert isinstance(info.value, errors.Unauthenticated)
        assert secret not in str(info.value) and secret not in repr(info.value)
        assert isinstance(info.value.__cause__, RuntimeError)
    with (
        _connect(dev_pki, target, claim=down) as channel,
        pytest.raises(errors.Unavailable, match="verifier down"),
    ):
        channel.unary_unary(GET_SECRET)(b"")
    with _connect(dev_pki, target, claim=bad_value) as channel:
        with pytest.raises(errors.ClaimProviderError) as info:
            channel.unary_unary(GET_SECRET)(b"")
        assert isinstance(info.value.__cause__, ValueError)
    assert recorder.calls[GET_SECRET] == 0, "a call went out without its claim"
    # grpc reports a failed plugin as UNAVAILABLE, so GetSecret (idempotent) is retried: a
    # provider that failed for good is not asked again, a transient failure is.
    assert asked["broken"] == 1
    assert asked["down"] == _retry.RETRY_POLICY["maxAttempts"]


def test_aio_accepts_sync_and_async_providers(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, recorder = start()

    async def async_provider() -> str:
        await asyncio.sleep(0)
        return "async-claim-value"

    async def run() -> None:
        for provider in (lambda: "sync-claim-value", async_provider, "static-claim-value"):
            async with _aio_connect(dev_pki, target, claim=provider) as channel:
                await channel.unary_unary(GET_SECRET)(b"")
                await channel.unary_unary(VERIFY_API_KEY)(b"")

    asyncio.run(run())
    assert [c for m, c in recorder.claims if m == GET_SECRET] == [
        ["sync-claim-value"],
        ["async-claim-value"],
        ["static-claim-value"],
    ]
    assert [c for m, c in recorder.claims if m == VERIFY_API_KEY] == [[], [], []]


# ---------------------------------------------------------------- deadlines, balancing


def test_per_method_deadlines_travel_to_the_server(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, recorder = start()
    verify_chain = "/zumik.secrets.v1.AuditService/VerifyChain"
    export = "/zumik.secrets.v1.AuditService/ExportEvents"
    with _connect(dev_pki, target, deadlines={GET_SECRET: 2.0}) as channel:
        channel.unary_unary(GET_SECRET)(b"")
        channel.unary_unary(verify_chain)(b"")
        list(channel.unary_stream(export)(b""))
        channel.unary_unary("/zumik.secrets.v1.SealService/Seal")(b"", timeout=1.0)
    # grpc-timeout is rounded up on the wire (300 s travels as 301 S): allow 1 s above.
    assert 1.0 < recorder.remaining[GET_SECRET] <= 2.0 + 1
    assert 5.0 + 1 < recorder.remaining[verify_chain] <= 60.0 + 1
    assert 60.0 + 1 < recorder.remaining[export] <= 300.0 + 1
    assert 0 < recorder.remaining["/zumik.secrets.v1.SealService/Seal"] <= 1.0 + 1


def test_the_service_config_deadline_bounds_a_longer_call_timeout(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]]
) -> None:
    target, _ = start(mode="slow")
    with _connect(dev_pki, target, deadlines={GET_SECRET: 0.5}) as channel:
        began = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded):
            channel.unary_unary(GET_SECRET)(b"", timeout=30.0)
        assert time.monotonic() - began < 1.9  # the server sleeps 2 s


@pytest.mark.parametrize(("policy", "both"), [("round_robin", True), ("pick_first", False)])
def test_load_balancing_policy_spreads_calls_or_not(
    dev_pki: DevPki, start: Callable[..., tuple[str, Recorder]], policy: str, both: bool
) -> None:
    (first, rec_a), (second, rec_b) = start(), start()
    target = f"ipv4:{first},{second}"
    with _connect(
        dev_pki,
        target,
        load_balancing=policy,
        keepalive=zumik_secrets_client.Keepalive(time=30.0, timeout=5.0),
        options=[("grpc.max_receive_message_length", 1 << 20)],
    ) as channel:
        for _ in range(20):
            channel.unary_unary(GET_SECRET)(b"", wait_for_ready=True)
    counts = (rec_a.calls[GET_SECRET], rec_b.calls[GET_SECRET])
    assert sum(counts) == 20
    assert (min(counts) > 0) is both, counts


def test_channel_options_are_checked() -> None:
    kwargs: dict[str, Any] = {"ca_file": "x", "cert_file": "x", "key_file": "x"}
    with pytest.raises(ValueError, match="load_balancing"):
        zumik_secrets_client.connect("localhost:1", load_balancing="random", **kwargs)
    with pytest.raises(ValueError, match="deadline"):
        zumik_secrets_client.connect("localhost:1", deadlines={GET_SECRET: 0}, **kwargs)
    with pytest.raises(ValueError, match="not a full gRPC method name"):
        zumik_secrets_client.connect("localhost:1", deadlines={"GetSecret": 1.0}, **kwargs)
    with pytest.raises(ValueError) as info:
        zumik_secrets_client.connect("localhost:1", claim="bad\nclaim-secret-value", **kwargs)
    assert "claim-secret-value" not in str(info.value)
    with pytest.raises(ValueError, match="keepalive"):
        zumik_secrets_client.Keepalive(time=0)
