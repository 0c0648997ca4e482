"""KeyService: API keys, sessions and tenant-claim signing keys.

Thin on purpose: take the resource name the interceptor parsed and checked
(:meth:`CallContext.resource_as`) and the caller's authority, call the use case, and convert the
answer. Raw keys and tokens appear only in Create and Rotate responses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from zumik.secrets.v1 import common_pb2 as _common
from zumik.secrets.v1 import key_service_pb2 as _pb
from zumik.secrets.v1 import key_service_pb2_grpc as _grpc

from zumik_secrets.api.call_context import CallContext, current_call
from zumik_secrets.api.convert import duration, read_duration, timestamp
from zumik_secrets.api.servicers.revocations import watch_revocations
from zumik_secrets.api.servicers.signing_keys import signing_key_proto
from zumik_secrets.app.actor import Actor
from zumik_secrets.app.api_keys import MAX_GRACE, MAX_TTL, ApiKeyService, api_key_name, key_state
from zumik_secrets.app.claim_issuer import IssuedClaim
from zumik_secrets.app.metrics import NOOP, Recorder
from zumik_secrets.app.revocation_feed import RevocationFeed
from zumik_secrets.app.sessions import (
    MAX_ABSOLUTE_TIMEOUT,
    MAX_IDLE_TIMEOUT,
    SessionService,
    session_name,
)
from zumik_secrets.app.signing_keys import ISSUER, SigningKeys
from zumik_secrets.app.verification import VerifyResult
from zumik_secrets.core import names
from zumik_secrets.storage.records import ApiKeyRecord, SessionRecord

_STATES = {
    "active": _common.CREDENTIAL_STATE_ACTIVE,
    "revoked": _common.CREDENTIAL_STATE_REVOKED,
    "expired": _common.CREDENTIAL_STATE_EXPIRED,
}
_RESULTS = {
    VerifyResult.VALID: _common.VERIFY_RESULT_VALID,
    VerifyResult.MALFORMED: _common.VERIFY_RESULT_MALFORMED,
    VerifyResult.NOT_FOUND: _common.VERIFY_RESULT_NOT_FOUND,
    VerifyResult.EXPIRED: _common.VERIFY_RESULT_EXPIRED,
    VerifyResult.REVOKED: _common.VERIFY_RESULT_REVOKED,
    VerifyResult.INSUFFICIENT_SCOPE: _common.VERIFY_RESULT_INSUFFICIENT_SCOPE,
}


def _actor(call: CallContext) -> Actor:
    return Actor(identity=call.identity, subject=call.subject, trace_id=call.trace_id)


def _project(field: str) -> names.ProjectName:
    return current_call().resource_as(names.ProjectName, field)


def _key_name() -> names.ApiKeyName:
    return current_call().resource_as(names.ApiKeyName, "name")


def _session_name() -> names.SessionName:
    return current_call().resource_as(names.SessionName, "name")


def _now() -> datetime:
    return datetime.now(UTC)


def api_key_proto(rec: ApiKeyRecord) -> _pb.ApiKey:
    """The wire form of a key's metadata (never the key)."""
    rotated_from = ""
    if rec.rotated_from:
        rotated_from = str(names.ApiKeyName(rec.tenant_id, rec.project_id, rec.rotated_from))
    return _pb.ApiKey(
        name=api_key_name(rec),
        display_name=rec.display_name,
        masked_key=rec.masked_prefix,
        scopes=list(rec.scopes),
        state=_STATES[key_state(rec, _now())],
        environment=rec.env,
        create_time=timestamp(rec.created_at),
        expire_time=timestamp(rec.expire_time),
        revoke_time=timestamp(rec.revoke_time),
        last_used_time=timestamp(rec.last_used_at),
        rotated_from=rotated_from,
    )


def _claim_fields(claim: IssuedClaim | None) -> dict[str, object]:
    if claim is None:
        return {}
    return {
        "claim": claim.token,
        "claim_expire_time": timestamp(datetime.fromtimestamp(claim.expires_at, UTC)),
    }


_ANSWER_CACHE_SIZE = 4096
_Answer = TypeVar("_Answer")


class _ValidAnswers:
    """Built VALID verify answers by claim token.

    While the claim issuer hands out the same claim for a credential (it reuses one while half
    its lifetime is left), the VALID answer is the same message, field for field; building it
    again (protobuf fields, the expiry timestamp) was a visible part of a warm verify. The
    token binds everything in the answer (credential, tenant, project, scopes, expiry).
    Holds public material only (the claim is what the caller receives anyway), at most
    ``_ANSWER_CACHE_SIZE`` answers; emptied when full. The messages are never mutated after
    they are stored.
    """

    def __init__(self) -> None:
        self._answers: dict[str, Any] = {}

    def answer(self, claim: IssuedClaim | None, build: Callable[[], _Answer]) -> _Answer:
        """The answer for ``claim``: the stored one, or ``build()`` (stored when there is a
        claim, i.e. only for VALID answers)."""
        if claim is None:
            return build()
        cached: _Answer | None = self._answers.get(claim.token)
        if cached is None:
            cached = build()
            if len(self._answers) >= _ANSWER_CACHE_SIZE:
                self._answers.clear()
            self._answers[claim.token] = cached
        return cached


