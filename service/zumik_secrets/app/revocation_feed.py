"""The revocation feed: what invalidates a cached verification, pushed to gateways.

DESIGN.md s. 11: "the same feed, as a server stream, lets gateways cache verifications safely".
The change watcher dispatches every ``api_key``, ``session`` and ``purge`` change to
:class:`ClaimRevocations` first (which reads the credential again and works out its cut-off),
then to :meth:`RevocationFeed.on_change`, which turns it into a :class:`FeedEvent` (ids, times,
cut-offs: never a key, token, hash or claim), remembers it in a bounded ring and hands it to
every subscriber's bounded queue. ``KeyService.WatchRevocations`` drains one such queue.

Positions are the change feed's ``seq``, shared by every replica. The ring holds every event
after :attr:`RevocationFeed.floor`; a subscriber resuming from a position at or past the floor
gets the events it missed replayed, one resuming from before it (or from 0, or after this
process restarted) is told to drop everything (``resync``).

A position alone does not say which history it belongs to: a database restored to an earlier
point records other changes at the positions a subscriber already passed, and another database
has positions of its own. So every message also carries :func:`position_tag`, a digest of the
change record at its position (seq, kind, entity id, commit time: ids and times, no secret);
a subscriber resuming with a tag is told to ``resync`` unless this server's record at that
position has the same tag (read by primary key, or remembered in the ring once pruned). One
resuming without a tag (a client of an earlier release) is checked by position only.

A subscriber that does not read
fast enough overflows its queue; its stream ends with ABORTED ``SUBSCRIBER_TOO_SLOW`` and it
subscribes again: no slow reader ever blocks the watcher or the other subscribers.

Heartbeats are only sent while the watcher's last successful read of the change feed is recent
(:attr:`RevocationFeed.stale_after`): a server that cannot see the feed goes quiet, and a quiet
stream tells the gateway to stop answering from memory.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from zumik_secrets.app.change_watcher import freshness_bound
from zumik_secrets.app.claim_revocations import ClaimRevocations
from zumik_secrets.core.errors import Aborted, Unavailable
from zumik_secrets.storage.records import ChangeRecord

#: Events remembered for resuming subscribers (each is a few hundred bytes).
DEFAULT_HISTORY = 4096
#: Events queued for one subscriber before its stream is ended as too slow.
DEFAULT_QUEUE = 1024
#: Longest silence on a healthy stream, in seconds.
DEFAULT_HEARTBEAT = 1.0

REASON_SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
KINDS = ("api_key", "session", "purge")
"""The change kinds the feed carries."""

_FOREVER = float("inf")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TAG_DOMAIN = b"zumik.revocation-feed.position.v1\x00"
#: Bytes of a position tag (a truncated SHA-256: 128 bits tell histories apart).
TAG_BYTES = 16


def position_tag(record: ChangeRecord) -> bytes:
    """The tag of ``record``'s position: 16 bytes of SHA-256 over its seq, kind, entity id and
    commit time (microseconds). Two histories share it at a position only if they share the
    record, i.e. the history up to it; it holds only ids and a time, never a secret."""
    at = record.at if record.at.tzinfo is not None else record.at.replace(tzinfo=UTC)
    micros = (at - _EPOCH) // _MICROSECOND
    body = f"{record.seq}\x00{record.kind}\x00{record.entity_id}\x00{micros}".encode()
    return hashlib.sha256(_TAG_DOMAIN + body).digest()[:TAG_BYTES]


def _no_record(_seq: int) -> ChangeRecord | None:
    return None


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event of the feed: a credential changed, or a scope was purged.

    Attributes:
        position: The change feed ``seq`` of the change.
        at: When the change was recorded (unix seconds).
        credential_id: ``key_…`` or ``ses_…`` ("" for a purge).
        credential_type: ``"api_key"`` or ``"session"`` ("" for a purge).
        valid_until: Claims of the credential are refused from then on (``inf``: no limit).
        issued_from: Claims issued before it are refused (0.0: none).
        tenant: The purged tenant ("" for a credential).
        project: The purged project (None: the whole tenant, or a credential).
        tag: :func:`position_tag` of the change.
    """

    position: int
    at: float
    credential_id: str = ""
    credential_type: str = ""
    valid_until: float = _FOREVER
    issued_from: float = 0.0
    tenant: str = ""
    project: str | None = None
    tag: bytes = b""


