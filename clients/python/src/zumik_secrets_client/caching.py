"""Verify API keys and sessions at the gateway from memory, kept correct by the revocation feed.

:class:`CachingVerifier` answers ``VerifyApiKey`` / ``VerifySession`` from a local cache when it
can, and with a real call otherwise. It is opt-in and fails closed:

- **What is cached**: only VALID answers, keyed by a keyed BLAKE2b MAC (``hashlib.blake2b``
  with a random 256-bit key of this verifier; a MAC like HMAC-SHA256, five times cheaper here
  on a 60-byte key) of the presented credential and the required scopes; never the raw
  credential, so a memory dump of the cache holds nothing that verifies.
  Every other answer (unknown, revoked, expired, insufficient scope, malformed) goes to the
  server each time: an attacker guessing keys meets the server's failure rate limit on every
  guess, and a key created a moment ago verifies at once.
- **How long**: at most ``max_ttl`` seconds and at most half of the claim's remaining lifetime,
  so the forwarded claim always has half its life left and a session's idle timeout (which the
  claim's expiry never exceeds) cannot lapse under a cached answer. Bounded size, least
  recently used out first.
- **Revocation**: a background thread follows ``KeyService.WatchRevocations``. Every event for
  a credential drops its answers; a purge drops its tenant's (or project's). An answer whose
  call was in flight when a matching event arrived, or which came back within the server's
  ``propagation_bound`` after one (another replica may not have applied the event yet), is
  returned to its caller but not cached.
- **Fail closed**: until the stream is synced, and whenever it broke or stayed silent longer
  than ``stall_after`` (heartbeats arrive every second while the server's view of the feed is
  fresh), nothing is answered from memory: every verification is a real call. After a
  reconnect the server replays what was missed, or says ``resync`` and the cache is emptied.
  The verifier resumes with the last position and its ``position_tag``, so a server whose
  database holds another history at that position (restored to an earlier point, or another
  database) says ``resync`` rather than replaying from a position that means something else.

How long a silence may last (``stall_after``, :func:`stall_limit`). The server announces, in
the feed's ``synced`` message, its heartbeat interval ``H`` (a message at least that often
while it follows its change feed) and its ``propagation_bound`` ``P`` (a change committed on
any replica reaches the stream within ``P``). A server that goes silent (a GC or scheduler
pause, SIGSTOP, a partition that keeps the TCP connection open) delivers nothing, so a
revocation committed after it went quiet is answered from memory until the last message heard
is ``stall_after`` old: that wait is the whole revocation delay a silent server adds, and it
must fit in the bound the server states, ``P``. It must also be longer than ``H``, or a
healthy stream whose heartbeat is a little late (scheduling, network) stops the cache between
two heartbeats. Hence::

    stall_after = min(P, max(P - H, 1.2 * H))

``P - H`` keeps one heartbeat interval of the bound for what the verifier cannot see: how old
the last message already was when it arrived (send queue, network, the server stopping just
after it). When that leaves less than ``1.2 * H`` (the server's defaults: ``H`` = 1 s, ``P``
= 1.5 s, so 1.2 s), ``1.2 * H`` tolerates 20 % of late heartbeats and still fits in ``P``;
``min(P, ...)`` never lets it exceed ``P`` (a server announcing ``P`` < 1.2 ``H`` gets a cache
that serves only part of each heartbeat interval: slower, never later). The previous default,
three heartbeat intervals (3 s), kept answering a revoked key from memory for up to 3 s after
the revocation when the server paused, twice the stated bound. A revocation already in flight
when the server goes silent (committed less than ``P`` before) can still be answered for up
to ``P + stall_after``: the server's own bound plus this one (before: ``P`` + 3 s).

A caller's ``stall_after`` may only tighten this: a larger one is capped to
:func:`stall_limit` of what the server announces (logged once), never honoured. A silent
stream is cut and reconnected after ``max(stall_after, 3 * H)`` (a late heartbeat only pauses
answering from memory; it does not cost a reconnect). The cut stops answering from memory at
once and happens once per stream; the next stream, opened after the follower's backoff (0.1 s,
doubling up to 5 s while attempts fail, each wait +-50 % at random), is judged only once it
is synced, so the cache serves again as soon as the server answers, however long it was
silent.

Use the answers as the real call's: forward ``answer.claim`` downstream. Answers are shared
read-only messages: copy one before changing it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc
from zumik.secrets.v1 import common_pb2, key_service_pb2, key_service_pb2_grpc

__all__ = [
    "CacheStats",
    "CachingVerifier",
    "VerificationCache",
    "stall_limit",
]

_LOG = logging.getLogger("zumik_secrets_client.caching")

#: Default longest life of a cached answer, in seconds.
DEFAULT_MAX_TTL: Final = 60.0
#: What a Zumik server announces by default (``synced``): heartbeat interval, propagation bound.
#: Used only until the feed's ``synced`` message says the server's own.
DEFAULT_HEARTBEAT: Final = 1.0
DEFAULT_PROPAGATION_BOUND: Final = 1.5
#: The shortest silence limit, in heartbeat intervals: a healthy heartbeat may be this late.
MIN_STALL_INTERVALS: Final = 1.2
#: A stream silent for this many heartbeat intervals (or ``stall_after``, if longer) is cut and
#: reconnected.
RECONNECT_INTERVALS: Final = 3.0
#: Default number of cached answers.
DEFAULT_MAX_ENTRIES: Final = 10_000
#: Shorter lives are not worth an entry.
MIN_TTL: Final = 0.01
#: Events remembered to judge answers that were in flight (far more than arrive in a few s).
_RECENT_EVENTS: Final = 4096
_VALID: Final = common_pb2.VERIFY_RESULT_VALID

_Answer = TypeVar(
    "_Answer", key_service_pb2.VerifyApiKeyResponse, key_service_pb2.VerifySessionResponse
)


def stall_limit(heartbeat_interval: float, propagation_bound: float) -> float:
    """The longest silence of the feed the cache may answer from memory through, in seconds.

    ``min(P, max(P - H, 1.2 H))`` for the heartbeat interval ``H`` and propagation bound ``P``
    the server announces: a revocation committed after the server went silent is answered from
    memory for at most this long, within ``P``; and a healthy stream's heartbeat may be 20 %
    late without stopping the cache (the reasoning is in the module's docstring).

    Raises:
        ValueError: ``heartbeat_interval`` or ``propagation_bound`` not positive.
    """
    if not heartbeat_interval > 0 or not propagation_bound > 0:
        raise ValueError("heartbeat_interval and propagation_bound must be positive")
    return min(
        propagation_bound,
        max(propagation_bound - heartbeat_interval, MIN_STALL_INTERVALS * heartbeat_interval),
    )


#: The silence limit for a server with the default heartbeat interval and bound (1.2 s).
DEFAULT_STALL_AFTER: Final = stall_limit(DEFAULT_HEARTBEAT, DEFAULT_PROPAGATION_BOUND)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a :class:`VerificationCache` (monotonic except ``entries``).

    Attributes:
        entries: Answers cached now.
        hits: Verifications answered from memory.
        misses: Verifications that made a real call.
        inserted: VALID answers cached.
        refused: VALID answers not cached (an event raced them, or the feed was not synced).
        evicted: Answers dropped by events, resyncs, TTL or size.
        resyncs: Times the whole cache was dropped.
    """

    entries: int
    hits: int
    misses: int
    inserted: int
    refused: int
    evicted: int
    resyncs: int


@dataclass(slots=True)
class _Entry:
    answer: object
    expires: float
    credential_id: str
    tenant: str
    project: str


@dataclass(frozen=True, slots=True)
class _Ticket:
    """Taken before a real call: what the cache looked like when the call went out."""

    started: float
    epoch: int


@dataclass(frozen=True, slots=True)
class _Seen:
    at: float
    credential_id: str
    tenant: str
    project: str


class VerificationCache:
    """The bounded, TTL'd, event-invalidated answer store (no I/O; clock injected).

    Thread-safe. ``serving`` decides whether lookups may answer; the feed follower calls
    :meth:`mark_synced`, :meth:`mark_desynced`, :meth:`heard`, :meth:`drop_credential`,
    :meth:`drop_scope` and :meth:`clear`.
    """

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_ttl: float = DEFAULT_MAX_TTL,
        stall_after: float = DEFAULT_STALL_AFTER,
        quarantine: float = DEFAULT_PROPAGATION_BOUND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty cache that does not serve until :meth:`mark_synced`.

        Args:
            max_entries: Most answers kept (least recently used out first).
            max_ttl: Longest life of an answer, in seconds.
            stall_after: Serve only while the feed was heard from within this many seconds
                (default: :func:`stall_limit` of a server's default heartbeat and bound; the
                :class:`CachingVerifier` sets it from what its server announces).
            quarantine: An answer that comes back within this long after a matching event is
                not cached (the server's ``propagation_bound`` replaces it once synced).
            clock: Monotonic seconds.
        """
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not max_ttl > 0 or not stall_after > 0 or quarantine < 0:
            raise ValueError("max_ttl and stall_after must be positive, quarantine not negative")
        self._max = max_entries
        self._max_ttl = max_ttl
        self.stall_after = stall_after
        self.quarantine = quarantine
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_credential: dict[str, set[bytes]] = {}
        self._recent: deque[_Seen] = deque()
        self._forgot_until = float("-inf")
        self._synced = False
        self._epoch = 0
        self._heard = float("-inf")
        self._hits = self._misses = self._inserted = self._refused = 0
        self._evicted = self._resyncs = 0

    # -- answering -------------------------------------------------------------------------

    def silent_for(self, now: float | None = None) -> float:
        """Seconds since the feed last said something (infinite before it ever did)."""
        now = self._clock() if now is None else now
        return now - self._heard

    def serving(self, now: float | None = None) -> bool:
        """Whether lookups may answer now: synced, and the feed heard from recently."""
        now = self._clock() if now is None else now
        return self._synced and now - self._heard <= self.stall_after

    def get(self, key: bytes) -> object | None:
        """The cached answer for ``key`` if the cache serves and the answer is alive."""
        now = self._clock()
        with self._lock:
            if self._synced and now - self._heard <= self.stall_after:
                entry = self._entries.get(key)
                if entry is not None:
                    if now < entry.expires:
                        self._entries.move_to_end(key)
                        self._hits += 1
                        return entry.answer
                    self._remove(key)
                    self._evicted += 1
            self._misses += 1
            return None

    def ticket(self) -> _Ticket:
        """Take before the real call; hand to :meth:`put` with its answer."""
        with self._lock:
            return _Ticket(self._clock(), self._epoch if self._synced else -1)

    def put(
        self,
        ticket: _Ticket,
        key: bytes,
        answer: object,
        *,
        credential_id: str,
        tenant: str,
        project: str,
        lifetime: float,
    ) -> bool:
        """Cache a VALID answer unless something may have invalidated it since ``ticket``.

        ``lifetime`` is the claim's remaining life in seconds; the answer lives half of it, at
        most ``max_ttl``. Returns whether it was cached.
        """
        ttl = min(self._max_ttl, lifetime / 2.0)
        now = self._clock()
        with self._lock:
            if (
                ttl < MIN_TTL
                or not credential_id
                or not self._synced
                or ticket.epoch != self._epoch
                or self._raced(ticket.started - self.quarantine, credential_id, tenant, project)
            ):
                self._refused += 1
                return False
            if key in self._entries:
                self._remove(key)
            self._entries[key] = _Entry(answer, now + ttl, credential_id, tenant, project)
            self._by_credential.setdefault(credential_id, set()).add(key)
            self._inserted += 1
            while len(self._entries) > self._max:
                self._remove(next(iter(self._entries)))
                self._evicted += 1
            return True

    def _raced(self, since: float, credential_id: str, tenant: str, project: str) -> bool:
        if self._forgot_until >= since:
            return True  # events of that time were dropped from the log: cannot tell
        for seen in reversed(self._recent):
            if seen.at < since:
                return False
            if seen.credential_id == credential_id or (
                seen.tenant == tenant and seen.project in ("", project)
            ):
                return True
        return False

    # -- the feed --------------------------------------------------------------------------

    def heard(self) -> None:
        """The feed said something (a heartbeat, an event, a sync marker)."""
        now = self._clock()
        with self._lock:
            self._heard = now

    def mark_synced(self, *, resync: bool) -> None:
        """The stream caught up (``resync``: drop everything first)."""
        with self._lock:
            if resync:
                self._clear()
            self._heard = self._clock()
            self._synced = True

    def mark_desynced(self) -> None:
        """The stream broke: stop answering; answers in flight are not cached."""
        with self._lock:
            self._synced = False
            self._epoch += 1

    def clear(self) -> None:
        """Drop every answer."""
        with self._lock:
            self._clear()

    def drop_credential(self, credential_id: str) -> int:
        """An event for ``credential_id``: drop its answers; returns how many."""
        with self._lock:
            self._note(_Seen(self._clock(), credential_id, "", ""))
            keys = self._by_credential.get(credential_id, set()).copy()
            for key in keys:
                self._remove(key)
            self._evicted += len(keys)
            return len(keys)

    def drop_scope(self, tenant: str, project: str = "") -> int:
        """A purge of ``tenant`` (or its ``project``): drop its answers; returns how many."""
        with self._lock:
            self._note(_Seen(self._clock(), "", tenant, project))
            keys = [
                k
                for k, e in self._entries.items()
                if e.tenant == tenant and (not project or e.project == project)
            ]
            for key in keys:
                self._remove(key)
            self._evicted += len(keys)
            return len(keys)

    def stats(self) -> CacheStats:
        """The counters now."""
        with self._lock:
            return CacheStats(
                len(self._entries),
                self._hits,
                self._misses,
                self._inserted,
                self._refused,
                self._evicted,
                self._resyncs,
            )

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"VerificationCache(entries={len(self._entries)}, synced={self._synced})"

    # -- internals (lock held) -------------------------------------------------------------

    def _note(self, seen: _Seen) -> None:
        self._recent.append(seen)
        while len(self._recent) > _RECENT_EVENTS:
            self._forgot_until = self._recent.popleft().at

    def _clear(self) -> None:
        self._evicted += len(self._entries)
        self._entries.clear()
        self._by_credential.clear()
        self._resyncs += 1
        self._epoch += 1

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        keys = self._by_credential.get(entry.credential_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_credential[entry.credential_id]


def _last_segment(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _wall_seconds(
    answer: key_service_pb2.VerifyApiKeyResponse | key_service_pb2.VerifySessionResponse,
) -> float:
    ts = answer.claim_expire_time
    return ts.seconds + ts.nanos / 1e9


class CachingVerifier:
    """``VerifyApiKey`` / ``VerifySession`` with a revocation-safe local cache.

    Open it on a channel whose identity the server's policy lets verify credentials (the
    ``gateway`` role; the same identity may subscribe to the revocation feed), without a
    claim. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_ttl: float = DEFAULT_MAX_TTL,
        stall_after: float | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Start following the revocation feed (the cache serves once it is synced).

        Args:
            channel: From ``zumik_secrets_client.connect()`` (or any grpc channel) as a
                verifying identity.
            max_entries: Most answers kept.
            max_ttl: Longest life of an answer, in seconds (also bounded by half of the
                claim's remaining lifetime).
            stall_after: Stop answering from memory after this long without a message from
                the feed (default: :func:`stall_limit` of the heartbeat interval and
                propagation bound the server announces, so a silent server cannot stretch a
                revocation past its stated bound). A larger value is capped to that limit
                once the server's numbers are known (logged), never honoured.
            timeout: Deadline of each real verify call, in seconds.
            clock: Monotonic seconds (tests).
            wall_clock: Unix seconds, to read claim expiry times (tests).
        """
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        if stall_after is not None and not stall_after > 0:
            raise ValueError("stall_after must be a positive number of seconds")
        self._stub = key_service_pb2_grpc.KeyServiceStub(channel)
        self._timeout = timeout
        self._wall = wall_clock
        self._clock = clock
        self._fixed_stall = stall_after
        # The keyed state, copied per lookup (the key block is compressed once, not per call).
        self._keyed = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=32)
        self.cache = VerificationCache(
            max_entries=max_entries,
            max_ttl=max_ttl,
            stall_after=min(stall_after or DEFAULT_STALL_AFTER, DEFAULT_STALL_AFTER),
            clock=clock,
        )
        #: Silence after which the watchdog cuts the stream and reconnects (set on sync).
        self._reconnect_after = max(self.cache.stall_after, RECONNECT_INTERVALS * DEFAULT_HEARTBEAT)
        self._capped_warned = False
        #: The position of the last feed message applied (resumed from after a reconnect).
        self.position = 0
        #: That message's ``position_tag``, sent back on resume so that a server whose
        #: database holds another history at that position (restored to an earlier point, or
        #: another database) says ``resync`` instead of replaying from the position.
        self.position_tag = b""
        self._closed = threading.Event()
        self._synced_event = threading.Event()
        self._call_lock = threading.Lock()
        self._call: Any = None  # the stream's call object (cancellable)
        #: The last error that ended the stream (None while it runs).
        self.last_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._follow, name="zumik-revocation-feed", daemon=True
        )
        self._watchdog = threading.Thread(
            target=self._watch, name="zumik-revocation-watchdog", daemon=True
        )
        self._thread.start()
        self._watchdog.start()

    def __enter__(self) -> CachingVerifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CachingVerifier(position={self.position}, cache={self.cache!r})"

    def close(self) -> None:
        """Stop following the feed (the cache stops answering)."""
        self._closed.set()
        self.cache.mark_desynced()
        self._cancel()
        self._thread.join(timeout=5)
        self._watchdog.join(timeout=5)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until the feed is synced (the cache can answer); False on timeout."""
        return self._synced_event.wait(timeout)

    def stats(self) -> CacheStats:
        """The cache's counters."""
        return self.cache.stats()

    # -- verifying -------------------------------------------------------------------------

    def _key(self, kind: bytes, credential: str, scopes: Sequence[str]) -> bytes:
        # Every part is length-prefixed, so no credential and scope list can spell another's
        # (a credential ending in "\0scope" with no scopes vs the credential with that scope).
        raw = credential.encode("utf-8", "surrogatepass")
        mac = self._keyed.copy()
        mac.update(kind + len(raw).to_bytes(4, "big") + raw)
        for scope in sorted(s.encode("utf-8", "surrogatepass") for s in scopes):
            mac.update(len(scope).to_bytes(4, "big") + scope)
        return mac.digest()

    def verify_api_key(
        self, api_key: str, required_scopes: Iterable[str] = ()
    ) -> key_service_pb2.VerifyApiKeyResponse:
        """The VerifyApiKey answer for ``api_key``: from memory when safe, else a real call.

        Raises:
            errors.ZumikError: the real call failed (as ``KeyServiceStub.VerifyApiKey``).
        """
        scopes = required_scopes if isinstance(required_scopes, tuple) else tuple(required_scopes)
        key = self._key(b"k\x00", api_key, scopes)
        cached = self.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        ticket = self.cache.ticket()
        answer: key_service_pb2.VerifyApiKeyResponse = self._stub.VerifyApiKey(
            key_service_pb2.VerifyApiKeyRequest(key=api_key, required_scopes=scopes),
            timeout=self._timeout,
        )
        return self._keep(ticket, key, answer, answer.api_key)

    def verify_session(
        self, token: str, required_scopes: Iterable[str] = ()
    ) -> key_service_pb2.VerifySessionResponse:
        """The VerifySession answer for ``token``: from memory when safe, else a real call.

        A cached answer does not slide the session's idle timeout; the first real call after
        the answer expires does (the answer lives at most half the claim's remaining life, and
        the claim never outlives the idle timeout).

        Raises:
            errors.ZumikError: the real call failed (as ``KeyServiceStub.VerifySession``).
        """
        scopes = required_scopes if isinstance(required_scopes, tuple) else tuple(required_scopes)
        key = self._key(b"s\x00", token, scopes)
        cached = self.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        ticket = self.cache.ticket()
        answer: key_service_pb2.VerifySessionResponse = self._stub.VerifySession(
            key_service_pb2.VerifySessionRequest(token=token, required_scopes=scopes),
            timeout=self._timeout,
        )
        return self._keep(ticket, key, answer, answer.session)

    def _keep(self, ticket: _Ticket, key: bytes, answer: _Answer, name: str) -> _Answer:
        if answer.result == _VALID and answer.HasField("claim_expire_time"):
            self.cache.put(
                ticket,
                key,
                answer,
                credential_id=_last_segment(name),
                tenant=answer.tenant,
                project=answer.project,
                lifetime=_wall_seconds(answer) - self._wall(),
            )
        return answer

    # -- following the feed ----------------------------------------------------------------

    def _apply(self, message: key_service_pb2.WatchRevocationsResponse) -> None:
        kind = message.WhichOneof("event")
        if kind == "credential":
            self.cache.drop_credential(message.credential.credential_id)
        elif kind == "purge":
            self.cache.drop_scope(message.purge.tenant, message.purge.project)
        elif kind == "synced":
            synced = message.synced
            interval = synced.heartbeat_interval.ToTimedelta().total_seconds()
            interval = interval if interval > 0 else DEFAULT_HEARTBEAT
            bound = synced.propagation_bound.ToTimedelta().total_seconds()
            bound = bound if bound > 0 else DEFAULT_PROPAGATION_BOUND
            self._set_stall(stall_limit(interval, bound), interval)
            self.cache.quarantine = max(self.cache.quarantine, bound)
            self.cache.mark_synced(resync=synced.resync)
            self._synced_event.set()
        self.position, self.position_tag = message.position, message.position_tag
        self.cache.heard()

    def _set_stall(self, limit: float, interval: float) -> None:
        """Apply the server's silence limit (a caller's ``stall_after`` only tightens it)."""
        wanted = self._fixed_stall
        if wanted is not None and wanted > limit and not self._capped_warned:
            self._capped_warned = True
            _LOG.warning(
                "stall_after %.3f s exceeds what the server's propagation bound allows; "
                "capped to %.3f s",
                wanted,
                limit,
            )
        self.cache.stall_after = limit if wanted is None else min(wanted, limit)
        self._reconnect_after = max(self.cache.stall_after, RECONNECT_INTERVALS * interval)

    def _follow(self) -> None:
        backoff = 0.1
        while not self._closed.is_set():
            try:
                call: Any = self._stub.WatchRevocations(
                    key_service_pb2.WatchRevocationsRequest(
                        resume_after=self.position, resume_tag=self.position_tag
                    ),
                    timeout=None,
                )
                with self._call_lock:
                    self._call = call
                if self._closed.is_set():
                    call.cancel()
                for message in call:
                    self._apply(message)
                    backoff = 0.1
                self.last_error = None
            except grpc.RpcError as exc:
                self.last_error = exc
            except Exception as exc:  # noqa: BLE001 - never let the follower die silently
                self.last_error = exc
                _LOG.exception("revocation feed follower failed")
            finally:
                self.cache.mark_desynced()
                self._synced_event.clear()
                with self._call_lock:
                    self._call = None
            if self._closed.wait(backoff * (0.5 + secrets.randbelow(1000) / 1000)):
                return
            backoff = min(backoff * 2, 5.0)

    def _watch(self) -> None:
        """Cut a stream that went silent, so the follower reconnects (and resyncs)."""
        while not self._closed.wait(max(0.05, self.cache.stall_after / 4)):
            # The cache stops answering from memory at stall_after by itself (it checks on
            # every lookup); the stream is cut only after a longer silence, so a heartbeat
            # that is merely late does not cost a reconnect.
            stalled = (
                self._synced_event.is_set() and self.cache.silent_for() > self._reconnect_after
            )
            if stalled:
                _LOG.warning("revocation feed silent too long; reconnecting")
                # Fail closed now, not when the follower has wound the stream down, and cut
                # this stream once: it is no longer synced, so it is not judged again (the
                # follower's next stream is judged once it is synced, its clock restarted).
                self._synced_event.clear()
                self.cache.mark_desynced()
                self._cancel()

    def _cancel(self) -> None:
        with self._call_lock:
            call = self._call
        if call is not None:
            call.cancel()
