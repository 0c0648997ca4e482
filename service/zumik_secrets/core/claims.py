"""Tenant claims: compact JWS (JWT) signed with EdDSA over Ed25519.

Header, exactly: ``{"alg":"EdDSA","kid":<kid>,"typ":"JWT"}``. Payload::

    {"aud","cid","exp","iat","iss","jti","nbf","pid","scp":[...],"sub","tid"}

``cid`` names the credential (API key or session id, never its secret) the claim was minted
from, so revoking that credential can reach the claim (see ``app/claim_revocations.py``); it is
omitted only by signers given no credential id (test vectors), and the server refuses such
claims.

Both are JSON with sorted keys and ``(",", ":")`` separators, base64url without padding; the
signature covers the ASCII ``header.payload``.

Verification raises ``Unauthenticated`` with one of the ``REASON_*`` codes below; messages
never include the token. Unknown *header* fields are rejected (a ``crit`` we do not
understand must not be ignored); unknown *payload* fields are ignored so that a newer signer
can add claims during a rolling upgrade.

Verified claims are cached (see :class:`ClaimVerifier`) because an Ed25519 verify costs about
as much as an empty RPC.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zumik_secrets.core import encoding, names
from zumik_secrets.core.errors import InvalidArgument, Unauthenticated
from zumik_secrets.core.primitives import (
    Ed25519Signer,
    Ed25519Verifier,
    InvalidSignature,
    random_bytes,
    sha256,
)

ALG = "EdDSA"
TYP = "JWT"
MAX_TTL_SECONDS = 300
MAX_TOKEN_BYTES = 4096
DEFAULT_LEEWAY_SECONDS = 5
DEFAULT_CACHE_ENTRIES = 100_000
MAX_KID_LENGTH = 128
MAX_SUBJECT_LENGTH = 256
MAX_SCOPES = 64

REASON_MALFORMED = "CLAIM_MALFORMED"
REASON_ALG_NOT_ALLOWED = "CLAIM_ALG_NOT_ALLOWED"
REASON_UNKNOWN_KEY = "CLAIM_UNKNOWN_KEY"
REASON_BAD_SIGNATURE = "CLAIM_BAD_SIGNATURE"
REASON_EXPIRED = "CLAIM_EXPIRED"
REASON_NOT_YET_VALID = "CLAIM_NOT_YET_VALID"
REASON_WRONG_AUDIENCE = "CLAIM_WRONG_AUDIENCE"
REASON_WRONG_ISSUER = "CLAIM_WRONG_ISSUER"
REASON_LIFETIME_TOO_LONG = "CLAIM_LIFETIME_TOO_LONG"
REASON_TTL_TOO_LONG = "CLAIM_TTL_TOO_LONG"
"""Minting (``InvalidArgument``): the requested TTL is not in 1..300 seconds."""
REASON_INVALID_CLAIM = "CLAIM_INVALID"
"""Minting (``InvalidArgument``): a claim value (tenant, subject, kid...) is malformed."""

_MESSAGES = {
    REASON_MALFORMED: "tenant claim is malformed",
    REASON_ALG_NOT_ALLOWED: "tenant claim algorithm is not allowed",
    REASON_UNKNOWN_KEY: "tenant claim signing key is not known",
    REASON_BAD_SIGNATURE: "tenant claim signature is invalid",
    REASON_EXPIRED: "tenant claim has expired",
    REASON_NOT_YET_VALID: "tenant claim is not yet valid",
    REASON_WRONG_AUDIENCE: "tenant claim is for another audience",
    REASON_WRONG_ISSUER: "tenant claim is from another issuer",
    REASON_LIFETIME_TOO_LONG: f"tenant claim lifetime exceeds {MAX_TTL_SECONDS} seconds",
}


def _fail(reason: str) -> Unauthenticated:
    return Unauthenticated(_MESSAGES[reason], reason=reason)


@dataclass(frozen=True, slots=True)
class TenantClaim:
    """The verified content of a tenant claim. Times are unix seconds."""

    tenant_id: str
    project_id: str
    subject: str
    scopes: tuple[str, ...]
    jti: str
    issued_at: int
    not_before: int
    expires_at: int
    key_id: str
    credential_id: str = ""

    def has_scope(self, scope: str) -> bool:
        """Whether the claim carries ``scope``."""
        return scope in self.scopes


def _canonical_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")


def _bad_mint(field: str, message: str, reason: str = REASON_INVALID_CLAIM) -> InvalidArgument:
    return InvalidArgument(message, reason=reason, metadata={"field": field})


def _valid_kid(kid: object) -> bool:
    return (
        isinstance(kid, str)
        and 0 < len(kid) <= MAX_KID_LENGTH
        and kid.isascii()
        and kid.isprintable()
    )


def _valid_cid(cid: object) -> bool:
    return isinstance(cid, str) and 0 < len(cid) <= 64 and cid.isascii() and cid.isprintable()


def _valid_subject(sub: object) -> bool:
    return isinstance(sub, str) and 0 < len(sub) <= MAX_SUBJECT_LENGTH and sub.isprintable()


class ClaimSigner:
    """Mints tenant claims with one Ed25519 signing key.

    Args:
        kid: Key id published with the public key.
        private_raw: Raw 32-byte Ed25519 private key.
        issuer: ``iss`` value.
        audience: ``aud`` value (the service's name).
        rand: Source of random bytes for ``jti`` (tests inject a fixed one).

    Raises:
        InvalidArgument: Reason ``CLAIM_INVALID`` if ``kid`` is malformed.
        ValueError: If ``private_raw`` is not 32 bytes.
    """

    __slots__ = ("_rand", "_signer", "audience", "issuer", "kid")

    def __init__(
        self,
        kid: str,
        private_raw: bytes,
        issuer: str,
        audience: str,
        *,
        rand: Callable[[int], bytes] = random_bytes,
    ) -> None:
        if not _valid_kid(kid):
            raise _bad_mint("kid", "kid must be 1 to 128 printable ASCII characters")
        self.kid = kid
        self.issuer = issuer
        self.audience = audience
        self._signer = Ed25519Signer(private_raw)
        self._rand = rand

    def __repr__(self) -> str:
        return f"ClaimSigner(kid={self.kid!r}, issuer={self.issuer!r}, audience={self.audience!r})"

    @property
    def public_raw(self) -> bytes:
        """The raw public key that verifies this signer's claims."""
        return self._signer.public_raw

    def mint(
        self,
        tenant_id: str,
        project_id: str,
        subject: str,
        scopes: Sequence[str],
        now: int,
        ttl_seconds: int,
        *,
        credential_id: str = "",
    ) -> tuple[str, TenantClaim]:
        """Mint a claim valid from ``now`` for ``ttl_seconds``.

        ``credential_id`` (the ``cid`` claim) names the API key or session the claim is minted
        from; the server refuses claims without one, since revoking nothing could reach them.

        Returns:
            ``(token, claim)``.

        Raises:
            InvalidArgument: Reason ``CLAIM_TTL_TOO_LONG`` if ``ttl_seconds`` is not in
                1..300; ``CLAIM_INVALID`` if the subject or scope count is wrong;
                ``INVALID_NAME`` / ``INVALID_SCOPE`` for a malformed tenant, project or scope.
        """
        if not isinstance(ttl_seconds, int) or not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise _bad_mint(
                "ttl_seconds",
                f"ttl_seconds must be from 1 to {MAX_TTL_SECONDS}",
                REASON_TTL_TOO_LONG,
            )
        names.validate_tenant_id(tenant_id)
        names.validate_project_id(project_id)
        if not _valid_subject(subject):
            raise _bad_mint("subject", "subject must be 1 to 256 printable characters")
        if isinstance(scopes, str) or len(scopes) > MAX_SCOPES:
            raise _bad_mint("scopes", f"scopes must be a list of at most {MAX_SCOPES}")
        scope_tuple = tuple(names.validate_scope(s) for s in scopes)
        if credential_id and not _valid_cid(credential_id):
            raise _bad_mint("credential_id", "credential_id must be 1 to 64 printable ASCII")
        jti = encoding.base62_encode(self._rand(16), 22)
        claim = TenantClaim(
            tenant_id=tenant_id,
            project_id=project_id,
            subject=subject,
            scopes=scope_tuple,
            jti=jti,
            issued_at=now,
            not_before=now,
            expires_at=now + ttl_seconds,
            key_id=self.kid,
            credential_id=credential_id,
        )
        header = _canonical_json({"alg": ALG, "typ": TYP, "kid": self.kid})
        fields: dict[str, Any] = {"cid": credential_id} if credential_id else {}
        payload = _canonical_json(
            {
                **fields,
                "iss": self.issuer,
                "aud": self.audience,
                "sub": subject,
                "tid": tenant_id,
                "pid": project_id,
                "scp": list(scope_tuple),
                "jti": jti,
                "iat": now,
                "nbf": now,
                "exp": now + ttl_seconds,
            }
        )
        signing_input = (
            encoding.b64url_encode(header) + "." + encoding.b64url_encode(payload)
        ).encode("ascii")
        token = (
            signing_input.decode("ascii")
            + "."
            + encoding.b64url_encode(self._signer.sign(signing_input))
        )
        if len(token) > MAX_TOKEN_BYTES:
            raise _bad_mint("scopes", f"claim would exceed {MAX_TOKEN_BYTES} bytes")
        return token, claim


def _strict_json(data: bytes) -> Any:
    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError("duplicate key")
            out[k] = v
        return out

    def no_constants(_: str) -> Any:
        raise ValueError("non-finite number")

    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constants)
    except (ValueError, RecursionError):
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
        raise _fail(REASON_MALFORMED) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _claim_from_payload(payload: Any, kid: str) -> tuple[TenantClaim, str, str]:
    if not isinstance(payload, dict):
        raise _fail(REASON_MALFORMED)
    try:
        iss, aud, sub = payload["iss"], payload["aud"], payload["sub"]
        tid, pid, scp, jti = payload["tid"], payload["pid"], payload["scp"], payload["jti"]
        iat, nbf, exp = payload["iat"], payload["nbf"], payload["exp"]
    except KeyError:
        raise _fail(REASON_MALFORMED) from None
    cid = payload.get("cid", "")
    if cid != "" and not _valid_cid(cid):
        raise _fail(REASON_MALFORMED)
    if not (
        isinstance(iss, str)
        and isinstance(aud, str)
        and _valid_subject(sub)
        and isinstance(tid, str)
        and names.ID_RE.fullmatch(tid) is not None
        and isinstance(pid, str)
        and names.ID_RE.fullmatch(pid) is not None
        and isinstance(scp, list)
        and len(scp) <= MAX_SCOPES
        and all(isinstance(s, str) and names.SCOPE_RE.fullmatch(s) is not None for s in scp)
        and isinstance(jti, str)
        and 0 < len(jti) <= 64
        and _is_int(iat)
        and _is_int(nbf)
        and _is_int(exp)
        and iat <= nbf < exp
    ):
        raise _fail(REASON_MALFORMED)
    claim = TenantClaim(
        tenant_id=tid,
        project_id=pid,
        subject=sub,
        scopes=tuple(scp),
        jti=jti,
        issued_at=iat,
        not_before=nbf,
        expires_at=exp,
        key_id=kid,
        credential_id=cid,
    )
    return claim, iss, aud


