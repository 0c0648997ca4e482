"""base62 and strict unpadded base64url."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zumik_secrets.core import encoding


def naive_base62(n: int) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 62)
        out = alphabet[r] + out
        if n == 0:
            return out


@given(st.integers(min_value=0, max_value=2**256))
def test_base62_int_roundtrip(n: int) -> None:
    text = encoding.base62_encode_int(n)
    assert text == naive_base62(n)
    assert encoding.base62_decode_int(text) == n


@given(st.binary(min_size=16, max_size=16))
def test_base62_fixed_width_roundtrip(data: bytes) -> None:
    text = encoding.base62_encode(data, 22)
    assert len(text) == 22
    assert encoding.base62_decode(text, 16, 22) == data


def test_base62_known_values() -> None:
    assert encoding.base62_encode_int(0) == "0"
    assert encoding.base62_encode_int(61) == "z"
    assert encoding.base62_encode_int(62) == "10"
    assert encoding.base62_encode(b"\xff" * 16, 22) == "7n42DGM5Tflk9n8mt7Fhc7"
    assert encoding.base62_encode(b"\x00" * 16, 22) == "0" * 22


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (encoding.base62_encode_int, (-1,)),
        (encoding.base62_encode_int, (62**3, 3)),
        (encoding.base62_decode_int, ("",)),
        (encoding.base62_decode_int, ("ab-",)),
        (encoding.base62_decode_int, ("abc", 4)),
        (encoding.base62_decode_int, ("\u0661",)),  # Arabic-Indic digit one
        (encoding.base62_decode, ("z" * 22, 16)),
    ],
)
def test_base62_rejects(call: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        call(*args)


@given(st.binary(max_size=100))
def test_b64url_roundtrip_and_matches_stdlib(data: bytes) -> None:
    text = encoding.b64url_encode(data)
    assert "=" not in text
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert encoding.b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "AA==",  # padding
        "AA=",
        "A",  # impossible length
        "AAAAA",
        "AB",  # non-zero unused bits: non-canonical form of b"\x00"
        "AAB",
        "a+b/",  # standard alphabet, not url-safe
        "AA AA",
        "AA\n",
        "\u00e9AAA",
    ],
)
def test_b64url_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        encoding.b64url_decode(text)


@given(st.text(max_size=60))
def test_b64url_decode_only_valueerror_and_canonical(text: str) -> None:
    try:
        data = encoding.b64url_decode(text)
    except ValueError:
        return
    assert encoding.b64url_encode(data) == text
