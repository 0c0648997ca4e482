"""The authorization policy: which service identity may call which RPC. Deny by default.

A policy is a mapping, normally read from TOML by the server::

    trust_domain = "zumik.local"

    [common]
    # Methods every identity named below may call (reflection, for grpcurl).
    allow = ["grpc.reflection.v1alpha.ServerReflection/*"]

    [identities."spiffe://zumik.local/svc/gateway"]
    allow = ["zumik.secrets.v1.KeyService/VerifyApiKey"]

    [identities."spiffe://zumik.local/svc/control-plane"]
    allow = ["zumik.secrets.v1.TenantService/*"]
    # Methods this identity may call for a tenant named in the request, without a tenant claim.
    without_claim = ["zumik.secrets.v1.TenantService/*"]
    # Optional, default false: may create or rotate sessions of a user other than the
    # claim's own subject (impersonation; see core/authority.py). Grant it sparingly.
    impersonate = false

A pattern is either a full method (`package.Service/Method`) or a whole service
(`package.Service/*`). An identity or method that the policy does not name is refused; an empty
policy refuses everything.

Some methods need a second right besides their own (:data:`REQUIRES_ONE_OF`): the revocation
feed (``KeyService/WatchRevocations``) is for gateways that cache verifications, so it is
allowed only to an identity that the policy also lets call ``VerifyApiKey`` or
``VerifySession``, whatever the patterns say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from zumik_secrets.core.break_glass import BREAK_GLASS_SERVICE, BreakGlassPolicy, is_operator
from zumik_secrets.core.errors import InvalidArgument

_SPIFFE_ID = re.compile(r"^spiffe://[a-z0-9.-]{1,255}(/[A-Za-z0-9._-]{1,128}){1,8}$")
_PATTERN = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*/(\*|[A-Za-z_][A-Za-z0-9_]*)$"
)
_KNOWN_TOP_KEYS = frozenset({"trust_domain", "common", "identities", "break_glass"})
_KNOWN_IDENTITY_KEYS = frozenset({"allow", "without_claim", "description", "impersonate"})

_KEYS = "zumik.secrets.v1.KeyService"
REQUIRES_ONE_OF: dict[str, frozenset[str]] = {
    f"{_KEYS}/WatchRevocations": frozenset({f"{_KEYS}/VerifyApiKey", f"{_KEYS}/VerifySession"}),
}
"""Method -> methods of which the identity must also be allowed one (else METHOD_NOT_ALLOWED)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of checking one identity against one method.

    Attributes:
        allowed: Whether the identity may call the method at all.
        without_claim: Whether it may act for a tenant named in the request without a claim.
        reason: UPPER_SNAKE reason for a refusal (`UNKNOWN_IDENTITY`, `METHOD_NOT_ALLOWED`).
        impersonate: Whether the identity holds the impersonation right (policy flag).
    """

    allowed: bool
    without_claim: bool
    reason: str
    impersonate: bool = False


def _matches(patterns: frozenset[str], method: str) -> bool:
    # method is "/pkg.Service/Method" as gRPC gives it, or "pkg.Service/Method".
    bare = method[1:] if method.startswith("/") else method
    if bare in patterns:
        return True
    service, _, _ = bare.partition("/")
    return f"{service}/*" in patterns


@dataclass(frozen=True, slots=True)
class _Identity:
    allow: frozenset[str]
    without_claim: frozenset[str]
    impersonate: bool = False


class Policy:
    """A parsed, validated authorization policy.

    Decisions are cached per (identity, method): the policy is immutable once built. The cache
    is keyed by caller input, so it holds only identities the policy names and methods the server
    serves (:meth:`limit_cache_to`); any other pair is decided without being remembered (two set
    look-ups: nothing worth caching), so no caller can grow it.
    """

    def __init__(
        self,
        trust_domain: str,
        common: frozenset[str],
        identities: Mapping[str, _Identity],
        break_glass: BreakGlassPolicy | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.break_glass = break_glass if break_glass is not None else BreakGlassPolicy.empty()
        self._common = common
        self._identities = dict(identities)
        self._cache: dict[tuple[str, str], Decision] = {}
        self._cacheable: frozenset[str] | None = None

    def limit_cache_to(self, methods: Iterable[str]) -> None:
        """Cache decisions only for ``methods`` (the ones the server serves, ``/pkg.Svc/M``).

        Until this is called nothing is cached (an unknown method path is attacker input).
        """
        self._cacheable = frozenset(methods)
        self._cache.clear()

    @property
    def cached_decisions(self) -> int:
        """How many decisions the cache holds (bounded: named identities x served methods)."""
        return len(self._cache)

    @property
    def identities(self) -> tuple[str, ...]:
        """The SPIFFE IDs the policy names, sorted."""
        return tuple(sorted(self._identities))

    def decide(self, identity: str | None, method: str) -> Decision:
        """Decide whether ``identity`` may call ``method`` (e.g. ``/pkg.Service/Method``)."""
        key = (identity or "", method)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        decision = self._decide(identity, method)
        if (
            self._cacheable is not None
            and method in self._cacheable
            and (identity or "") in self._identities
        ):
            self._cache[key] = decision
        return decision

    def _decide(self, identity: str | None, method: str) -> Decision:
        entry = self._identities.get(identity or "")
        if entry is None:
            return Decision(allowed=False, without_claim=False, reason="UNKNOWN_IDENTITY")
        if not (_matches(entry.allow, method) or _matches(self._common, method)):
            return Decision(allowed=False, without_claim=False, reason="METHOD_NOT_ALLOWED")
        needs = REQUIRES_ONE_OF.get(method.removeprefix("/"))
        if needs is not None and not any(
            _matches(entry.allow, m) or _matches(self._common, m) for m in needs
        ):
            return Decision(allowed=False, without_claim=False, reason="METHOD_NOT_ALLOWED")
        return Decision(
            allowed=True,
            without_claim=_matches(entry.without_claim, method),
            reason="ALLOWED",
            impersonate=entry.impersonate,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        """Build a policy from parsed TOML.

        Raises:
            InvalidArgument: reason ``POLICY_INVALID`` naming what is wrong.
        """

        def bad(message: str) -> InvalidArgument:
            return InvalidArgument(f"authorization policy: {message}", reason="POLICY_INVALID")

        unknown = set(data) - _KNOWN_TOP_KEYS
        if unknown:
            raise bad(f"unknown top-level keys {sorted(unknown)}")
        trust_domain = data.get("trust_domain", "")
        if not isinstance(trust_domain, str) or not trust_domain:
            raise bad("trust_domain must be a non-empty string")

        def patterns(where: str, value: Any) -> frozenset[str]:
            if value is None:
                return frozenset()
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise bad(f"{where} must be a list of method patterns")
            for p in value:
                if not _PATTERN.match(p):
                    raise bad(
                        f"{where}: {p!r} is not 'package.Service/Method' or 'package.Service/*'"
                    )
            return frozenset(value)

        common_section = data.get("common", {})
        if not isinstance(common_section, Mapping):
            raise bad("[common] must be a table")
        common = patterns("common.allow", common_section.get("allow"))

        identities_section = data.get("identities", {})
        if not isinstance(identities_section, Mapping):
            raise bad("[identities] must be a table")
        identities: dict[str, _Identity] = {}
        for spiffe_id, body in identities_section.items():
            if not _SPIFFE_ID.match(spiffe_id):
                raise bad(f"identity {spiffe_id!r} is not a spiffe:// ID")
            if not spiffe_id.startswith(f"spiffe://{trust_domain}/"):
                raise bad(f"identity {spiffe_id!r} is outside trust domain {trust_domain!r}")
            if not isinstance(body, Mapping):
                raise bad(f"identity {spiffe_id!r} must be a table")
            unknown = set(body) - _KNOWN_IDENTITY_KEYS
            if unknown:
                raise bad(f"identity {spiffe_id!r} has unknown keys {sorted(unknown)}")
            allow = patterns(f"{spiffe_id}.allow", body.get("allow"))
            without = patterns(f"{spiffe_id}.without_claim", body.get("without_claim"))
            stray = {p for p in without if not _matches(allow, p)}
            if stray:
                raise bad(f"{spiffe_id}.without_claim names methods not in allow: {sorted(stray)}")
            impersonate = body.get("impersonate", False)
            if not isinstance(impersonate, bool):
                raise bad(f"{spiffe_id}.impersonate must be true or false")
            if is_operator(spiffe_id, trust_domain):
                # Operators are people: no standing access, only the break-glass service.
                standing = {p for p in allow if not p.startswith(BREAK_GLASS_SERVICE + "/")}
                if standing or impersonate:
                    raise bad(
                        f"operator {spiffe_id!r} may only be allowed {BREAK_GLASS_SERVICE} "
                        f"methods and never impersonate (standing access: {sorted(standing)}); "
                        "use a break-glass grant"
                    )
            identities[spiffe_id] = _Identity(
                allow=allow, without_claim=without, impersonate=impersonate
            )
        break_glass = (
            BreakGlassPolicy.from_mapping(data["break_glass"])
            if "break_glass" in data
            else BreakGlassPolicy.empty()
        )
        return cls(trust_domain, common, identities, break_glass)