class ClaimVerifier:
    """Verifies tenant claims, caching the verified ones.

    Args:
        audience: The ``aud`` this service accepts.
        key_lookup: Returns the raw Ed25519 public key for an accepted ``kid``, or None.
            Called on cache misses only; it should be an in-memory lookup.
        max_lifetime: Longest accepted ``exp - iat``, in seconds.
        leeway: Clock skew tolerated on ``exp`` and ``nbf``, in seconds.
        issuer: If given, ``iss`` must equal it (reason ``CLAIM_WRONG_ISSUER``).
        max_cache_entries: Bound on the verified-claim cache.

    Cache: keyed by SHA-256 of the token, holding the verified claim until its ``exp``; a hit
    still checks ``exp`` and ``nbf`` against ``now``. When the app retires or revokes a signing
    key it must call :meth:`forget_key` (or :meth:`clear_cache`), which also blocks a verify
    that raced with it from inserting a stale entry (a generation counter). When full, the
    oldest inserted entries are evicted first (claims live at most 5 minutes, so insertion
    order is close to expiry order).

    Thread safety: every cache read and write happens under one ``threading.Lock``, held only
    for dict operations (never during signature verification), so one verifier can be shared
    by all the threads of a gRPC server.
    """

    def __init__(
        self,
        audience: str,
        key_lookup: Callable[[str], bytes | None],
        *,
        max_lifetime: int = MAX_TTL_SECONDS,
        leeway: int = DEFAULT_LEEWAY_SECONDS,
        issuer: str | None = None,
        max_cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        if max_cache_entries < 0:
            raise ValueError("max_cache_entries must be >= 0")
        self.audience = audience
        self.issuer = issuer
        self.max_lifetime = max_lifetime
        self.leeway = leeway
        self._key_lookup = key_lookup
        self._max_entries = max_cache_entries
        self._lock = threading.Lock()
        self._cache: dict[bytes, TenantClaim] = {}
        #: Look-ups answered from the cache and those that were not (read by the metrics).
        self.cache_hits = 0
        self.cache_misses = 0
        self._verifiers: dict[str, Ed25519Verifier] = {}
        self._generation = 0

    def __repr__(self) -> str:
        return f"ClaimVerifier(audience={self.audience!r}, cached={len(self._cache)})"

    def cache_size(self) -> int:
        """Number of cached verified claims."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Drop every cached claim and key object (e.g. after a signing key is revoked)."""
        with self._lock:
            self._cache.clear()
            self._verifiers.clear()
            self._generation += 1

    def forget_key(self, kid: str) -> None:
        """Drop cached claims signed by ``kid`` and its key object (call on key retirement)."""
        with self._lock:
            self._generation += 1
            self._verifiers.pop(kid, None)
            stale = [k for k, c in self._cache.items() if c.key_id == kid]
            for k in stale:
                del self._cache[k]

    def _check_time(self, claim: TenantClaim, now: int) -> None:
        if now >= claim.expires_at + self.leeway:
            raise _fail(REASON_EXPIRED)
        if now + self.leeway < claim.not_before:
            raise _fail(REASON_NOT_YET_VALID)

    def _verifier_for(self, kid: str) -> Ed25519Verifier:
        with self._lock:
            v = self._verifiers.get(kid)
        public_raw = self._key_lookup(kid)
        if public_raw is None:
            raise _fail(REASON_UNKNOWN_KEY)
        if v is not None and v.public_raw == public_raw:
            return v
        try:
            v = Ed25519Verifier(public_raw)
        except InvalidSignature:
            raise _fail(REASON_UNKNOWN_KEY) from None
        with self._lock:
            if len(self._verifiers) < 1024:
                self._verifiers[kid] = v
        return v

    def verify(self, token: str, now: int) -> TenantClaim:
        """Verify a claim token at time ``now`` (unix seconds).

        Raises:
            Unauthenticated: With reason ``CLAIM_MALFORMED``, ``CLAIM_ALG_NOT_ALLOWED``,
                ``CLAIM_UNKNOWN_KEY``, ``CLAIM_BAD_SIGNATURE``, ``CLAIM_WRONG_AUDIENCE``,
                ``CLAIM_WRONG_ISSUER``, ``CLAIM_LIFETIME_TOO_LONG``, ``CLAIM_EXPIRED`` or
                ``CLAIM_NOT_YET_VALID``. The message never includes the token.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise _fail(REASON_MALFORMED)
        raw = token.encode("ascii")
        digest = sha256(raw)
        with self._lock:
            cached = self._cache.get(digest)
            generation = self._generation
            if cached is None:
                self.cache_misses += 1
            else:
                self.cache_hits += 1
        if cached is not None:
            try:
                self._check_time(cached, now)
            except Unauthenticated:
                with self._lock:
                    self._cache.pop(digest, None)
                raise
            return cached

        claim = self._verify_uncached(raw, now)

        if self._max_entries:
            with self._lock:
                if generation == self._generation:
                    while len(self._cache) >= self._max_entries:
                        del self._cache[next(iter(self._cache))]
                    self._cache[digest] = claim
        return claim

    def _verify_uncached(self, raw: bytes, now: int) -> TenantClaim:
        parts = raw.split(b".")
        if len(parts) != 3:
            raise _fail(REASON_MALFORMED)
        h64, p64, s64 = parts
        try:
            header_bytes = encoding.b64url_decode(h64.decode("ascii"))
            payload_bytes = encoding.b64url_decode(p64.decode("ascii"))
            signature = encoding.b64url_decode(s64.decode("ascii"))
        except ValueError:
            raise _fail(REASON_MALFORMED) from None

        header = _strict_json(header_bytes)
        if not isinstance(header, dict) or "alg" not in header:
            raise _fail(REASON_MALFORMED)
        if header["alg"] != ALG:
            raise _fail(REASON_ALG_NOT_ALLOWED)
        if set(header) != {"alg", "typ", "kid"} or header["typ"] != TYP:
            raise _fail(REASON_MALFORMED)
        kid = header["kid"]
        if not _valid_kid(kid):
            raise _fail(REASON_MALFORMED)

        verifier = self._verifier_for(kid)
        try:
            verifier.verify(signature, h64 + b"." + p64)
        except InvalidSignature:
            raise _fail(REASON_BAD_SIGNATURE) from None

        # Only signed bytes are parsed from here on.
        claim, iss, aud = _claim_from_payload(_strict_json(payload_bytes), kid)
        if aud != self.audience:
            raise _fail(REASON_WRONG_AUDIENCE)
        if self.issuer is not None and iss != self.issuer:
            raise _fail(REASON_WRONG_ISSUER)
        if claim.expires_at - claim.issued_at > self.max_lifetime:
            raise _fail(REASON_LIFETIME_TOO_LONG)
        self._check_time(claim, now)
        return claim
