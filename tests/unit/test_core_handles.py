"""Handles: pinned vectors, round trips, and strict parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vectors.make_vectors import fixed_rand, seeded_rand
from zumik_secrets.core import handles
from zumik_secrets.core.errors import InvalidArgument

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "handles.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["kind"])
def test_vectors(case: dict[str, str]) -> None:
    random = bytes.fromhex(case["random"])
    assert handles.new_handle(case["kind"], fixed_rand(random)) == case["handle"]
    kind, body = handles.parse_handle(case["handle"], case["kind"])
    assert kind == case["kind"]
    # Independent decode: base62 body back to the 16 random bytes.
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = 0
    for c in body:
        n = n * 62 + alphabet.index(c)
    assert n.to_bytes(16, "big") == random


@pytest.mark.parametrize("text", VECTORS["invalid"])
def test_invalid_vectors(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        handles.parse_handle(text)
    assert info.value.reason == "INVALID_HANDLE"
    assert text not in info.value.message


def test_new_handle_shape_and_uniqueness() -> None:
    seen = {handles.new_handle("key") for _ in range(2000)}
    assert len(seen) == 2000
    for h in seen:
        assert handles.HANDLE_RE.fullmatch(h)
        assert len(h) == 4 + 22


def test_seeded_generator_reproduces_handles_for_collision_tests() -> None:
    a = [handles.new_handle("sec", seeded_rand("collide")) for _ in range(1)]
    b = [handles.new_handle("sec", seeded_rand("collide")) for _ in range(1)]
    assert a == b


@pytest.mark.parametrize("kind", ["", "k", "abcdefghi", "Key", "k3y", "ke_y", None, 5])
def test_new_handle_rejects_bad_kind(kind: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        handles.new_handle(kind)  # type: ignore[arg-type]
    assert info.value.reason == "INVALID_HANDLE"


def test_new_handle_rejects_short_random() -> None:
    with pytest.raises(ValueError):
        handles.new_handle("key", lambda n: b"\x00" * (n - 1))


def test_expected_kind_and_field() -> None:
    h = handles.new_handle("ses")
    with pytest.raises(InvalidArgument) as info:
        handles.parse_handle(h, "key", field="api_key")
    err = info.value
    assert err.metadata == {"field": "api_key"}
    assert err.violations[0].field == "api_key"
    assert "key_<22 base62 characters>" in err.message
    assert h not in err.message


@given(
    st.sampled_from(["key", "ses", "sec", "rcp", "hdl", "abcdefgh"]),
    st.binary(min_size=16, max_size=16),
)
def test_roundtrip(kind: str, random: bytes) -> None:
    h = handles.new_handle(kind, fixed_rand(random))
    assert handles.parse_handle(h, kind) == (kind, h.split("_", 1)[1])


@given(
    st.one_of(st.text(max_size=40), st.from_regex(r"[a-z]{1,9}_[0-9A-Za-z]{20,23}", fullmatch=True))
)
def test_parse_only_raises_invalid_argument(text: str) -> None:
    try:
        kind, body = handles.parse_handle(text)
    except InvalidArgument as exc:
        assert exc.reason == "INVALID_HANDLE"
        return
    assert f"{kind}_{body}" == text
