"""Tenant claims that refresh themselves, attached per call through a call-credentials plugin.

A *claim provider* is any zero-argument callable that returns the current signed claim: a
function, a lambda, or an object with ``__call__`` such as :class:`ApiKeyClaimProvider`. A
channel from ``connect(..., claim=provider)`` asks it on every call (every attempt, when a call
is retried) from grpc's metadata plugin and sends the answer as ``zumik-claim`` metadata, so a
provider that refreshes keeps long-lived channels working across claim expiry.

:class:`ApiKeyClaimProvider` and :class:`SessionClaimProvider` verify an API key or a session
token (``KeyService.VerifyApiKey`` / ``VerifySession``, over a channel whose certificate the
server's policy lets call them: the gateway role) and cache the claim until half its lifetime
has passed, then verify again. A claim is at most 5 minutes long, so a refresh happens at most
every 2.5 minutes per provider, whatever the call rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import grpc
from google.protobuf import timestamp_pb2
from zumik.secrets.v1 import common_pb2, key_service_pb2, key_service_pb2_grpc

from zumik_secrets_client import errors

__all__ = [
    "CLAIM_METADATA_KEY",
    "ApiKeyClaimProvider",
    "ClaimCache",
    "ClaimProvider",
    "SessionClaimProvider",
    "claim_call_credentials",
    "static_claim",
    "validate_claim",
]

#: Metadata key that carries the caller's signed tenant claim.
CLAIM_METADATA_KEY: Final = "zumik-claim"

#: Never cache a claim for less than this, so a skewed clock cannot cause a verify per call.
_MIN_REFRESH_SECONDS: Final = 1.0
#: Keep using a still-valid claim when a refresh fails with one of these (the verifier is
#: briefly down); a refused credential is never papered over.
_TRANSIENT: Final = (errors.Unavailable, errors.DeadlineExceeded, errors.ResourceExhausted)


class ClaimProvider(Protocol):
    """Anything called with no arguments that returns the signed claim to send."""

    def __call__(self) -> str:
        """Return the current claim (may block briefly to refresh it)."""
        ...


def validate_claim(claim: object) -> str:
    """Return ``claim`` if it can be sent as metadata; the message never echoes it.

    Raises:
        ValueError: if it is not a non-empty printable ASCII string.
    """
    if not (isinstance(claim, str) and claim and claim.isascii() and claim.isprintable()):
        raise ValueError("claim must be non-empty printable ASCII")
    return claim


def static_claim(claim: str) -> ClaimProvider:
    """A provider that always returns ``claim`` (checked once, here)."""
    value = validate_claim(claim)

    def provide() -> str:
        return value

    provide.zumik_static = True  # type: ignore[attr-defined] # the aio plugin calls it inline
    return provide


class _Slot:
    """Where the plugin leaves a provider's exception for the call that triggered it."""

    __slots__ = ("error", "provider")

    def __init__(self, provider: object = None) -> None:
        self.error: BaseException | None = None
        #: The provider asked for this call's claim (told when the server refuses the claim).
        self.provider = provider


def gave_up(slot: _Slot) -> bool:
    """True when an earlier attempt of this call got an error from the provider that asking
    again cannot fix (a rejected credential, a bad value, a bug in the provider).

    grpc reports a failed plugin as UNAVAILABLE, so an idempotent call is retried; such a retry
    must not verify a rejected credential again. A transient error (the verifier unavailable)
    lets the retry ask the provider again.
    """
    return slot.error is not None and not isinstance(slot.error, _TRANSIENT)


class _ClaimPlugin(grpc.AuthMetadataPlugin):
    """grpc metadata plugin: asks the provider and hands the claim to grpc."""

    __slots__ = ("_provider", "_slot")

    def __init__(self, provider: ClaimProvider, slot: _Slot | None) -> None:
        self._provider = provider
        self._slot = slot

    def __repr__(self) -> str:
        return f"_ClaimPlugin(provider={type(self._provider).__name__})"

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        if self._slot is not None and gave_up(self._slot):
            callback((), _ProviderFailed(type(self._slot.error).__name__))
            return
        try:
            claim = validate_claim(self._provider())
        except Exception as exc:  # noqa: BLE001 - every failure must reach the callback
            if self._slot is not None:
                self._slot.error = exc
            # grpc turns this into an INTERNAL status; the interceptor raises `exc` instead.
            # Only the type is named: the text of a provider's exception could hold a secret.
            callback((), _ProviderFailed(type(exc).__name__))
            return
        callback(((CLAIM_METADATA_KEY, claim),), None)


