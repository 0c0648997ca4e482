"""Good and forged tenant claims for the attack matrix and the fuzzers."""

from __future__ import annotations

import base64
import json
import time

from tests import fix_leaks
from tests.fix_server import RunningServer
from zumik_secrets.core.claims import ClaimSigner
from zumik_secrets.core.primitives import generate_ed25519


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _forge(header: dict[str, object], payload: dict[str, object], signer: ClaimSigner) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    sig = signer._signer.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(sig)}"


def bad_claims(
    server: RunningServer, tenant: str, project: str, scopes: tuple[str, ...]
) -> dict[str, tuple[str, str]]:
    """Case -> (claim, expected ErrorInfo reason) for every way a claim can be bad.

    Each claim otherwise names ``tenant``/``project`` with ``scopes``, so the defect alone is
    what the server must catch.
    """
    good = server.mint_claim(tenant, project, scopes)
    now = int(time.time())
    signer = server.runtime.claim_keys.signer
    head, body, sig = good.split(".")
    payload = json.loads(_unb64(body))
    flipped_sig = bytearray(_unb64(sig))
    flipped_sig[len(flipped_sig) // 2] ^= 0x01
    unknown = ClaimSigner("sk_unknown", generate_ed25519(), signer.issuer, signer.audience)
    header = {"alg": "EdDSA", "typ": "JWT", "kid": signer.kid}
    cases = {
        "expired": (
            _forge(
                header, {**payload, "iat": now - 900, "nbf": now - 900, "exp": now - 600}, signer
            ),
            "CLAIM_EXPIRED",
        ),
        "future-dated": (
            _forge(
                header, {**payload, "iat": now + 600, "nbf": now + 600, "exp": now + 800}, signer
            ),
            "CLAIM_NOT_YET_VALID",
        ),
        "wrong-audience": (
            _forge(header, {**payload, "aud": "someone-else"}, signer),
            "CLAIM_WRONG_AUDIENCE",
        ),
        "unknown-kid": (
            unknown.mint(tenant, project, "s", scopes, now, 60)[0],
            "CLAIM_UNKNOWN_KEY",
        ),
        "alg-none": (
            _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": signer.kid}).encode())
            + f".{body}.",
            "CLAIM_ALG_NOT_ALLOWED",
        ),
        "byte-flipped-signature": (
            f"{head}.{body}.{_b64(bytes(flipped_sig))}",
            "CLAIM_BAD_SIGNATURE",
        ),
    }
    for claim, _ in cases.values():
        fix_leaks.REGISTRY.add(claim, "forged claim")
    return cases