@dataclass(frozen=True, slots=True)
class Synced:
    """Every event up to ``position`` was sent; ``resync``: the subscriber drops its cache."""

    position: int
    resync: bool
    tag: bytes = b""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing new up to ``position``, and the server's view of the feed is fresh."""

    position: int
    tag: bytes = b""


FeedMessage = FeedEvent | Synced | Heartbeat


class Subscription:
    """One subscriber's bounded queue. Iterate :meth:`messages`; :meth:`close` ends it."""

    def __init__(
        self, feed: RevocationFeed, limit: int, replay: list[FeedEvent], synced: Synced
    ) -> None:
        self._feed = feed
        self._limit = limit
        self._cond = threading.Condition()
        self._queue: deque[FeedEvent] = deque()
        self._overflowed = False
        self._closed = False
        self._replay = replay
        self._synced = synced
        self._delivered = synced.position
        self._delivered_tag = synced.tag

    def offer(self, event: FeedEvent) -> None:
        """Queue ``event`` without ever blocking (called under the feed's lock)."""
        with self._cond:
            if self._closed or self._overflowed:
                return
            if len(self._queue) >= self._limit:
                self._overflowed = True
                self._queue.clear()
            else:
                self._queue.append(event)
            self._cond.notify()

    def close(self) -> None:
        """End the subscription (idempotent; a grpc termination callback)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._feed.unsubscribe(self)

    def messages(self) -> Iterator[FeedMessage]:
        """The replayed events, the sync marker, then live events and heartbeats until closed.

        Raises:
            Aborted: reason ``SUBSCRIBER_TOO_SLOW`` once the queue overflowed.
        """
        yield from self._replay
        self._replay = []
        interval = self._feed.heartbeat_interval
        # "Synced" promises the server sees the feed: not while its watcher cannot read it.
        while not self._feed.fresh():
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(interval)
        yield self._synced
        while True:
            with self._cond:
                if not self._queue and not self._closed and not self._overflowed:
                    self._cond.wait(interval)
                if self._closed:
                    return
                if self._overflowed:
                    raise Aborted(
                        "this subscriber fell behind the revocation feed; subscribe again from"
                        " the last position applied",
                        reason=REASON_SUBSCRIBER_TOO_SLOW,
                        metadata={"queued": str(self._limit)},
                    )
                event = self._queue.popleft() if self._queue else None
            if event is not None:
                self._delivered, self._delivered_tag = event.position, event.tag
                yield event
            elif self._feed.fresh():
                yield Heartbeat(self._delivered, self._delivered_tag)


class RevocationFeed:
    """The events of one server process and its subscribers. Thread-safe."""

    def __init__(
        self,
        revocations: ClaimRevocations,
        *,
        last_feed_read: Callable[[], float],
        poll_interval: float,
        history: int = DEFAULT_HISTORY,
        queue: int = DEFAULT_QUEUE,
        heartbeat_interval: float = DEFAULT_HEARTBEAT,
        clock: Callable[[], float] = time.monotonic,
        record_at: Callable[[int], ChangeRecord | None] = _no_record,
    ) -> None:
        """Create the feed (closed to subscribers until :meth:`open_at`).

        Args:
            revocations: Where a credential's cut-off is read (it applied the change first).
            last_feed_read: Monotonic time of the watcher's last successful read of the feed.
            poll_interval: The watcher's longest time between two reads.
            history: Events remembered for resuming subscribers.
            queue: Events queued per subscriber before it is ended as too slow.
            heartbeat_interval: Longest silence on a healthy stream, in seconds.
            clock: Monotonic time (tests).
            record_at: The change record at a seq (None: none, or pruned): one read by primary
                key per resume with a tag (:meth:`ChangeFeed.at`; by default only the ring is
                consulted).
        """
        self._revocations = revocations
        self._last_read = last_feed_read
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: deque[FeedEvent] = deque()
        self._history = history
        self._queue = queue
        self._subscribers: set[Subscription] = set()
        self._record_at = record_at
        self._floor: int | None = None
        self._floor_tag = b""
        self._closed = False
        self._position = 0
        self._position_tag = b""
        self.heartbeat_interval = heartbeat_interval
        #: A change committed on any replica reaches a stream of this one within this bound:
        #: one poll interval, one feed read, with room for a slow read.
        self.propagation_bound = freshness_bound(poll_interval)
        #: Heartbeats stop once the watcher has not read the feed for this long.
        self.stale_after = 2 * poll_interval + 2 * heartbeat_interval

    @property
    def floor(self) -> int | None:
        """Every event after this position is remembered (None: not open yet)."""
        return self._floor

    @property
    def position(self) -> int:
        """The position of the last event (or the floor)."""
        return self._position

    @property
    def subscribers(self) -> int:
        """How many streams are subscribed now."""
        return len(self._subscribers)

    def fresh(self) -> bool:
        """Whether the watcher read the change feed recently enough for a heartbeat."""
        return self._clock() - self._last_read() <= self.stale_after

    def open_at(self, position: int, tag: bytes = b"") -> None:
        """Start serving subscribers: every change after ``position`` reaches :meth:`on_change`
        (call it after the watcher started, with the feed's latest record read then, and its
        :func:`position_tag`)."""
        with self._lock:
            if self._floor is None:
                self._floor, self._floor_tag = position, tag
                if position >= self._position:
                    self._position, self._position_tag = position, tag

    def on_change(self, record: ChangeRecord) -> None:
        """Turn a change into an event and hand it to every subscriber (a watcher subscriber,
        registered after :meth:`ClaimRevocations.on_change`)."""
        event = self._event(record)
        if event is None:
            return
        with self._lock:
            self._ring.append(event)
            while len(self._ring) > self._history:
                dropped = self._ring.popleft()
                if dropped.position > (self._floor or 0):
                    self._floor, self._floor_tag = dropped.position, dropped.tag
            if event.position >= self._position:
                self._position, self._position_tag = event.position, event.tag
            for subscriber in self._subscribers:
                subscriber.offer(event)

    def _event(self, record: ChangeRecord) -> FeedEvent | None:
        at = record.at.timestamp()
        if record.kind == "purge":
            tenant, _, project = record.entity_id.partition("/")
            return FeedEvent(
                record.seq, at, tenant=tenant, project=project or None, tag=position_tag(record)
            )
        if record.kind not in ("api_key", "session"):
            return None
        cut = self._revocations.cut(record.entity_id)
        valid_until, issued_from = cut if cut is not None else (_FOREVER, 0.0)
        return FeedEvent(
            record.seq,
            at,
            credential_id=record.entity_id,
            credential_type=record.kind,
            valid_until=valid_until,
            issued_from=issued_from,
            tag=position_tag(record),
        )

    def close(self) -> None:
        """End every subscription (a draining server: the streams end now, not after the
        grace) and refuse new ones."""
        with self._lock:
            self._closed = True
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.close()

    def subscribe(self, resume_after: int, resume_tag: bytes = b"") -> Subscription:
        """A new subscription resuming after ``resume_after`` (0: from scratch).

        The events after ``resume_after`` are replayed when the ring still holds all of them
        and, if ``resume_tag`` is given, it is the :func:`position_tag` of this server's record
        at ``resume_after`` (read from the change feed; once pruned there, the one the ring or
        the floor remembers); otherwise, and when ``resume_after`` is ahead of this server's
        position, the first message says ``resync``. Without a tag (a client of an earlier
        release) only the position is checked.

        Raises:
            Unavailable: the server is draining, or the change feed could not be read.
        """
        # One read by primary key, outside the lock (the watcher's events wait on it).
        record = self._record_at(resume_after) if resume_tag and resume_after > 0 else None
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down; subscribe to another replica")
            floor = self._floor if self._floor is not None else self._position
            # A position ahead of this server's was never issued by it (a database restored
            # to an earlier point, another timeline, a forged value, or a replica that has not
            # read that far): the events at or below it here were never seen by the caller.
            # A position of another history (a restored database that recorded other changes
            # at the positions the caller passed, another database): its tag differs here.
            if (
                resume_after <= 0
                or resume_after < floor
                or resume_after > self._position
                or (resume_tag and self._tag_at(resume_after, record) != resume_tag)
            ):
                replay: list[FeedEvent] = []
                synced = Synced(self._position, resync=True, tag=self._position_tag)
            else:
                replay = [e for e in self._ring if e.position > resume_after]
                synced = Synced(self._position, resync=False, tag=self._position_tag)
            subscription = Subscription(self, self._queue, replay, synced)
            self._subscribers.add(subscription)
            return subscription

    def _tag_at(self, position: int, record: ChangeRecord | None) -> bytes | None:
        """The tag of this history's record at ``position``: the change feed's, else (pruned
        there) the one remembered by the ring or the floor, else None (under the lock)."""
        if record is not None:
            return position_tag(record) if record.seq == position else None
        if position == self._floor:
            return self._floor_tag or None
        for event in self._ring:
            if event.position == position:
                return event.tag
        return None

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget ``subscription`` (idempotent)."""
        with self._lock:
            self._subscribers.discard(subscription)
