"""The caching verifier's store (bound, TTL, fail-closed, races) and the server's feed hub."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import duration_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from zumik.secrets.v1 import key_service_pb2

from zumik_secrets.app.revocation_feed import (
    TAG_BYTES,
    FeedEvent,
    Heartbeat,
    RevocationFeed,
    Synced,
    position_tag,
)
from zumik_secrets.core.errors import Aborted
from zumik_secrets.storage.records import ChangeRecord
from zumik_secrets_client import CachingVerifier, VerificationCache, errors
from zumik_secrets_client.caching import MIN_TTL, stall_limit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(clock: Clock, **kwargs: float) -> VerificationCache:
    cache = VerificationCache(clock=clock, **kwargs)  # type: ignore[arg-type]
    cache.mark_synced(resync=True)
    return cache


def _put(
    cache: VerificationCache,
    key: bytes,
    cid: str = "key_a",
    lifetime: float = 300.0,
    tenant: str = "t",
    project: str = "p",
) -> bool:
    return cache.put(
        cache.ticket(),
        key,
        key,
        credential_id=cid,
        tenant=tenant,
        project=project,
        lifetime=lifetime,
    )


@settings(max_examples=200, deadline=None)
@given(
    max_entries=st.integers(1, 20),
    keys=st.lists(st.binary(min_size=1, max_size=3), max_size=80),
)
def test_never_more_than_max_entries_and_lru_order(max_entries: int, keys: list[bytes]) -> None:
    cache = _cache(Clock(), max_entries=max_entries)
    model: list[bytes] = []
    for key in keys:
        if cache.get(key) is not None:
            model.remove(key)
            model.append(key)
            continue
        assert _put(cache, key)
        model.append(key)
        if len(model) > max_entries:
            model.pop(0)
        assert len(cache) <= max_entries
    assert len(cache) == len(model)
    for key in model:
        assert cache.get(key) == key


@settings(max_examples=200, deadline=None)
@given(
    max_ttl=st.floats(0.5, 120.0),
    lifetime=st.floats(-10.0, 400.0),
    age=st.floats(0.0, 300.0),
)
def test_ttl_is_at_most_half_the_claims_life_and_max_ttl(
    max_ttl: float, lifetime: float, age: float
) -> None:
    clock = Clock()
    cache = _cache(clock, max_ttl=max_ttl, stall_after=1e9)
    stored = _put(cache, b"k", lifetime=lifetime)
    ttl = min(max_ttl, lifetime / 2)
    assert stored == (ttl >= MIN_TTL)
    clock.now += age
    cache.heard()
    assert (cache.get(b"k") is not None) == (stored and age < ttl)


def test_nothing_served_before_sync_after_a_break_or_when_silent() -> None:
    clock = Clock()
    cache = VerificationCache(clock=clock, stall_after=3.0)
    assert not _put(cache, b"k"), "cached before the feed was synced"
    cache.mark_synced(resync=True)
    assert _put(cache, b"k")
    assert cache.get(b"k") == b"k"
    clock.now += 3.5  # no heartbeat for longer than stall_after
    assert cache.get(b"k") is None
    cache.heard()
    assert cache.get(b"k") == b"k"
    cache.mark_desynced()
    assert cache.get(b"k") is None and not cache.serving()
    cache.mark_synced(resync=False)  # resumed: replayed events evicted what they had to
    assert cache.get(b"k") == b"k"
    cache.mark_desynced()
    cache.mark_synced(resync=True)
    assert cache.get(b"k") is None and len(cache) == 0


def test_events_evict_by_credential_tenant_and_project() -> None:
    cache = _cache(Clock(), quarantine=0.0)
    assert _put(cache, b"a1", "key_a", project="p")
    assert _put(cache, b"a2", "key_a", project="p")
    assert _put(cache, b"b", "key_b", project="p")
    assert _put(cache, b"c", "ses_c", project="q")
    assert _put(cache, b"d", "key_d", tenant="other", project="p")
    assert cache.drop_credential("key_a") == 2
    assert cache.get(b"a1") is None and cache.get(b"b") == b"b"
    assert cache.drop_scope("t", "q") == 1
    assert cache.get(b"c") is None and cache.get(b"b") == b"b"
    assert cache.drop_scope("t") == 1
    assert cache.get(b"b") is None and cache.get(b"d") == b"d"


def test_an_answer_in_flight_when_its_revocation_arrives_is_not_cached() -> None:
    clock = Clock()
    cache = _cache(clock, quarantine=1.5)
    ticket = cache.ticket()  # the real call goes out
    clock.now += 0.1
    cache.drop_credential("key_a")  # the revocation event arrives while it is in flight
    clock.now += 0.1
    assert not cache.put(
        ticket, b"k", b"k", credential_id="key_a", tenant="t", project="p", lifetime=300
    )
    assert cache.get(b"k") is None
    # Another credential's answer in flight at the same time is unaffected.
    assert cache.put(
        ticket, b"j", b"j", credential_id="key_b", tenant="t", project="p", lifetime=300
    )


def test_an_answer_just_after_an_event_waits_out_the_propagation_bound() -> None:
    clock = Clock()
    cache = _cache(clock, quarantine=1.5)
    cache.drop_credential("key_a")
    clock.now += 1.0  # another replica may not have applied the event yet
    assert not _put(cache, b"k", "key_a")
    clock.now += 1.0
    assert _put(cache, b"k", "key_a")
    cache.drop_scope("t", "p")
    clock.now += 0.5
    assert not _put(cache, b"x", "key_x", project="p")
    assert _put(cache, b"y", "key_y", project="other")


def test_a_break_while_in_flight_refuses_the_answer() -> None:
    cache = _cache(Clock(), quarantine=0.0)
    ticket = cache.ticket()
    cache.mark_desynced()
    cache.mark_synced(resync=False)
    assert not cache.put(
        ticket, b"k", b"k", credential_id="key_a", tenant="t", project="p", lifetime=300
    )


# -- the server's hub ----------------------------------------------------------------------


class _Cuts:
    def cut(self, cid: str) -> tuple[float, float] | None:
        return (0.0, float("inf")) if cid.startswith("key_") else None


def _feed(**kwargs: int) -> tuple[RevocationFeed, list[float]]:
    last = [0.0]
    clock = Clock()
    last[0] = clock.now
    feed = RevocationFeed(
        _Cuts(),  # type: ignore[arg-type]
        last_feed_read=lambda: last[0],
        poll_interval=0.25,
        heartbeat_interval=0.01,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )
    feed.open_at(10)
    return feed, last


def _change(seq: int, kind: str = "api_key", entity: str = "key_a") -> ChangeRecord:
    return ChangeRecord(seq, kind, entity, datetime.now(UTC))


def test_feed_replays_or_resyncs_by_position() -> None:
    feed, _ = _feed(history=3)
    for seq in range(11, 16):
        feed.on_change(_change(seq, entity=f"key_{seq}"))
    feed.on_change(_change(16, "purge", "acme/web"))
    feed.on_change(_change(17, "signing_key", "kid"))  # not a feed kind: ignored
    # A sealed secret's change (Open's row caches) is no revocation: ignored, not sent.
    feed.on_change(_change(18, "sealed_secret", "acme/web/sec_abc"))
    assert feed.position == 16 and feed.floor == 13
    messages = feed.subscribe(14).messages()
    replayed = [next(messages), next(messages)]
    assert [m.position for m in replayed] == [15, 16]
    assert isinstance(replayed[1], FeedEvent) and replayed[1].tenant == "acme"
    assert replayed[1].project == "web"
    synced = next(messages)
    assert synced == Synced(16, resync=False, tag=replayed[1].tag)
    assert len(synced.tag) == TAG_BYTES
    assert next(feed.subscribe(12).messages()) == Synced(16, resync=True, tag=synced.tag)
    assert next(feed.subscribe(0).messages()) == Synced(16, resync=True, tag=synced.tag)


def test_feed_resumes_only_from_a_position_of_the_same_history() -> None:
    """A resume tag is checked against the change feed's record at that position (one read),
    else against the ring's event once the record was pruned; without a tag, position only."""
    records = {seq: _change(seq, entity=f"key_{seq}") for seq in range(11, 15)}
    reads: list[int] = []

    def record_at(seq: int) -> ChangeRecord | None:
        reads.append(seq)
        return records.get(seq)

    feed, _ = _feed(record_at=record_at)  # type: ignore[arg-type]
    for record in records.values():
        feed.on_change(record)

    def first(resume_after: int, tag: bytes = b"") -> Synced:
        for message in feed.subscribe(resume_after, tag).messages():
            if isinstance(message, Synced):
                return message
        raise AssertionError("no synced message")

    ours, thirteen = position_tag(records[12]), position_tag(records[13])
    assert not first(12, ours).resync and reads == [12]
    # Another history: the same position, another record (a restored or another database).
    other = position_tag(ChangeRecord(12, "api_key", "key_other", records[12].at))
    assert first(12, other).resync
    assert first(12, b"\x00" * TAG_BYTES).resync and first(12, b"junk").resync
    # A client of an earlier release: position only, no read.
    reads.clear()
    assert not first(12).resync and reads == []
    # Pruned from the change feed: the ring remembers the tag.
    del records[12]
    assert not first(12, ours).resync and first(12, other).resync
    # A position neither the feed nor the ring knows (a gap, pruned and forgotten): resync.
    assert first(10, ours).resync
    # The change feed says what the record at the position is, whatever the ring remembers.
    records[13] = ChangeRecord(13, "session", "ses_else", records[11].at)
    assert first(13, thirteen).resync