class _ProviderFailed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(f"claim provider failed ({kind})")


def claim_call_credentials(
    provider: ClaimProvider, *, slot: _Slot | None = None
) -> grpc.CallCredentials:
    """Call credentials that send ``provider()`` as ``zumik-claim`` metadata on every call.

    For use with stubs on channels you open yourself; ``connect(..., claim=provider)`` does
    this for you (and raises the provider's own exception when it fails).
    """
    return grpc.metadata_call_credentials(_ClaimPlugin(provider, slot), name="zumik-claim")


def refused_claim(provider: object, error: BaseException) -> None:
    """Tell a caching provider that the server refused the claim it gave (expired, revoked
    credential, retired signing key, ...), so that the next call verifies again."""
    if (
        isinstance(error, errors.Unauthenticated)
        and (error.reason or "").startswith("CLAIM_")
        and error.reason != "CLAIM_MISSING"
    ):
        invalidate = getattr(provider, "invalidate", None)
        if callable(invalidate):
            invalidate()


def provider_error(slot: _Slot, failure: errors.ZumikError) -> errors.ZumikError:
    """The error to raise for a call whose claim provider failed (``failure`` is grpc's)."""
    cause = slot.error
    if isinstance(cause, errors.ZumikError):
        return cause
    wrapped = errors.ClaimProviderError(
        f"the claim provider raised {type(cause).__name__}",
        code=grpc.StatusCode.UNAUTHENTICATED,
    )
    wrapped.__cause__ = cause
    return wrapped


# ---------------------------------------------------------------- verifying providers


def _expiry_seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


_VerifyAnswer = tuple[common_pb2.VerifyResult.ValueType, str, timestamp_pb2.Timestamp]


