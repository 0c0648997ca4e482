"""The one page-token codec: authenticated, bound, range-checked (issue 15, finding 6)."""

from __future__ import annotations

import pytest

from zumik_secrets.core import page_tokens
from zumik_secrets.core.encoding import b64url_decode, b64url_encode
from zumik_secrets.core.errors import InvalidArgument
from zumik_secrets.core.page_tokens import MAX_EXTRA, MAX_POSITION, PageTokenCodec

KEY = bytes(range(32))


def _refused(codec: PageTokenCodec, kind: str, binding: str, token: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        codec.decode(kind, binding, token)
    assert info.value.reason == "INVALID_PAGE_TOKEN"


def test_round_trip_at_the_edges() -> None:
    codec = PageTokenCodec(KEY)
    for position, extra in [(0, 0), (1, 7), (MAX_POSITION, MAX_EXTRA)]:
        token = codec.encode("secrets", "tenants/a/projects/p", position, extra)
        assert len(token) <= page_tokens.MAX_TOKEN_CHARS
        assert codec.decode("secrets", "tenants/a/projects/p", token) == (position, extra)


def test_a_token_is_bound_to_its_listing_and_binding() -> None:
    codec = PageTokenCodec(KEY)
    token = codec.encode("secrets", "tenants/a/projects/p", 5)
    _refused(codec, "api_keys", "tenants/a/projects/p", token)
    _refused(codec, "secrets", "tenants/b/projects/p", token)
    # Length-prefixed parts: moving characters between kind and binding changes the tag.
    _refused(codec, "secretst", "enants/a/projects/p", token)


def test_another_server_key_refuses() -> None:
    token = PageTokenCodec(KEY).encode("secrets", "x", 5)
    _refused(PageTokenCodec(bytes(32)), "secrets", "x", token)


@pytest.mark.parametrize("position", [2**63, 2**64 - 1])
def test_a_forged_huge_offset_is_refused(position: int) -> None:
    # The attack: recompute the (formerly unkeyed) binding around an offset SQLite cannot hold.
    codec = PageTokenCodec(KEY)
    good = b64url_decode(codec.encode("secrets", "x", 1))
    forged = good[:1] + position.to_bytes(8, "big") + good[9:]
    _refused(codec, "secrets", "x", b64url_encode(forged))


def test_every_flipped_bit_is_refused() -> None:
    codec = PageTokenCodec(KEY)
    raw = bytearray(b64url_decode(codec.encode("audit_events", "d", 42, 3)))
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        _refused(codec, "audit_events", "d", b64url_encode(bytes(flipped)))


@pytest.mark.parametrize(
    "token", ["", "!!!!", "a" * 65, "é" * 10, "A" * 64, b64url_encode(b"\x01" * 17)]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    _refused(PageTokenCodec(KEY), "secrets", "x", token)


def test_encode_refuses_out_of_range_positions() -> None:
    codec = PageTokenCodec(KEY)
    with pytest.raises(ValueError):
        codec.encode("secrets", "x", 2**63)
    with pytest.raises(ValueError):
        codec.encode("secrets", "x", 0, -1)


def test_the_listings_share_the_codec() -> None:
    from zumik_secrets.app import api_keys, audit_reader, sealed_secrets
    from zumik_secrets.core.names import ProjectName

    parent = ProjectName("acme", "web")
    page_tokens.configure(KEY)
    codec = page_tokens.codec()
    assert api_keys.decode_page_token(api_keys.encode_page_token(9, parent, False), parent, False)
    # SealedSecrets calls the codec itself (kind, str(parent)): no wrapper of its own.
    assert not hasattr(sealed_secrets, "encode_token")
    assert audit_reader.read_token(audit_reader.make_token(9, "d"), "d") == 9
    assert codec.decode("api_keys", f"{parent}|0", api_keys.encode_page_token(9, parent, False))