def test_slow_subscriber_is_ended_without_blocking_others() -> None:
    feed, _ = _feed(queue=2)
    slow = feed.subscribe(10)
    fast = feed.subscribe(10)
    slow_messages, fast_messages = slow.messages(), fast.messages()
    assert isinstance(next(slow_messages), Synced) and isinstance(next(fast_messages), Synced)
    for seq in range(11, 15):
        feed.on_change(_change(seq))
        assert next(fast_messages).position == seq  # type: ignore[union-attr]
    with pytest.raises(Aborted) as err:
        next(slow_messages)
    assert err.value.reason == "SUBSCRIBER_TOO_SLOW"
    slow.close()
    assert feed.subscribers == 1


def test_heartbeats_only_while_the_feed_is_fresh() -> None:
    feed, last = _feed()
    subscription = feed.subscribe(10)
    messages = subscription.messages()
    assert isinstance(next(messages), Synced)
    assert next(messages) == Heartbeat(10)
    last[0] = -1e9  # the watcher has not read the feed for ages
    feed.on_change(_change(11))
    assert next(messages).position == 11  # type: ignore[union-attr]
    subscription.close()
    assert list(messages) == [], "a closed subscription ends without a heartbeat"


def test_closed_feed_refuses_subscribers_and_ends_streams() -> None:
    feed, _ = _feed()
    subscription = feed.subscribe(10)
    messages = subscription.messages()
    next(messages)
    feed.close()
    assert list(messages) == []
    with pytest.raises(Exception, match="shutting down"):
        feed.subscribe(10)


