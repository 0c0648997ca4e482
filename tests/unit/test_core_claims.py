"""Tenant claims: pinned vectors, the bad-input matrix, and the verified-claim cache."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors.make_vectors import fixed_rand
from zumik_secrets.core import claims, primitives
from zumik_secrets.core.errors import InvalidArgument, Unauthenticated

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "claims.json").read_text())
PRIVATE = bytes.fromhex(VECTORS["private_key"])
PUBLIC = bytes.fromhex(VECTORS["public_key"])
KID = VECTORS["kid"]
AUD = VECTORS["audience"]
ISS = VECTORS["issuer"]
NOW = 1_700_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canon(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def forge(header: Any, payload: Any, private: bytes = PRIVATE) -> str:
    """Sign arbitrary header/payload JSON independently of ClaimSigner."""
    signing_input = f"{b64(canon(header))}.{b64(canon(payload))}"
    sig = primitives.Ed25519Signer(private).sign(signing_input.encode())
    return f"{signing_input}.{b64(sig)}"


def header(**over: Any) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "JWT", "kid": KID, **over}


def payload(**over: Any) -> dict[str, Any]:
    base = {
        "iss": ISS,
        "aud": AUD,
        "sub": "key_0000000000000000000001",
        "tid": "acme",
        "pid": "web",
        "scp": ["keys.read"],
        "jti": "j1",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
    }
    base.update(over)
    return base


def lookup(kid: str) -> bytes | None:
    return PUBLIC if kid == KID else None


def verifier(**kwargs: Any) -> claims.ClaimVerifier:
    return claims.ClaimVerifier(AUD, lookup, **kwargs)


def signer(rand: Any = None) -> claims.ClaimSigner:
    if rand is None:
        return claims.ClaimSigner(KID, PRIVATE, ISS, AUD)
    return claims.ClaimSigner(KID, PRIVATE, ISS, AUD, rand=rand)


# ---------------------------------------------------------------- vectors


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["tenant_id"])
def test_vectors(case: dict[str, Any]) -> None:
    assert primitives.ed25519_public(PRIVATE) == PUBLIC
    s = signer(fixed_rand(bytes.fromhex(case["jti_random"])))
    token, claim = s.mint(
        case["tenant_id"],
        case["project_id"],
        case["subject"],
        case["scopes"],
        case["now"],
        case["ttl_seconds"],
    )
    assert token == case["token"]
    assert claim.jti == case["jti"]
    # Independent reconstruction of the exact bytes.
    expected = forge(
        {"alg": "EdDSA", "typ": "JWT", "kid": KID},
        {
            "iss": ISS,
            "aud": AUD,
            "sub": case["subject"],
            "tid": case["tenant_id"],
            "pid": case["project_id"],
            "scp": case["scopes"],
            "jti": case["jti"],
            "iat": case["now"],
            "nbf": case["now"],
            "exp": case["now"] + case["ttl_seconds"],
        },
    )
    assert token == expected
    h = unb64(token.split(".")[0])
    assert h == b'{"alg":"EdDSA","kid":"sk-2024-01","typ":"JWT"}'
    verified = verifier().verify(case["token"], case["now"] + 1)
    assert verified == claim
    assert verified.key_id == KID
    assert verified.scopes == tuple(case["scopes"])
    assert verified.expires_at - verified.issued_at == case["ttl_seconds"]


# ---------------------------------------------------------------- minting


def test_mint_fields() -> None:
    token, claim = signer().mint("acme", "web", "user-1", ["a", "b.c"], NOW, 120)
    assert token.count(".") == 2
    assert claim.issued_at == claim.not_before == NOW
    assert claim.expires_at == NOW + 120
    assert claim.has_scope("b.c") and not claim.has_scope("c")
    assert len(claim.jti) == 22
    assert signer().mint("acme", "web", "u", [], NOW, 60)[1].jti != claim.jti
    assert PRIVATE.hex() not in repr(signer())


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ttl_seconds": 301}, "CLAIM_TTL_TOO_LONG"),
        ({"ttl_seconds": 0}, "CLAIM_TTL_TOO_LONG"),
        ({"ttl_seconds": -5}, "CLAIM_TTL_TOO_LONG"),
        ({"tenant_id": "Acme"}, "INVALID_NAME"),
        ({"project_id": ""}, "INVALID_NAME"),
        ({"scopes": ["BAD"]}, "INVALID_SCOPE"),
        ({"scopes": "keys.read"}, "CLAIM_INVALID"),
        ({"scopes": ["a"] * 65}, "CLAIM_INVALID"),
        ({"subject": ""}, "CLAIM_INVALID"),
        ({"subject": "x\n"}, "CLAIM_INVALID"),
    ],
)
def test_mint_rejects(kwargs: dict[str, Any], reason: str) -> None:
    args: dict[str, Any] = {
        "tenant_id": "acme",
        "project_id": "web",
        "subject": "s",
        "scopes": ["a"],
        "now": NOW,
        "ttl_seconds": 60,
    }
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as info:
        signer().mint(**args)
    assert info.value.reason == reason


def test_signer_rejects_bad_kid() -> None:
    with pytest.raises(InvalidArgument):
        claims.ClaimSigner("", PRIVATE, ISS, AUD)
    with pytest.raises(InvalidArgument):
        claims.ClaimSigner("k\n", PRIVATE, ISS, AUD)


# ---------------------------------------------------------------- bad-input matrix

GOOD = forge(header(), payload())


def flip(token: str, segment: int, index: int = 5) -> str:
    """Replace one base64url character in a segment with another valid one."""
    parts = token.split(".")
    seg = parts[segment]
    c = seg[index]
    parts[segment] = seg[:index] + ("B" if c != "B" else "C") + seg[index + 1 :]
    return ".".join(parts)


def flip_payload_byte(token: str) -> str:
    h, p, s = token.split(".")
    raw = bytearray(unb64(p))
    raw[raw.index(b"acme")] ^= 0x02  # "acme" -> "ccme": still valid JSON
    return f"{h}.{b64(bytes(raw))}.{s}"


def flip_signature_byte(token: str) -> str:
    h, p, s = token.split(".")
    raw = bytearray(unb64(s))
    raw[10] ^= 0x01
    return f"{h}.{p}.{b64(bytes(raw))}"


OTHER_PRIVATE = bytes(range(32))
DUP_ALG_HEADER = b'{"alg":"EdDSA","alg":"none","kid":"x","typ":"JWT"}'

MATRIX = [
    # structure
    ("empty", "", "CLAIM_MALFORMED"),
    ("two-parts", GOOD.rsplit(".", 1)[0], "CLAIM_MALFORMED"),
    ("four-parts", GOOD + ".x", "CLAIM_MALFORMED"),
    ("too-long", GOOD + "A" * 4096, "CLAIM_MALFORMED"),
    ("non-ascii", GOOD[:-1] + "\u00e9", "CLAIM_MALFORMED"),
    ("bad-base64-header", "!!!." + GOOD.split(".", 1)[1], "CLAIM_MALFORMED"),
    ("padded-signature", GOOD + "==", "CLAIM_MALFORMED"),
    ("header-not-json", f"{b64(b'nope')}.{GOOD.split('.', 1)[1]}", "CLAIM_MALFORMED"),
    ("header-array", forge(["EdDSA"], payload()), "CLAIM_MALFORMED"),
    ("header-no-alg", forge({"typ": "JWT", "kid": KID}, payload()), "CLAIM_MALFORMED"),
    ("header-extra-crit", forge(header(crit=["exp"]), payload()), "CLAIM_MALFORMED"),
    ("header-typ", forge(header(typ="at+jwt"), payload()), "CLAIM_MALFORMED"),
    ("header-kid-int", forge(header(kid=5), payload()), "CLAIM_MALFORMED"),
    ("header-dup-alg", b64(DUP_ALG_HEADER) + "." + GOOD.split(".", 1)[1], "CLAIM_MALFORMED"),
    # algorithm
    (
        "alg-none",
        f"{b64(canon(header(alg='none')))}.{b64(canon(payload()))}.",
        "CLAIM_ALG_NOT_ALLOWED",
    ),
    ("alg-none-lower-sig", forge(header(alg="none"), payload()), "CLAIM_ALG_NOT_ALLOWED"),
    ("alg-HS256", forge(header(alg="HS256"), payload()), "CLAIM_ALG_NOT_ALLOWED"),
    ("alg-ES256", forge(header(alg="ES256"), payload()), "CLAIM_ALG_NOT_ALLOWED"),
    ("alg-eddsa-case", forge(header(alg="eddsa"), payload()), "CLAIM_ALG_NOT_ALLOWED"),
    ("alg-null", forge(header(alg=None), payload()), "CLAIM_ALG_NOT_ALLOWED"),
    # keys and signatures
    ("unknown-kid", forge(header(kid="other"), payload()), "CLAIM_UNKNOWN_KEY"),
    ("other-key", forge(header(), payload(), OTHER_PRIVATE), "CLAIM_BAD_SIGNATURE"),
    ("sig-byte-flipped", flip_signature_byte(GOOD), "CLAIM_BAD_SIGNATURE"),
    ("sig-char-flipped", flip(GOOD, 2), "CLAIM_BAD_SIGNATURE"),
    (
        "sig-63-bytes",
        GOOD.rsplit(".", 1)[0] + "." + b64(unb64(GOOD.rsplit(".", 1)[1])[:63]),
        "CLAIM_BAD_SIGNATURE",
    ),
    ("sig-non-canonical-base64", GOOD[:-4], "CLAIM_MALFORMED"),
    ("sig-empty", GOOD.rsplit(".", 1)[0] + ".", "CLAIM_BAD_SIGNATURE"),
    ("payload-byte-flipped", flip_payload_byte(GOOD), "CLAIM_BAD_SIGNATURE"),
    ("payload-char-flipped", flip(GOOD, 1, 20), "CLAIM_BAD_SIGNATURE"),
    (
        "payload-swapped",
        GOOD.split(".")[0]
        + "."
        + forge(header(), payload(tid="evil")).split(".")[1]
        + "."
        + GOOD.split(".")[2],
        "CLAIM_BAD_SIGNATURE",
    ),
    (
        "header-kid-swapped-same-key",
        forge(header(kid=KID), payload()).replace(
            b64(canon(header())), b64(canon(header(kid=KID + "x")))
        ),
        "CLAIM_UNKNOWN_KEY",
    ),
    # payload content (signed correctly)
    ("payload-not-object", forge(header(), ["x"]), "CLAIM_MALFORMED"),
    (
        "payload-missing-exp",
        forge(header(), {k: v for k, v in payload().items() if k != "exp"}),
        "CLAIM_MALFORMED",
    ),
    ("payload-exp-string", forge(header(), payload(exp=str(NOW + 300))), "CLAIM_MALFORMED"),
    ("payload-exp-float", forge(header(), payload(exp=NOW + 300.0)), "CLAIM_MALFORMED"),
    ("payload-exp-bool", forge(header(), payload(iat=True)), "CLAIM_MALFORMED"),
    ("payload-scp-string", forge(header(), payload(scp="keys.read")), "CLAIM_MALFORMED"),
    ("payload-scp-bad", forge(header(), payload(scp=["Keys"])), "CLAIM_MALFORMED"),
    ("payload-tid-bad", forge(header(), payload(tid="ACME")), "CLAIM_MALFORMED"),
    ("payload-sub-empty", forge(header(), payload(sub="")), "CLAIM_MALFORMED"),
    ("payload-aud-list", forge(header(), payload(aud=[AUD])), "CLAIM_MALFORMED"),
    ("payload-nbf-after-exp", forge(header(), payload(nbf=NOW + 400)), "CLAIM_MALFORMED"),
    ("payload-iat-after-nbf", forge(header(), payload(iat=NOW + 10)), "CLAIM_MALFORMED"),
    # policy
    ("wrong-aud", forge(header(), payload(aud="other-service")), "CLAIM_WRONG_AUDIENCE"),
    ("lifetime-301", forge(header(), payload(exp=NOW + 301)), "CLAIM_LIFETIME_TOO_LONG"),
    ("lifetime-day", forge(header(), payload(exp=NOW + 86400)), "CLAIM_LIFETIME_TOO_LONG"),
    (
        "expired",
        forge(header(), payload(iat=NOW - 400, nbf=NOW - 400, exp=NOW - 100)),
        "CLAIM_EXPIRED",
    ),
    (
        "expired-past-leeway",
        forge(header(), payload(iat=NOW - 305, nbf=NOW - 305, exp=NOW - 5)),
        "CLAIM_EXPIRED",
    ),
    (
        "future-nbf",
        forge(header(), payload(iat=NOW + 6, nbf=NOW + 6, exp=NOW + 60)),
        "CLAIM_NOT_YET_VALID",
    ),
]


@pytest.mark.parametrize(("token", "reason"), [pytest.param(t, r, id=i) for i, t, r in MATRIX])
def test_bad_input_matrix(token: str, reason: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        verifier().verify(token, NOW)
    err = info.value
    assert err.reason == reason
    for part in token.split("."):
        if len(part) > 8:
            assert part not in err.message
    assert token not in str(err) or not token


def test_good_token_and_leeway_edges() -> None:
    v = verifier(max_cache_entries=0)
    assert v.verify(GOOD, NOW).tenant_id == "acme"
    # exp is NOW+300; leeway 5 s accepts until NOW+304 inclusive.
    assert v.verify(GOOD, NOW + 304).project_id == "web"
    with pytest.raises(Unauthenticated) as info:
        v.verify(GOOD, NOW + 305)
    assert info.value.reason == "CLAIM_EXPIRED"
    # nbf NOW: 5 s early is accepted, 6 s is not.
    assert v.verify(GOOD, NOW - 5)
    with pytest.raises(Unauthenticated) as info:
        v.verify(GOOD, NOW - 6)
    assert info.value.reason == "CLAIM_NOT_YET_VALID"


def test_unknown_payload_fields_are_ignored() -> None:
    token = forge(header(), payload(future_claim={"x": 1}))
    assert verifier().verify(token, NOW).tenant_id == "acme"


def test_issuer_check_is_optional() -> None:
    token = forge(header(), payload(iss="someone-else"))
    assert verifier().verify(token, NOW)
    with pytest.raises(Unauthenticated) as info:
        verifier(issuer=ISS).verify(token, NOW)
    assert info.value.reason == "CLAIM_WRONG_ISSUER"


def test_lifetime_limit_configurable() -> None:
    token = forge(header(), payload(exp=NOW + 120))
    with pytest.raises(Unauthenticated) as info:
        verifier(max_lifetime=60).verify(token, NOW)
    assert info.value.reason == "CLAIM_LIFETIME_TOO_LONG"


def test_malformed_public_key_from_lookup_is_unknown_key() -> None:
    v = claims.ClaimVerifier(AUD, lambda kid: b"\x00" * 5)
    with pytest.raises(Unauthenticated) as info:
        v.verify(GOOD, NOW)
    assert info.value.reason == "CLAIM_UNKNOWN_KEY"


def test_every_single_character_substitution_is_rejected() -> None:
    token, _ = signer().mint("acme", "web", "s", ["a"], NOW, 300)
    v = verifier(max_cache_entries=0)
    for i, c in enumerate(token):
        if c == ".":
            continue
        bad = token[:i] + ("A" if c != "A" else "B") + token[i + 1 :]
        with pytest.raises(Unauthenticated):
            v.verify(bad, NOW)


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(st.from_regex(r"[A-Za-z0-9_-]{0,60}", fullmatch=True), min_size=1, max_size=4).map(
            ".".join
        ),
        st.tuples(
            st.dictionaries(
                st.text(max_size=4), st.none() | st.text(max_size=6) | st.integers(), max_size=4
            ),
            st.dictionaries(
                st.text(max_size=4), st.none() | st.text(max_size=6) | st.integers(), max_size=4
            ),
        ).map(lambda hp: forge({**hp[0], "alg": "EdDSA", "kid": KID}, hp[1])),
    )
)
def test_verify_only_raises_unauthenticated(token: str) -> None:
    try:
        verifier(max_cache_entries=0).verify(token, NOW)
    except Unauthenticated as exc:
        assert exc.reason.startswith("CLAIM_")


# ---------------------------------------------------------------- cache


class CountingLookup:
    def __init__(self) -> None:
        self.calls = 0
        self.accepted = {KID: PUBLIC}

    def __call__(self, kid: str) -> bytes | None:
        self.calls += 1
        return self.accepted.get(kid)


def test_cache_hit_skips_verification_but_rechecks_time() -> None:
    look = CountingLookup()
    v = claims.ClaimVerifier(AUD, look)
    first = v.verify(GOOD, NOW)
    assert v.cache_size() == 1 and look.calls == 1
    assert v.verify(GOOD, NOW + 10) is first
    assert look.calls == 1
    with pytest.raises(Unauthenticated) as info:
        v.verify(GOOD, NOW + 400)
    assert info.value.reason == "CLAIM_EXPIRED"
    assert v.cache_size() == 0  # expired entries are dropped on sight


def test_cache_hit_rechecks_not_before() -> None:
    v = verifier()
    token = forge(header(), payload(iat=NOW, nbf=NOW, exp=NOW + 60))
    v.verify(token, NOW)
    with pytest.raises(Unauthenticated) as info:
        v.verify(token, NOW - 100)
    assert info.value.reason == "CLAIM_NOT_YET_VALID"


def test_failures_are_not_cached() -> None:
    v = verifier()
    with pytest.raises(Unauthenticated):
        v.verify(flip_signature_byte(GOOD), NOW)
    assert v.cache_size() == 0


def test_forget_key_and_clear_cache() -> None:
    look = CountingLookup()
    v = claims.ClaimVerifier(AUD, look)
    v.verify(GOOD, NOW)
    other = forge(header(kid="k2"), payload(), OTHER_PRIVATE)
    look.accepted["k2"] = primitives.ed25519_public(OTHER_PRIVATE)
    v.verify(other, NOW)
    assert v.cache_size() == 2
    # Retire KID: the app removes it from the lookup and tells the verifier.
    del look.accepted[KID]
    v.forget_key(KID)
    assert v.cache_size() == 1
    with pytest.raises(Unauthenticated) as info:
        v.verify(GOOD, NOW)
    assert info.value.reason == "CLAIM_UNKNOWN_KEY"
    assert v.verify(other, NOW).key_id == "k2"
    v.clear_cache()
    assert v.cache_size() == 0


def test_forget_key_blocks_racing_insert() -> None:
    """A verify that looked the key up before forget_key must not cache its result."""
    v_holder: list[claims.ClaimVerifier] = []

    def lookup_then_retire(kid: str) -> bytes | None:
        key = lookup(kid)
        v_holder[0].forget_key(kid)  # retirement lands mid-verification
        return key

    v = claims.ClaimVerifier(AUD, lookup_then_retire)
    v_holder.append(v)
    v.verify(GOOD, NOW)
    assert v.cache_size() == 0


def test_cache_is_bounded() -> None:
    v = verifier(max_cache_entries=3)
    tokens = [forge(header(), payload(jti=f"j{i}")) for i in range(5)]
    for t in tokens:
        v.verify(t, NOW)
    assert v.cache_size() == 3
    with pytest.raises(ValueError):
        verifier(max_cache_entries=-1)


def test_cache_thread_safety_smoke() -> None:
    v = verifier(max_cache_entries=50)
    tokens = [forge(header(), payload(jti=f"t{i}")) for i in range(80)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(300):
                t = tokens[(i + offset) % len(tokens)]
                assert v.verify(t, NOW).tenant_id == "acme"
                if i % 97 == 0:
                    v.forget_key("nobody")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n * 7,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert v.cache_size() <= 50


def test_the_credential_id_is_signed_and_read_back() -> None:
    token, claim = signer().mint("acme", "web", "u", ["a"], NOW, 60, credential_id="key_abc")
    assert claim.credential_id == "key_abc"
    verifier = claims.ClaimVerifier(AUD, lambda _kid: signer().public_raw)
    assert verifier.verify(token, NOW).credential_id == "key_abc"
    token, _ = signer().mint("acme", "web", "u", ["a"], NOW, 60)
    assert verifier.verify(token, NOW).credential_id == ""  # the server refuses these
    with pytest.raises(InvalidArgument):
        signer().mint("acme", "web", "u", [], NOW, 60, credential_id="x" * 65)
