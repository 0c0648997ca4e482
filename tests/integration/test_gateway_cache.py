"""The gateway's caching verifier against real servers over mTLS, on both backends.

``CachingVerifier`` answers repeated verifications from memory and follows
``KeyService.WatchRevocations``. What must hold: a revoked key or session, a purged project or
tenant, stops verifying through the cache within the revocation bound (the change made on a
second server over the same database); while the stream is down or silent nothing is answered
from memory; after a restart the server replays what the subscriber missed or tells it to
resync; only verifying identities, without a claim, may subscribe.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from zumik.secrets.v1 import common_pb2, key_service_pb2, tenant_service_pb2

import zumik_secrets_client
from tests import fix_leaks
from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from tests.integration.test_revocation_propagation import BOUND_SECONDS
from zumik_secrets_client import CachingVerifier

pytestmark = pytest.mark.integration

TENANT = "tenant-a"
PARENT = f"tenants/{TENANT}/projects/proj"
# The key-revocation bound as the suites test it under load (1.5 s; the 1 s p99 target is
# measured by `python -m bench.gateway_cache`).
BOUND = BOUND_SECONDS
VALID = common_pb2.VERIFY_RESULT_VALID


def _verifier(server: RunningServer, **kwargs: object) -> CachingVerifier:
    verifier = CachingVerifier(server.channel("gateway"), **kwargs)  # type: ignore[arg-type]
    assert verifier.wait_synced(10), f"feed not synced: {verifier.last_error!r}"
    return verifier


@pytest.fixture
def pair(
    zumik_server_factory: ServerFactory, store_url: str
) -> Iterator[tuple[RunningServer, RunningServer, CachingVerifier]]:
    """Server A (the gateway's), server B (where changes are made), a verifier on A."""
    first = zumik_server_factory(store_url)
    second = zumik_server_factory(store_url)
    verifier = _verifier(first)
    yield first, second, verifier
    verifier.close()


def _new_key(server: RunningServer, parent: str = PARENT) -> key_service_pb2.CreateApiKeyResponse:
    return server.stubs("control-plane").keys.CreateApiKey(  # type: ignore[no-any-return]
        key_service_pb2.CreateApiKeyRequest(parent=parent, scopes=["keys.read"]), timeout=5
    )


def _cached(verifier: CachingVerifier, verify: Callable[[], object]) -> None:
    """Verify twice; the second answer must come from memory."""
    first = verify()
    assert first.result == VALID  # type: ignore[attr-defined]
    hits = verifier.stats().hits
    assert verify() is first, "the second verification was not answered from memory"
    assert verifier.stats().hits == hits + 1


def _time_until_invalid(verify: Callable[[], object], change: Callable[[], object]) -> float:
    change_started = time.monotonic()
    change()
    while time.monotonic() - change_started < 5:
        if verify().result != VALID:  # type: ignore[attr-defined]
            return time.monotonic() - change_started
        time.sleep(0.002)
    pytest.fail("still VALID through the cache 5 s after the change")


def test_revoked_key_and_session_stop_verifying_through_the_cache(
    pair: tuple[RunningServer, RunningServer, CachingVerifier],
) -> None:
    _first, second, verifier = pair
    control = second.stubs("control-plane").keys
    delays = []
    for _ in range(3):
        key = _new_key(second)
        verify = lambda raw=key.raw_key: verifier.verify_api_key(raw)  # noqa: E731
        _cached(verifier, verify)
        delays.append(
            _time_until_invalid(
                verify,
                lambda n=key.api_key.name: control.RevokeApiKey(
                    key_service_pb2.RevokeApiKeyRequest(name=n), timeout=5
                ),
            )
        )
        assert verify().result == common_pb2.VERIFY_RESULT_REVOKED
        session = control.CreateSession(
            key_service_pb2.CreateSessionRequest(
                parent=PARENT, user_subject="u", scopes=["keys.read"]
            ),
            timeout=5,
        )
        verify_session = lambda t=session.token: verifier.verify_session(t)  # noqa: E731
        _cached(verifier, verify_session)
        delays.append(
            _time_until_invalid(
                verify_session,
                lambda n=session.session.name: control.RevokeSession(
                    key_service_pb2.RevokeSessionRequest(name=n), timeout=5
                ),
            )
        )
    print(f"\nrevocation seen through the cache after {[round(d * 1000) for d in delays]} ms")
    assert max(delays) < BOUND


def test_other_credentials_stay_cached_after_a_revocation(
    pair: tuple[RunningServer, RunningServer, CachingVerifier],
) -> None:
    _first, second, verifier = pair
    kept, revoked = _new_key(second), _new_key(second)
    _cached(verifier, lambda: verifier.verify_api_key(kept.raw_key))
    _cached(verifier, lambda: verifier.verify_api_key(revoked.raw_key))
    _time_until_invalid(
        lambda: verifier.verify_api_key(revoked.raw_key),
        lambda: second.stubs("control-plane").keys.RevokeApiKey(
            key_service_pb2.RevokeApiKeyRequest(name=revoked.api_key.name), timeout=5
        ),
    )
    hits = verifier.stats().hits
    assert verifier.verify_api_key(kept.raw_key).result == VALID
    assert verifier.stats().hits == hits + 1


def test_purged_project_then_tenant_stop_verifying_through_the_cache(
    pair: tuple[RunningServer, RunningServer, CachingVerifier],
) -> None:
    _first, second, verifier = pair
    tenants = second.stubs("control-plane").tenants
    gone = _new_key(second, f"tenants/{TENANT}/projects/gone")
    other = _new_key(second, f"tenants/{TENANT}/projects/stay")
    _cached(verifier, lambda: verifier.verify_api_key(gone.raw_key))
    _cached(verifier, lambda: verifier.verify_api_key(other.raw_key))
    name = f"tenants/{TENANT}/projects/gone"
    _time_until_invalid(
        lambda: verifier.verify_api_key(gone.raw_key),
        lambda: tenants.PurgeProject(
            tenant_service_pb2.PurgeProjectRequest(name=name, confirm=name), timeout=30
        ),
    )
    hits = verifier.stats().hits
    assert verifier.verify_api_key(other.raw_key).result == VALID
    assert verifier.stats().hits == hits + 1, "a purge of one project dropped another's answers"
    name = f"tenants/{TENANT}"
    _time_until_invalid(
        lambda: verifier.verify_api_key(other.raw_key),
        lambda: tenants.PurgeTenant(
            tenant_service_pb2.PurgeTenantRequest(name=name, confirm=name), timeout=30
        ),
    )


def test_stream_loss_fails_closed_until_resynchronised(
    zumik_server_factory: ServerFactory, store_url: str
) -> None:
    first = zumik_server_factory(store_url)
    port = first.server.port
    second = zumik_server_factory(store_url)
    key = _new_key(second)
    with _verifier(first, timeout=2.0) as verifier:
        _cached(verifier, lambda: verifier.verify_api_key(key.raw_key))
        first.server.drain(grace=0.5)
        deadline = time.monotonic() + 5
        while verifier.cache.serving() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not verifier.cache.serving(), "still answering from memory without a stream"
        # Down: no answer from memory (the real call fails; the cached VALID is not used).
        with pytest.raises(grpc.RpcError):
            verifier.verify_api_key(key.raw_key)
        # Revoked while the gateway's server is down; it restarts after the change.
        second.stubs("control-plane").keys.RevokeApiKey(
            key_service_pb2.RevokeApiKeyRequest(name=key.api_key.name), timeout=5
        )
        zumik_server_factory(store_url, ZUMIK_LISTEN=f"127.0.0.1:{port}")
        assert verifier.wait_synced(15), f"not resynced: {verifier.last_error!r}"
        assert verifier.stats().resyncs >= 2, "the restarted server must say resync"
        assert verifier.verify_api_key(key.raw_key).result == common_pb2.VERIFY_RESULT_REVOKED


def test_silent_stream_fails_closed(zumik_server: RunningServer) -> None:
    key = _new_key(zumik_server)
    feed = zumik_server.runtime.revocation_feed
    with _verifier(zumik_server) as verifier:
        _cached(verifier, lambda: verifier.verify_api_key(key.raw_key))
        # Simulate a server whose watcher cannot read the change feed.
        real_read = feed._last_read
        feed._last_read = lambda: 0.0
        try:
            deadline = time.monotonic() + verifier.cache.stall_after + 3
            while verifier.cache.serving() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not verifier.cache.serving(), "heartbeats stopped but the cache still serves"
            hits = verifier.stats().hits
            assert verifier.verify_api_key(key.raw_key).result == VALID
            assert verifier.stats().hits == hits, "answered from memory on a silent stream"
        finally:
            feed._last_read = real_read
        assert verifier.wait_synced(10)
        deadline = time.monotonic() + 5
        while not verifier.cache.serving() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert verifier.cache.serving()


def test_a_paused_server_cannot_stretch_a_revocation_past_its_stated_bound(
    zumik_server: RunningServer,
) -> None:
    """Issue 18 adversary F2: the verifier's server goes silent (a pause: no heartbeat, no
    event) and the key is revoked; the verifier kept answering VALID from memory for up to
    ``stall_after`` = three heartbeat intervals (3 s) after the revocation, twice the
    ``propagation_bound`` (1.5 s) the server states. By default the last answer from memory now
    comes within that bound."""
    key = _new_key(zumik_server)
    feed = zumik_server.runtime.revocation_feed
    with _verifier(zumik_server) as verifier:
        assert verifier.cache.stall_after <= feed.propagation_bound
        _cached(verifier, lambda: verifier.verify_api_key(key.raw_key))
        # Wait for a heartbeat, then pause right after it (the worst moment): nothing reaches
        # the stream any more, neither heartbeats nor the revocation's event.
        previous = verifier.cache.silent_for()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            silent = verifier.cache.silent_for()
            if silent < previous:
                break  # a message just arrived
            previous = silent
            time.sleep(0.002)
        real_fresh, real_subscribers = feed.fresh, feed._subscribers
        feed.fresh = lambda: False  # type: ignore[method-assign]
        with feed._lock:
            feed._subscribers = set()
        try:
            zumik_server.stubs("control-plane").keys.RevokeApiKey(
                key_service_pb2.RevokeApiKeyRequest(name=key.api_key.name), timeout=5
            )
            revoked = time.monotonic()
            last_from_memory = 0.0
            while time.monotonic() - revoked < 4:
                hits = verifier.stats().hits
                answer = verifier.verify_api_key(key.raw_key)
                if verifier.stats().hits > hits:
                    assert answer.result == VALID
                    last_from_memory = time.monotonic() - revoked
                elif answer.result != VALID:
                    break
                time.sleep(0.01)
            assert answer.result == common_pb2.VERIFY_RESULT_REVOKED
            assert last_from_memory <= feed.propagation_bound, (
                f"answered VALID from memory {last_from_memory:.2f} s after the revocation"
                f" (bound {feed.propagation_bound} s)"
            )
        finally:
            feed.fresh = real_fresh  # type: ignore[method-assign]
            with feed._lock:
                feed._subscribers = real_subscribers | feed._subscribers


def test_the_verifier_serves_from_memory_again_after_a_stall_longer_than_the_reconnect(
    zumik_server: RunningServer,
) -> None:
    """Adversary finding (issue client2): once its server's stream stayed silent past the
    reconnect threshold (``max(stall_after, 3 H)``, 3 s), the verifier never answered from
    memory again for 15-30 s: the watchdog cancelled the stream, but turning the cancelled
    call into the client's typed error waited for grpc's debug string, which a cancelled call
    gets only when the transport gives up; the follower stayed blocked and the watchdog cut
    nothing every 0.3 s. On the channel a gateway really uses (``connect()``), it must fail
    closed during the stall and serve from memory again within seconds after."""
    key = _new_key(zumik_server)
    feed = zumik_server.runtime.revocation_feed
    pair = zumik_server.pki.client("gateway")
    channel = fix_leaks.capture(
        zumik_secrets_client.connect(
            zumik_server.target,
            ca_file=zumik_server.pki.ca_cert,
            cert_file=pair.cert,
            key_file=pair.key,
        )
    )
    verifier = CachingVerifier(channel)
    try:
        assert verifier.wait_synced(10), f"feed not synced: {verifier.last_error!r}"
        _cached(verifier, lambda: verifier.verify_api_key(key.raw_key))
        reconnect_after = max(verifier.cache.stall_after, 3 * feed.heartbeat_interval)
        # The stall: the stream stays open and says nothing (no heartbeat, no synced on a
        # new stream), for longer than the silence after which the verifier cuts it.
        real_fresh = feed.fresh
        feed.fresh = lambda: False  # type: ignore[method-assign]
        stalled = time.monotonic()
        try:
            while time.monotonic() - stalled < reconnect_after + 1.5:
                hits = verifier.stats().hits
                assert verifier.verify_api_key(key.raw_key).result == VALID
                if time.monotonic() - stalled > verifier.cache.stall_after + 0.1:
                    assert not verifier.cache.serving(), "serving from memory on a silent stream"
                    assert verifier.stats().hits == hits, "answered from memory while silent"
                time.sleep(0.05)
        finally:
            feed.fresh = real_fresh  # type: ignore[method-assign]
        resumed = time.monotonic()
        while not verifier.cache.serving() and time.monotonic() - resumed < 5:
            time.sleep(0.02)
        assert verifier.cache.serving(), (
            f"not serving from memory 5 s after the stall ended: {verifier.last_error!r}"
        )
        _cached(verifier, lambda: verifier.verify_api_key(key.raw_key))
    finally:
        verifier.close()
        channel.close()


def _first_messages(
    stub: object, resume_after: int, count: int
) -> list[key_service_pb2.WatchRevocationsResponse]:
    call = stub.WatchRevocations(  # type: ignore[attr-defined]
        key_service_pb2.WatchRevocationsRequest(resume_after=resume_after), timeout=10
    )
    out = []
    try:
        for message in call:
            out.append(message)
            if len(out) == count:
                break
    finally:
        call.cancel()
    return out


def test_resume_replays_or_says_resync(zumik_server: RunningServer) -> None:
    keys = zumik_server.stubs("gateway").keys
    # A change first, so the feed position is past 0 (resume_after 0 means "from scratch").
    old = _new_key(zumik_server)
    zumik_server.stubs("control-plane").keys.RevokeApiKey(
        key_service_pb2.RevokeApiKeyRequest(name=old.api_key.name), timeout=5
    )
    [fresh] = _first_messages(keys, 0, 1)
    assert fresh.WhichOneof("event") == "synced" and fresh.synced.resync
    assert fresh.synced.heartbeat_interval.ToTimedelta().total_seconds() > 0
    position = fresh.position
    key = _new_key(zumik_server)
    zumik_server.stubs("control-plane").keys.RevokeApiKey(
        key_service_pb2.RevokeApiKeyRequest(name=key.api_key.name), timeout=5
    )
    replayed, synced = _first_messages(keys, position, 2)
    assert replayed.WhichOneof("event") == "credential"
    assert replayed.credential.credential_id == key.api_key.name.rsplit("/", 1)[-1]
    assert replayed.credential.credential_type == key_service_pb2.CREDENTIAL_TYPE_API_KEY
    assert replayed.credential.HasField("valid_until")
    assert replayed.position > position
    assert synced.WhichOneof("event") == "synced" and not synced.synced.resync
    # Older than what the server remembers (before its start): drop everything.
    if zumik_server.runtime.revocation_feed.floor:
        [old] = _first_messages(keys, zumik_server.runtime.revocation_feed.floor - 1, 1)
        assert old.synced.resync
    # Caught up: a heartbeat follows within its interval.
    synced_now, beat = _first_messages(keys, replayed.position, 2)
    assert not synced_now.synced.resync
    assert beat.WhichOneof("event") == "heartbeat"
    with pytest.raises(grpc.RpcError) as err:
        _first_messages(keys, -1, 1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error_info(err.value).reason == "INVALID_RANGE"
    # Cancelled streams give back their subscription, stream worker and per-peer slot.
    deadline = time.monotonic() + 5
    feed, limits = zumik_server.runtime.revocation_feed, zumik_server.server.limits
    gateway = "spiffe://zumik.local/svc/gateway"
    while (feed.subscribers or limits.streams_held(gateway)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert feed.subscribers == 0 and limits.streams_held(gateway) == 0


def revoke_new_key(server: RunningServer) -> str:
    """Create and revoke a key on ``server``; its id (the feed's credential_id)."""
    key = _new_key(server)
    server.stubs("control-plane").keys.RevokeApiKey(
        key_service_pb2.RevokeApiKeyRequest(name=key.api_key.name), timeout=5
    )
    return key.api_key.name.rsplit("/", 1)[-1]


def resume_feed(
    server: RunningServer, resume_after: int = 0, tag: bytes = b""
) -> tuple[key_service_pb2.WatchRevocationsResponse, list[str]]:
    """Subscribe on ``server``: the ``synced`` message and the credential ids replayed."""
    call = server.stubs("gateway").keys.WatchRevocations(
        key_service_pb2.WatchRevocationsRequest(resume_after=resume_after, resume_tag=tag),
        timeout=10,
    )
    replayed: list[str] = []
    try:
        for message in call:
            if message.HasField("synced"):
                return message, replayed
            assert message.HasField("credential"), message
            replayed.append(message.credential.credential_id)
    finally:
        call.cancel()
    raise AssertionError("the stream ended before synced")


@contextlib.contextmanager
def copy_of_database(url: str, tmp_path: Path) -> Iterator[str]:
    """A copy of the (idle) database at ``url``: a backup to restore elsewhere."""
    if url.startswith("sqlite:///"):
        copy = tmp_path / "restored" / "zumik.db"
        copy.parent.mkdir()
        with (
            contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as src,
            contextlib.closing(sqlite3.connect(copy)) as dst,
        ):
            src.backup(dst)
        yield f"sqlite:///{copy}"
        return
    import psycopg

    parts = urlsplit(url)
    source, name = parts.path.lstrip("/"), f"zumik_restored_{uuid.uuid4().hex[:12]}"
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_resume_tag_tells_a_restored_database_from_the_history_followed(
    zumik_server_factory: ServerFactory, store_url: str, tmp_path: Path
) -> None:
    """Server C runs on a backup of server A's database; the gateway follows A past the
    backup's head; on C a key is revoked (at a position the gateway already passed on A) and
    more changes follow. Resuming on C with A's position and tag must say resync: the
    revocation at the earlier position is never replayed. With C's own tag, or from a position
    of the shared history, C resumes without resync and replays exactly what was missed."""
    first = zumik_server_factory(store_url)
    shared = revoke_new_key(first)
    first.server.drain(grace=0.5)
    with copy_of_database(store_url, tmp_path) as restored_url:
        a = zumik_server_factory(store_url)
        c = zumik_server_factory(restored_url)
        try:
            _diverge_and_resume(a, c, shared)
        finally:
            c.server.drain(grace=0.5)  # before its database is dropped


def _diverge_and_resume(a: RunningServer, c: RunningServer, shared: str) -> None:
    """The body of the test above (``c`` on a copy of ``a``'s database)."""
    base, _ = resume_feed(a)
    base_c, _ = resume_feed(c)
    # The shared history: the same position and tag on both.
    assert (base.position, base.position_tag) == (base_c.position, base_c.position_tag)
    for _ in range(3):
        revoke_new_key(a)
    head_a, _ = resume_feed(a)
    position, tag = head_a.position, head_a.position_tag
    # A correct tag: no resync, exactly the events missed since.
    missed = [revoke_new_key(a) for _ in range(2)]
    synced, replayed = resume_feed(a, position, tag)
    assert not synced.synced.resync and replayed == missed
    # The restored database records its own history at the positions passed on A.
    revoked_on_c = revoke_new_key(c)
    while resume_feed(c)[0].position < position + 1:
        revoke_new_key(c)
    synced, replayed = resume_feed(c, position, tag)
    assert synced.synced.resync, "a position of another history resumed without resync"
    assert replayed == [] and revoked_on_c not in replayed
    assert len(tag) == 16 and len(synced.position_tag) == 16
    # C's own tag at that position resumes there (same history).
    own, _ = resume_feed(c)
    synced_own, replayed_own = resume_feed(c, own.position, own.position_tag)
    assert not synced_own.synced.resync and replayed_own == []
    # A position of the shared history, with its tag, resumes on the copy too: everything
    # recorded on C since the backup is replayed.
    synced, replayed = resume_feed(c, base.position, base.position_tag)
    assert not synced.synced.resync and revoked_on_c == replayed[0]
    assert shared not in replayed
    # A client of an earlier release (no tag): position only, as before this contract.
    assert not resume_feed(c, position)[0].synced.resync


def test_resume_tag_from_another_database_says_resync(
    zumik_server_factory: ServerFactory, store_url: str, tmp_path: Path
) -> None:
    """A position and tag issued by a server on another database (for the PostgreSQL run: a
    PostgreSQL server's, sent to a SQLite server) never resume without resync."""
    here = zumik_server_factory(store_url)
    elsewhere = zumik_server_factory(f"sqlite:///{tmp_path}/elsewhere/zumik.db")
    revoke_new_key(here)
    head, _ = resume_feed(here)
    while resume_feed(elsewhere)[0].position < head.position + 1:
        revoke_new_key(elsewhere)
    synced, replayed = resume_feed(elsewhere, head.position, head.position_tag)
    assert synced.synced.resync and replayed == []
    # Without a tag (a client of an earlier release) only the position is checked.
    assert not resume_feed(elsewhere, head.position)[0].synced.resync


def test_verifier_resumes_with_the_position_tag(
    zumik_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CachingVerifier remembers the tag of the last message applied and sends it back."""
    revoke_new_key(zumik_server)
    feed = zumik_server.runtime.revocation_feed
    asked: list[tuple[int, bytes]] = []
    subscribe = feed.subscribe

    def recording(resume_after: int, resume_tag: bytes = b"") -> object:
        asked.append((resume_after, resume_tag))
        return subscribe(resume_after, resume_tag)

    monkeypatch.setattr(feed, "subscribe", recording)
    with _verifier(zumik_server) as verifier:
        synced, _ = resume_feed(zumik_server)
        assert (verifier.position, verifier.position_tag) == (
            synced.position,
            synced.position_tag,
        )
        resyncs = verifier.stats().resyncs
        with verifier._call_lock:
            verifier._call.cancel()  # the stream breaks; the verifier reconnects
        deadline = time.monotonic() + 10
        while len(asked) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert verifier.wait_synced(10)
        assert asked[-1] == (synced.position, synced.position_tag)
        assert verifier.stats().resyncs == resyncs, "resuming with its own tag dropped the cache"


def test_only_verifiers_without_a_claim_may_subscribe(zumik_server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _first_messages(zumik_server.stubs("console").keys, 0, 1)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert error_info(err.value).reason == "METHOD_NOT_ALLOWED"
    claim = zumik_server.mint_claim(TENANT, "proj", ("keys.read",))
    with pytest.raises(grpc.RpcError) as err:
        _first_messages(zumik_server.stubs("gateway", claim=claim).keys, 0, 1)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert error_info(err.value).reason == "CLAIM_NOT_ACCEPTED"
    assert zumik_server.runtime.revocation_feed.subscribers == 0


def test_streams_take_the_stream_pool_and_the_per_peer_cap(
    zumik_server_factory: ServerFactory,
) -> None:
    server = zumik_server_factory(ZUMIK_MAX_STREAMS_PER_PEER=2)
    keys = server.stubs("gateway").keys
    calls = [
        keys.WatchRevocations(key_service_pb2.WatchRevocationsRequest(), timeout=10)
        for _ in range(2)
    ]
    try:
        for call in calls:
            next(call)
        with pytest.raises(grpc.RpcError) as err:
            _first_messages(keys, 0, 1)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert error_info(err.value).reason == "PEER_STREAM_LIMIT"
        # Unary calls are not starved by open streams.
        answer = keys.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key="zk_live_x"), timeout=2)
        assert answer.result != VALID
    finally:
        for call in calls:
            call.cancel()


def test_a_stream_the_caller_ends_is_logged_with_how_it_ended(
    zumik_server: RunningServer,
) -> None:
    """Ended by the caller's deadline or cancel, the access line says so, not OK (the
    adversary of issue 18 found both logged as OK)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "method", None) == "WatchRevocations":
                records.append(record)

    handler = Keep()
    logger = logging.getLogger("zumik.access")
    logger.addHandler(handler)
    try:
        keys = zumik_server.stubs("gateway").keys
        expiring = keys.WatchRevocations(key_service_pb2.WatchRevocationsRequest(), timeout=1.5)
        with pytest.raises(grpc.RpcError) as err:
            for _ in expiring:
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        cancelled = keys.WatchRevocations(key_service_pb2.WatchRevocationsRequest(), timeout=30)
        next(cancelled)
        cancelled.cancel()
        deadline = time.monotonic() + 10
        while len(records) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(getattr(r, "code", None) for r in records) == [
            "CANCELLED",
            "DEADLINE_EXCEEDED",
        ]
    finally:
        logger.removeHandler(handler)