def test_cache_keys_do_not_run_credential_and_scopes_together() -> None:
    """A credential ending in "\\0scope" with no scopes, and the credential with that scope, are
    different lookups (every part of the key is length-prefixed)."""
    import hashlib

    from zumik_secrets_client import CachingVerifier

    verifier = object.__new__(CachingVerifier)
    verifier._keyed = hashlib.blake2b(key=b"k" * 32, digest_size=32)
    keys = {
        verifier._key(b"k\x00", "zk_test_abc\x00keys.read", ()),
        verifier._key(b"k\x00", "zk_test_abc", ("keys.read",)),
        verifier._key(b"k\x00", "zk_test_abc", ("keys.read", "")),
        verifier._key(b"k\x00", "zk_test_abc", ("keys", "read")),
    }
    assert len(keys) == 4
    # Scope order does not matter; the kind does.
    assert verifier._key(b"k\x00", "x", ("a", "b")) == verifier._key(b"k\x00", "x", ("b", "a"))
    assert verifier._key(b"k\x00", "x", ()) != verifier._key(b"s\x00", "x", ())


def test_the_silence_limit_fits_in_the_servers_propagation_bound() -> None:
    """Issue 18 adversary F2: a silent server's revocation delay is ``stall_after``; it must fit
    in the ``propagation_bound`` the server states, and stay above a heartbeat interval."""
    assert stall_limit(1.0, 1.5) == pytest.approx(1.2)  # the server's defaults: 1.2 H
    assert stall_limit(1.0, 5.0) == pytest.approx(4.0)  # room enough: P - H
    assert stall_limit(1.0, 1.0) == pytest.approx(1.0)  # never past P, even below 1.2 H
    for heartbeat in (0.1, 0.5, 1.0, 2.0):
        for bound in (0.5, 1.0, 1.5, 3.0, 10.0):
            limit = stall_limit(heartbeat, bound)
            assert limit <= bound
            assert limit >= min(bound, 1.2 * heartbeat)
    with pytest.raises(ValueError):
        stall_limit(0.0, 1.5)
    assert VerificationCache().stall_after <= 1.5


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def _synced(heartbeat: float, bound: float) -> key_service_pb2.WatchRevocationsResponse:
    return key_service_pb2.WatchRevocationsResponse(
        position=1,
        synced=key_service_pb2.RevocationFeedSynced(
            resync=True,
            heartbeat_interval=_duration(heartbeat),
            propagation_bound=_duration(bound),
        ),
    )


