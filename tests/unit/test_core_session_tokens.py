"""Session tokens: pinned vectors and strict format checks."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vectors.make_vectors import fixed_rand
from zumik_secrets.core import session_tokens
from zumik_secrets.core.errors import InvalidArgument

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "session_tokens.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["random"][:8])
def test_vectors(case: dict[str, str]) -> None:
    random = bytes.fromhex(case["random"])
    raw, token_hash = session_tokens.new_session_token(fixed_rand(random))
    assert raw == case["raw"]
    assert raw == "zs_" + base64.urlsafe_b64encode(random).decode().rstrip("=")
    assert token_hash.hex() == case["token_hash"]
    assert hashlib.sha256(raw.encode()).hexdigest() == case["token_hash"]
    assert session_tokens.hash_session_token(raw).hex() == case["token_hash"]


def test_new_tokens() -> None:
    tokens = {session_tokens.new_session_token()[0] for _ in range(500)}
    assert len(tokens) == 500
    for t in tokens:
        assert len(t) == 46
        session_tokens.validate_session_token(t)


VALID = VECTORS["cases"][2]["raw"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "zs_",
        VALID[:-1],
        VALID + "A",
        VALID + "=",
        "zt_" + VALID[3:],
        "ZS_" + VALID[3:],
        VALID[:10] + "+" + VALID[11:],
        VALID[:10] + "/" + VALID[11:],
        VALID[:-1] + "B",  # non-canonical: the last character carries 4 unused bits
        VALID[:-1] + "\u00e9",
        "zs_" + "A" * 10_000,
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        session_tokens.hash_session_token(text, field="token")
    err = info.value
    assert err.reason == "SESSION_TOKEN_MALFORMED"
    assert err.metadata == {"field": "token"}
    assert VALID[3:] not in err.message


def test_rejects_short_random() -> None:
    with pytest.raises(ValueError):
        session_tokens.new_session_token(lambda n: b"\x00" * 31)


@given(
    st.one_of(st.text(max_size=60), st.from_regex(r"zs_[A-Za-z0-9_=+/-]{41,45}", fullmatch=True))
)
def test_parse_only_raises_invalid_argument(text: str) -> None:
    try:
        session_tokens.validate_session_token(text)
    except InvalidArgument as exc:
        assert exc.reason == "SESSION_TOKEN_MALFORMED"
        return
    assert (
        base64.urlsafe_b64encode(base64.urlsafe_b64decode(text[3:] + "=")).decode()[:-1] == text[3:]
    )


@given(st.binary(min_size=32, max_size=32))
def test_roundtrip(random: bytes) -> None:
    raw, token_hash = session_tokens.new_session_token(fixed_rand(random))
    assert session_tokens.hash_session_token(raw) == token_hash