class KeyServicer(_grpc.KeyServiceServicer):
    """KeyService over gRPC."""

    def __init__(
        self,
        claim_keys: SigningKeys,
        api_keys: ApiKeyService,
        sessions: SessionService,
        *,
        metrics: Recorder = NOOP,
        revocation_feed: RevocationFeed,
    ) -> None:
        """Serve the given use cases (``metrics`` counts verify results by kind;
        ``revocation_feed`` serves WatchRevocations)."""
        self._revocation_feed = revocation_feed
        self._metrics = metrics
        self._claim_keys = claim_keys
        self._api_keys = api_keys
        self._sessions = sessions
        self._key_answers = _ValidAnswers()
        self._session_answers = _ValidAnswers()

    # -- API keys ------------------------------------------------------------------------------

    def CreateApiKey(
        self, request: _pb.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> _pb.CreateApiKeyResponse:
        """Create a key; the raw key is returned here only."""
        parent = _project("parent")
        ttl = (
            read_duration(request.ttl, "ttl", maximum=MAX_TTL) if request.HasField("ttl") else None
        )
        created = self._api_keys.create(
            parent,
            display_name=request.display_name,
            scopes=list(request.scopes),
            ttl=ttl,
            environment=request.environment,
            actor=_actor(current_call()),
            authority=current_call().authority,
        )
        return _pb.CreateApiKeyResponse(
            api_key=api_key_proto(created.record), raw_key=created.raw_key
        )

    def VerifyApiKey(
        self, request: _pb.VerifyApiKeyRequest, context: grpc.ServicerContext
    ) -> _pb.VerifyApiKeyResponse:
        """Verify a presented key; failures are answers, not statuses."""
        answer = self._api_keys.verify(
            request.key, list(request.required_scopes), _actor(current_call())
        )
        self._metrics.verify_result("api_key", answer.result.name)
        rec = answer.record
        if rec is None:
            return _pb.VerifyApiKeyResponse(result=_RESULTS[answer.result])
        return self._key_answers.answer(
            answer.claim,
            lambda: _pb.VerifyApiKeyResponse(
                result=_RESULTS[answer.result],
                api_key=api_key_name(rec),
                tenant=rec.tenant_id,
                project=rec.project_id,
                scopes=list(rec.scopes),
                **_claim_fields(answer.claim),  # type: ignore[arg-type]
            ),
        )

    def GetApiKey(
        self, request: _pb.GetApiKeyRequest, context: grpc.ServicerContext
    ) -> _pb.GetApiKeyResponse:
        """Return a key's metadata."""
        return _pb.GetApiKeyResponse(api_key=api_key_proto(self._api_keys.get(_key_name())))

    def ListApiKeys(
        self, request: _pb.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> _pb.ListApiKeysResponse:
        """One page of a project's keys (masked prefixes and metadata only)."""
        parent = _project("parent")
        page, token = self._api_keys.list(
            parent,
            page_size=request.page_size,
            page_token=request.page_token,
            show_revoked=request.show_revoked,
        )
        return _pb.ListApiKeysResponse(
            api_keys=[api_key_proto(r) for r in page], next_page_token=token
        )

    def RevokeApiKey(
        self, request: _pb.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> _pb.RevokeApiKeyResponse:
        """Revoke a key (idempotent)."""
        name = _key_name()
        rec = self._api_keys.revoke(name, _actor(current_call()))
        return _pb.RevokeApiKeyResponse(api_key=api_key_proto(rec))

    def RotateApiKey(
        self, request: _pb.RotateApiKeyRequest, context: grpc.ServicerContext
    ) -> _pb.RotateApiKeyResponse:
        """Replace a key; the old one works for the grace period (0: revoked now)."""
        name = _key_name()
        grace = (
            read_duration(request.grace_period, "grace_period", maximum=MAX_GRACE)
            if request.HasField("grace_period")
            else timedelta(0)
        )
        call = current_call()
        rotated = self._api_keys.rotate(name, grace, _actor(call), authority=call.authority)
        return _pb.RotateApiKeyResponse(
            api_key=api_key_proto(rotated.record),
            raw_key=rotated.raw_key,
            previous_api_key=api_key_proto(rotated.previous),
        )

    # -- sessions ------------------------------------------------------------------------------

    def _session_proto(self, rec: SessionRecord) -> _pb.Session:
        return _pb.Session(
            name=session_name(rec),
            user_subject=rec.user_subject,
            scopes=list(rec.scopes),
            state=_STATES[self._sessions.effective_state(rec)],
            create_time=timestamp(rec.created_at),
            last_active_time=timestamp(rec.last_seen_at),
            idle_timeout=duration(rec.idle_timeout_seconds),
            expire_time=timestamp(rec.absolute_expire_time),
            revoke_time=timestamp(rec.revoke_time),
        )

    def CreateSession(
        self, request: _pb.CreateSessionRequest, context: grpc.ServicerContext
    ) -> _pb.CreateSessionResponse:
        """Create a session; the raw token is returned here only."""
        parent = _project("parent")
        idle = (
            read_duration(request.idle_timeout, "idle_timeout", maximum=MAX_IDLE_TIMEOUT)
            if request.HasField("idle_timeout")
            else None
        )
        absolute = (
            read_duration(
                request.absolute_timeout, "absolute_timeout", maximum=MAX_ABSOLUTE_TIMEOUT
            )
            if request.HasField("absolute_timeout")
            else None
        )
        issued = self._sessions.create(
            parent,
            user_subject=request.user_subject,
            scopes=list(request.scopes),
            idle_timeout=idle,
            absolute_timeout=absolute,
            actor=_actor(current_call()),
            authority=current_call().authority,
        )
        return _pb.CreateSessionResponse(
            session=self._session_proto(issued.record), token=issued.token
        )

    def VerifySession(
        self, request: _pb.VerifySessionRequest, context: grpc.ServicerContext
    ) -> _pb.VerifySessionResponse:
        """Verify a presented token; failures are answers, not statuses."""
        answer = self._sessions.verify(
            request.token, list(request.required_scopes), _actor(current_call())
        )
        self._metrics.verify_result("session", answer.result.name)
        rec = answer.record
        if rec is None:
            return _pb.VerifySessionResponse(result=_RESULTS[answer.result])
        return self._session_answers.answer(
            answer.claim,
            lambda: _pb.VerifySessionResponse(
                result=_RESULTS[answer.result],
                session=session_name(rec),
                tenant=rec.tenant_id,
                project=rec.project_id,
                user_subject=rec.user_subject,
                scopes=list(rec.scopes),
                **_claim_fields(answer.claim),  # type: ignore[arg-type]
            ),
        )

    def GetSession(
        self, request: _pb.GetSessionRequest, context: grpc.ServicerContext
    ) -> _pb.GetSessionResponse:
        """Return a session's metadata."""
        rec = self._sessions.get(_session_name())
        return _pb.GetSessionResponse(session=self._session_proto(rec))

    def RotateSession(
        self, request: _pb.RotateSessionRequest, context: grpc.ServicerContext
    ) -> _pb.RotateSessionResponse:
        """Give the session a new token; the old one stops working at once."""
        name = _session_name()
        call = current_call()
        issued = self._sessions.rotate(
            name, list(request.scopes), _actor(call), authority=call.authority
        )
        return _pb.RotateSessionResponse(
            session=self._session_proto(issued.record), token=issued.token
        )

    def RevokeSession(
        self, request: _pb.RevokeSessionRequest, context: grpc.ServicerContext
    ) -> _pb.RevokeSessionResponse:
        """Revoke one session (idempotent)."""
        rec = self._sessions.revoke(_session_name(), _actor(current_call()))
        return _pb.RevokeSessionResponse(session=self._session_proto(rec))

    def RevokeUserSessions(
        self, request: _pb.RevokeUserSessionsRequest, context: grpc.ServicerContext
    ) -> _pb.RevokeUserSessionsResponse:
        """Revoke every active session of one user in a project."""
        parent = _project("parent")
        count = self._sessions.revoke_user(parent, request.user_subject, _actor(current_call()))
        return _pb.RevokeUserSessionsResponse(revoked_count=count)

    def WatchRevocations(
        self, request: _pb.WatchRevocationsRequest, context: grpc.ServicerContext
    ) -> Iterator[_pb.WatchRevocationsResponse]:
        """Stream credential changes and purges to a verifying gateway."""
        yield from watch_revocations(self._revocation_feed, request, context)

    # -- signing keys --------------------------------------------------------------------------

    def ListSigningKeys(
        self, request: _pb.ListSigningKeysRequest, context: grpc.ServicerContext
    ) -> _pb.ListSigningKeysResponse:
        """Publish the public halves of the keys that verify claims now, newest first."""
        records = [rec for rec in self._claim_keys.records() if rec.state in ("active", "retiring")]
        signer = self._claim_keys.signer
        return _pb.ListSigningKeysResponse(
            keys=[signing_key_proto(rec) for rec in reversed(records)],
            audience=signer.audience,
            issuer=ISSUER,
        )

    def RotateSigningKey(
        self, request: _pb.RotateSigningKeyRequest, context: grpc.ServicerContext
    ) -> _pb.RotateSigningKeyResponse:
        """Start signing with a new key; the previous one verifies until its claims expire."""
        new, previous = self._claim_keys.rotate()
        return _pb.RotateSigningKeyResponse(
            key=signing_key_proto(new),
            previous_key=signing_key_proto(previous) if previous is not None else None,
        )
