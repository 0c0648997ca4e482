"""KeyService.WatchRevocations: the revocation feed as a server stream (thin).

Who may subscribe is the policy's decision (only identities that may verify credentials, see
:mod:`zumik_secrets.core.policy`); what a subscriber may see is decided here, once: the feed
spans every tenant, so it is served to service identities acting as themselves, never to a
call carrying a tenant claim (a claim-bound caller would otherwise learn other tenants' key
ids and purges). "Carrying a claim" is any claim header at all, not only a claim the
interceptor verified: the interceptor already refuses repeated, empty and binary claim
headers (``CLAIM_MALFORMED``) and invalid claims, and this check of the raw metadata keeps
the feed closed even if a later change let a claim header through unverified. The stream
runs in the stream pool under the caller's per-peer stream cap (the interceptor), and ends
when grpc terminates the call (drain, cancel, connection age).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from zumik.secrets.v1 import key_service_pb2 as _pb

from zumik_secrets.api.call_context import current_call
from zumik_secrets.api.call_headers import carries_claim_header
from zumik_secrets.app.revocation_feed import FeedEvent, FeedMessage, Heartbeat, RevocationFeed
from zumik_secrets.core.errors import InvalidArgument, PermissionDenied

REASON_CLAIM_NOT_ACCEPTED = "CLAIM_NOT_ACCEPTED"

_TYPES = {
    "api_key": _pb.CREDENTIAL_TYPE_API_KEY,
    "session": _pb.CREDENTIAL_TYPE_SESSION,
}


def _time(seconds: float) -> timestamp_pb2.Timestamp | None:
    if seconds == float("inf") or seconds <= 0.0:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def _event(event: FeedEvent) -> _pb.WatchRevocationsResponse:
    if event.credential_id:
        return _pb.WatchRevocationsResponse(
            position=event.position,
            position_tag=event.tag,
            credential=_pb.CredentialChanged(
                credential_id=event.credential_id,
                credential_type=_TYPES.get(event.credential_type, _pb.CREDENTIAL_TYPE_UNSPECIFIED),
                change_time=_time(event.at),
                # A revocation is "refused from 0.0": sent as the change time, never unset.
                valid_until=_time(event.valid_until if event.valid_until > 0.0 else event.at),
                issued_from=_time(event.issued_from),
            ),
        )
    return _pb.WatchRevocationsResponse(
        position=event.position,
        position_tag=event.tag,
        purge=_pb.ScopePurged(
            tenant=event.tenant, project=event.project or "", purge_time=_time(event.at)
        ),
    )


def to_proto(message: FeedMessage, feed: RevocationFeed) -> _pb.WatchRevocationsResponse:
    """The wire form of one feed message."""
    if isinstance(message, FeedEvent):
        return _event(message)
    if isinstance(message, Heartbeat):
        return _pb.WatchRevocationsResponse(
            position=message.position,
            position_tag=message.tag,
            heartbeat=_pb.RevocationFeedHeartbeat(),
        )
    return _pb.WatchRevocationsResponse(
        position=message.position,
        position_tag=message.tag,
        synced=_pb.RevocationFeedSynced(
            resync=message.resync,
            heartbeat_interval=_duration(feed.heartbeat_interval),
            propagation_bound=_duration(feed.propagation_bound),
        ),
    )


def watch_revocations(
    feed: RevocationFeed, request: _pb.WatchRevocationsRequest, context: grpc.ServicerContext
) -> Iterator[_pb.WatchRevocationsResponse]:
    """Serve one subscriber until grpc ends the call.

    Raises:
        PermissionDenied: reason ``CLAIM_NOT_ACCEPTED`` (the call carries a tenant claim, or
            any claim header).
        InvalidArgument: reason ``INVALID_RANGE`` (negative ``resume_after``).
        Aborted: reason ``SUBSCRIBER_TOO_SLOW`` (the subscriber's queue overflowed).
    """
    if current_call().claim is not None or carries_claim_header(context.invocation_metadata()):
        raise PermissionDenied(
            "the revocation feed spans every tenant: subscribe as a service identity, without"
            " a tenant claim",
            reason=REASON_CLAIM_NOT_ACCEPTED,
        )
    if request.resume_after < 0:
        raise InvalidArgument(
            "resume_after must be 0 or a position from an earlier stream",
            reason="INVALID_RANGE",
            metadata={"field": "resume_after"},
        )
    subscription = feed.subscribe(request.resume_after, request.resume_tag)
    try:
        if not context.add_callback(subscription.close):
            return
        for message in subscription.messages():
            yield to_proto(message, feed)
    finally:
        subscription.close()