@pytest.mark.parametrize(
    ("given", "heartbeat", "bound", "expected"),
    [
        (None, 1.0, 1.5, 1.2),  # default: derived from what the server announces (was 3.0)
        (None, 1.0, 5.0, 4.0),
        (10.0, 1.0, 1.5, 1.2),  # a caller's larger value is capped, never honoured
        (10.0, 1.0, 5.0, 4.0),
        (0.5, 1.0, 1.5, 0.5),  # a smaller one tightens
    ],
)
def test_the_verifier_takes_its_silence_limit_from_the_server(
    given: float | None, heartbeat: float, bound: float, expected: float
) -> None:
    # Nothing listens there: the follower keeps failing to connect; _apply is what it would
    # call with the server's synced message.
    channel = grpc.insecure_channel("127.0.0.1:9")
    verifier = CachingVerifier(channel, stall_after=given)
    try:
        verifier._apply(_synced(heartbeat, bound))
        assert verifier.cache.stall_after == pytest.approx(expected)
        assert verifier.cache.stall_after <= bound
        assert verifier.cache.serving()
    finally:
        verifier.close()
        channel.close()


@pytest.mark.parametrize("given", [0.0, -1.0])
def test_a_non_positive_stall_after_is_refused(given: float) -> None:
    channel = grpc.insecure_channel("127.0.0.1:9")
    try:
        with pytest.raises(ValueError):
            CachingVerifier(channel, stall_after=given)
    finally:
        channel.close()


class _Cancelled(grpc.RpcError):
    """What iterating a cancelled stream raises."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "Locally cancelled by application!"

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def cancelled(self) -> bool:
        return True

    def debug_error_string(self) -> str:
        # grpc's waits until the transport reports the call's end (15-30 s on a paused server).
        raise AssertionError("waited for the debug string of a cancelled call")


def test_a_cancelled_calls_error_is_typed_without_waiting_for_grpcs_debug_string() -> None:
    """Adversary finding (issue client2): converting a cancelled stream's error waited for
    grpc's debug string, which blocked the verifier's follower for 15-30 s after its watchdog
    cut a silent stream."""
    typed = errors.from_rpc_error(_Cancelled())
    assert typed.code() is grpc.StatusCode.CANCELLED
    assert typed.debug_error_string() is None


class _Stream:
    """A WatchRevocations call: synced (H = 0.1 s, P = 0.15 s), then heartbeats or silence."""

    def __init__(self, *, heartbeats: bool, teardown: threading.Event | None = None) -> None:
        self.cancels = 0
        self._heartbeats = heartbeats
        self._teardown = teardown
        self._cancelled = threading.Event()
        self._sent = False

    def cancel(self) -> bool:
        self.cancels += 1
        self._cancelled.set()
        return True

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> key_service_pb2.WatchRevocationsResponse:
        if not self._sent:
            self._sent = True
            return _synced(0.1, 0.15)
        if self._heartbeats and not self._cancelled.wait(0.05):
            return key_service_pb2.WatchRevocationsResponse(position=1)
        self._cancelled.wait()
        if self._teardown is not None:
            self._teardown.wait(10)  # a stream that takes its time to wind down
        raise _Cancelled()


class _Channel:
    """Just enough of a channel for KeyServiceStub: WatchRevocations hands out ``streams``."""

    def __init__(self, streams: list[_Stream]) -> None:
        self._streams = iter(streams)

    def _watch(self, _request: object, timeout: float | None = None) -> _Stream:
        return next(self._streams)

    def unary_stream(self, method: str, *_args: object, **_kwargs: object) -> object:
        return self._watch if method.endswith("/WatchRevocations") else None

    def unary_unary(self, *_args: object, **_kwargs: object) -> None:
        return None

    stream_unary = stream_stream = unary_unary


def test_a_stream_cut_for_silence_fails_closed_at_once_and_the_next_one_serves() -> None:
    """The watchdog cuts a silent stream once, stops answering from memory at the cut (not
    when the follower has wound the stream down), and the next stream serves once synced."""
    teardown = threading.Event()
    silent = _Stream(heartbeats=False, teardown=teardown)
    healthy = [_Stream(heartbeats=True) for _ in range(5)]
    verifier = CachingVerifier(_Channel([silent, *healthy]))  # type: ignore[arg-type]
    try:
        assert verifier.wait_synced(5)
        reconnect_after = 3 * 0.1  # max(stall_after, 3 H) with H = 0.1 s, P = 0.15 s
        deadline = time.monotonic() + 5
        while silent.cancels == 0 and time.monotonic() < deadline:
            assert verifier.cache.silent_for() < reconnect_after + 0.2
            time.sleep(0.005)
        assert silent.cancels == 1
        time.sleep(0.3)  # the follower is still winding the cut stream down
        assert not verifier.cache.serving(), "answers from memory on a cut stream"
        assert not verifier.wait_synced(0)
        assert silent.cancels == 1, "a stream already cut was cut again"
        teardown.set()
        assert verifier.wait_synced(5), f"no new stream: {verifier.last_error!r}"
        deadline = time.monotonic() + 2
        while not verifier.cache.serving() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert verifier.cache.serving()
        assert healthy[0].cancels == 0, "a healthy stream was cut"
    finally:
        teardown.set()
        verifier.close()