class ClaimCache:
    """When a verified claim must be verified again: the shared logic of the sync and aio
    providers (half-life refresh, keep a valid claim through a transient verifier failure)."""

    def __init__(
        self,
        *,
        refresh_fraction: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        """Create an empty cache."""
        if not 0 < refresh_fraction < 1:
            raise ValueError("refresh_fraction must be between 0 and 1")
        self._fraction = refresh_fraction
        self._clock = clock
        self._wall_clock = wall_clock
        self._claim: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        #: How many times the credential was verified.
        self.refreshes = 0

    def __repr__(self) -> str:
        state = "<cached>" if self._claim is not None else None
        return f"ClaimCache(claim={state}, refreshes={self.refreshes})"

    def invalidate(self) -> None:
        """Forget the cached claim (the server refused it): the next call verifies again."""
        self._claim = None

    def fresh(self) -> str | None:
        """The cached claim if it is not yet due for a refresh."""
        if self._claim is not None and self._clock() < self._refresh_at:
            return self._claim
        return None

    def on_failure(self, error: BaseException) -> str:
        """The claim to use when verifying raised ``error``; re-raises when there is none."""
        if (
            isinstance(error, _TRANSIENT)
            and self._claim is not None
            and self._clock() < self._expires_at - 1.0
        ):
            return self._claim  # still valid: try again on a later call
        raise error

    def store(self, answer: _VerifyAnswer) -> str:
        """Take a verify answer: cache and return its claim, or raise CredentialRejected."""
        result, claim, expire = answer
        self.refreshes += 1
        if result != common_pb2.VERIFY_RESULT_VALID:
            self._claim = None
            raise errors.CredentialRejected(common_pb2.VerifyResult.Name(result))
        validate_claim(claim)
        lifetime = _expiry_seconds(expire) - self._wall_clock()
        received = self._clock()
        self._expires_at = received + lifetime
        self._refresh_at = received + max(_MIN_REFRESH_SECONDS, lifetime * self._fraction)
        self._claim = claim
        return claim


class _VerifyingProvider:
    """Verify a credential, cache the claim until half its lifetime, then verify again."""

    def __init__(
        self,
        *,
        refresh_fraction: float,
        timeout: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._timeout = timeout
        self._cache = ClaimCache(
            refresh_fraction=refresh_fraction, clock=clock, wall_clock=wall_clock
        )
        self._lock = threading.Lock()

    @property
    def refreshes(self) -> int:
        """How many times the credential was verified (for tests and metrics)."""
        return self._cache.refreshes

    def invalidate(self) -> None:
        """Forget the cached claim; ``connect()`` calls this when the server refuses it."""
        with self._lock:
            self._cache.invalidate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(refreshes={self.refreshes})"

    def _verify(self, timeout: float) -> _VerifyAnswer:
        raise NotImplementedError

    def __call__(self) -> str:
        """Return a claim, verifying the credential again once half its lifetime is over.

        Raises:
            errors.CredentialRejected: the server answered with a result other than VALID.
            errors.ZumikError: the verify call failed and no still-valid claim is cached.
        """
        with self._lock:  # one verification at a time; the others wait for its claim
            claim = self._cache.fresh()
            if claim is not None:
                return claim
            try:
                answer = self._verify(self._timeout)
            except errors.ZumikError as exc:
                return self._cache.on_failure(exc)
            return self._cache.store(answer)


class ApiKeyClaimProvider(_VerifyingProvider):
    """Claims from an API key, re-verified before half of each claim's lifetime has passed.

    Args:
        gateway: a channel (from ``connect()``) whose identity may call ``VerifyApiKey``.
        api_key: the raw API key; kept in memory only, never logged or shown in ``repr``.
        required_scopes: scopes the key must carry (else ``CredentialRejected``).
        refresh_fraction: verify again after this fraction of the claim's lifetime (0.5).
        timeout: deadline of each verify call, in seconds.
    """

    def __init__(
        self,
        gateway: grpc.Channel,
        api_key: str,
        *,
        required_scopes: Sequence[str] = (),
        refresh_fraction: float = 0.5,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Create the provider; nothing is verified until the first claim is asked for."""
        super().__init__(
            refresh_fraction=refresh_fraction, timeout=timeout, clock=clock, wall_clock=wall_clock
        )
        self._stub = key_service_pb2_grpc.KeyServiceStub(gateway)
        self._request = key_service_pb2.VerifyApiKeyRequest(
            key=api_key, required_scopes=list(required_scopes)
        )

    def _verify(self, timeout: float) -> _VerifyAnswer:
        try:
            reply = self._stub.VerifyApiKey(self._request, timeout=timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        return reply.result, reply.claim, reply.claim_expire_time


class SessionClaimProvider(_VerifyingProvider):
    """Claims from a session token, re-verified before half of each claim's lifetime.

    Args:
        gateway: a channel (from ``connect()``) whose identity may call ``VerifySession``.
        token: the raw session token; kept in memory only.
        required_scopes: scopes the session must carry (else ``CredentialRejected``).
        refresh_fraction: verify again after this fraction of the claim's lifetime (0.5).
        timeout: deadline of each verify call, in seconds.
    """

    def __init__(
        self,
        gateway: grpc.Channel,
        token: str,
        *,
        required_scopes: Sequence[str] = (),
        refresh_fraction: float = 0.5,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Create the provider; nothing is verified until the first claim is asked for."""
        super().__init__(
            refresh_fraction=refresh_fraction, timeout=timeout, clock=clock, wall_clock=wall_clock
        )
        self._stub = key_service_pb2_grpc.KeyServiceStub(gateway)
        self._request = key_service_pb2.VerifySessionRequest(
            token=token, required_scopes=list(required_scopes)
        )

    def _verify(self, timeout: float) -> _VerifyAnswer:
        try:
            reply = self._stub.VerifySession(self._request, timeout=timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        return reply.result, reply.claim, reply.claim_expire_time
