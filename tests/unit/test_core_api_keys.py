"""API keys: pinned vectors, checksum behaviour, hashing and secrecy of the raw key."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vectors.make_vectors import seeded_rand
from zumik_secrets.core import api_keys
from zumik_secrets.core.errors import InvalidArgument, Unauthenticated

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "api_keys.json").read_text())
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def independent_check(prefix: str) -> str:
    n = zlib.crc32(prefix.encode())
    out = ""
    for _ in range(6):
        n, r = divmod(n, 62)
        out = B62[r] + out
    return out


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["env"])
def test_vectors(case: dict[str, str]) -> None:
    raw = api_keys.format_api_key(case["env"], case["key_id"], case["secret"])
    assert raw == case["raw"]
    assert raw == f"zk_{case['env']}_{case['key_id']}_{case['secret']}{case['check']}"
    assert case["check"] == independent_check(raw[:-6])
    salt = bytes.fromhex(case["salt"])
    expected_hash = hashlib.sha256(salt + case["secret"].encode()).hexdigest()
    assert expected_hash == case["secret_hash"]
    assert api_keys.hash_secret(salt, case["secret"]).hex() == case["secret_hash"]
    assert api_keys.masked_prefix(case["env"], case["key_id"]) == case["masked_prefix"]
    assert case["masked_prefix"] == f"zk_{case['env']}_{case['key_id']}\u2026"
    parsed = api_keys.parse_api_key(raw)
    assert (parsed.env, parsed.key_id, parsed.secret) == (
        case["env"],
        case["key_id"],
        case["secret"],
    )
    api_keys.check_secret(bytes.fromhex(case["secret_hash"]), salt, parsed.secret)


@pytest.mark.parametrize("case", VECTORS["generated"], ids=lambda c: c["seed"])
def test_generated_vectors(case: dict[str, str]) -> None:
    g = api_keys.generate_api_key(case["env"], rand=seeded_rand(case["seed"]))
    assert g.raw == case["raw"]
    assert g.key_id == case["key_id"]
    assert g.salt.hex() == case["salt"]
    assert g.secret_hash.hex() == case["secret_hash"]
    assert g.masked_prefix == case["masked_prefix"]


def test_generate_parse_check_roundtrip() -> None:
    g = api_keys.generate_api_key("live")
    assert len(g.salt) == 16
    assert g.handle == f"key_{g.key_id}"
    assert g.masked_prefix == f"zk_live_{g.key_id}\u2026"
    assert g.raw.startswith(g.masked_prefix[:-1])
    p = api_keys.parse_api_key(g.raw)
    assert p.key_id == g.key_id and p.handle == g.handle and p.masked_prefix == g.masked_prefix
    api_keys.check_secret(g.secret_hash, g.salt, p.secret)
    with pytest.raises(api_keys.ApiKeyMismatch) as info:
        # A different last character (never the same one: "x" may already end the secret).
        other = "y" if p.secret.endswith("x") else "x"
        api_keys.check_secret(g.secret_hash, g.salt, p.secret[:-1] + other)
    assert isinstance(info.value, Unauthenticated)
    assert info.value.reason == "API_KEY_INVALID"
    with pytest.raises(api_keys.ApiKeyMismatch):
        api_keys.check_secret(g.secret_hash, bytes(16), p.secret)


def test_given_key_id_is_used() -> None:
    g = api_keys.generate_api_key("test", "7Anz3BlOYp1XlUCXc0WLXX")
    assert g.key_id == "7Anz3BlOYp1XlUCXc0WLXX"
    with pytest.raises(InvalidArgument) as info:
        api_keys.generate_api_key("test", "short")
    assert info.value.reason == "API_KEY_MALFORMED"
    with pytest.raises(InvalidArgument):
        api_keys.generate_api_key("LIVE")


def test_secrets_are_uniform_alphabet_and_distinct() -> None:
    keys = [api_keys.generate_api_key("live") for _ in range(200)]
    secrets_ = {api_keys.parse_api_key(k.raw).secret for k in keys}
    assert len(secrets_) == 200
    chars = set("".join(secrets_))
    assert chars <= set(B62)
    assert len(chars) > 55  # all 62 appear with overwhelming probability


def test_repr_hides_raw_and_secret() -> None:
    g = api_keys.generate_api_key("live")
    p = api_keys.parse_api_key(g.raw)
    for text in (repr(g), str(g), repr(p), str(p)):
        assert g.raw not in text
        assert p.secret not in text
        assert g.secret_hash.hex() not in text


RAW = VECTORS["cases"][1]["raw"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "zk_",
        RAW[:-1],
        RAW + "0",
        RAW.replace("zk_", "zK_"),
        RAW.replace("_", "-"),
        "zk_LIVE" + RAW[7:],
        " " + RAW,
        RAW + "\n",
        "zk_x_" + RAW[8:],
        "zk_" + "a" * 197,
        "x" * 10_000,
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        api_keys.parse_api_key(text)
    assert info.value.reason == "API_KEY_MALFORMED"
    assert info.value.metadata == {"field": "api_key"}
    if len(text) > 3:
        assert text.strip() not in info.value.message


def test_id_over_128_bits_is_malformed_after_checksum() -> None:
    raw = api_keys.PREFIX + "live_" + "z" * 22 + "_" + "a" * 32
    raw += api_keys.checksum(raw)
    with pytest.raises(InvalidArgument) as info:
        api_keys.parse_api_key(raw)
    assert info.value.reason == "API_KEY_MALFORMED"


def test_checksum_mismatch_message_has_no_input() -> None:
    bad = RAW[:20] + ("A" if RAW[20] != "A" else "B") + RAW[21:]
    with pytest.raises(InvalidArgument) as info:
        api_keys.parse_api_key(bad)
    assert info.value.reason == "API_KEY_CHECKSUM_MISMATCH"
    assert RAW[12:40] not in info.value.message
    assert bad not in repr(info.value.violations)


def test_every_single_substitution_is_caught() -> None:
    """Exhaustive over positions and the whole base62 alphabet for one key."""
    for i, original in enumerate(RAW):
        for c in B62 + "_-":
            if c == original:
                continue
            with pytest.raises(InvalidArgument) as info:
                api_keys.parse_api_key(RAW[:i] + c + RAW[i + 1 :])
            assert info.value.reason in ("API_KEY_CHECKSUM_MISMATCH", "API_KEY_MALFORMED")


@given(st.data())
def test_substitutions_in_random_keys_are_caught(data: st.DataObject) -> None:
    raw = api_keys.generate_api_key(data.draw(st.from_regex(r"[a-z]{2,8}", fullmatch=True))).raw
    i = data.draw(st.integers(0, len(raw) - 1))
    c = data.draw(st.characters().filter(lambda ch: ch != raw[i]))
    with pytest.raises(InvalidArgument):
        api_keys.parse_api_key(raw[:i] + c + raw[i + 1 :])


@given(st.data())
def test_adjacent_transpositions_are_caught(data: st.DataObject) -> None:
    # CRC32 detects every error burst of up to 32 bits; a swap of two ASCII bytes is one.
    raw = api_keys.generate_api_key("live").raw
    i = data.draw(st.integers(0, len(raw) - 2))
    swapped = raw[:i] + raw[i + 1] + raw[i] + raw[i + 2 :]
    if swapped == raw:
        return
    with pytest.raises(InvalidArgument):
        api_keys.parse_api_key(swapped)


@given(
    st.one_of(
        st.text(max_size=100),
        st.from_regex(r"zk_[a-z]{1,9}_[0-9A-Za-z]{20,24}_[0-9A-Za-z]{36,40}", fullmatch=True),
    )
)
def test_parse_only_raises_invalid_argument(text: str) -> None:
    try:
        parsed = api_keys.parse_api_key(text)
    except InvalidArgument as exc:
        assert exc.reason in ("API_KEY_MALFORMED", "API_KEY_CHECKSUM_MISMATCH")
        return
    assert api_keys.format_api_key(parsed.env, parsed.key_id, parsed.secret) == text


def test_hash_secret_rejects_bad_salt() -> None:
    with pytest.raises(ValueError):
        api_keys.hash_secret(b"short", "x" * 32)
