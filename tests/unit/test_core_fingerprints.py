"""Fingerprint format and properties (hypothesis): keyed, domain-separated, versioned."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zumik_secrets.core.errors import InvalidArgument
from zumik_secrets.core.fingerprints import (
    Fingerprinter,
    ParsedFingerprint,
    parse_fingerprint,
    validate_namespace,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))

ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
namespaces = st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True)
values = st.binary(min_size=0, max_size=256)


def _reference(key: bytes, tenant: str, project: str, namespace: str, value: bytes) -> bytes:
    def field(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    message = (
        b"zumik-fp-v1"
        + field(tenant.encode())
        + field(project.encode())
        + field(namespace.encode())
        + value
    )
    return hmac.new(key, message, hashlib.sha256).digest()


def test_pinned_vector() -> None:
    fp = Fingerprinter(KEY_A, 3, "acme", "web", "email").fingerprint(b"alice@example.com")
    mac = _reference(KEY_A, "acme", "web", "email", b"alice@example.com")
    assert fp == "fp1.3." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert fp == "fp1.3.885ISkuPnKLlpp-shDBs4gxTyHl_C4m7eNa4CXuVxAg"


@given(ids, ids, namespaces, values)
def test_matches_the_reference_construction(t: str, p: str, ns: str, v: bytes) -> None:
    fp = Fingerprinter(KEY_A, 1, t, p, ns)
    assert parse_fingerprint(fp.fingerprint(v)).mac == _reference(KEY_A, t, p, ns, v)
    assert fp.fingerprint_all([v, v]) == [fp.fingerprint(v)] * 2


@settings(max_examples=300)
@given(ids, ids, ids, namespaces, namespaces, values)
def test_no_collisions_across_tenants_or_namespaces(
    t1: str, t2: str, p: str, ns1: str, ns2: str, v: bytes
) -> None:
    a = Fingerprinter(KEY_A, 1, t1, p, ns1).fingerprint(v)
    if (t1, ns1) != (t2, ns2):
        assert a != Fingerprinter(KEY_A, 1, t2, p, ns2).fingerprint(v)
    # Another tenant has its own key: unrelated even for the same ids.
    assert a != Fingerprinter(KEY_B, 1, t1, p, ns1).fingerprint(v)


@given(values.filter(lambda v: len(v) >= 4))
def test_output_contains_neither_the_input_nor_its_plain_hash(v: bytes) -> None:
    fp = Fingerprinter(KEY_A, 1, "t", "p", "ns").fingerprint(v)
    raw = parse_fingerprint(fp).mac
    assert v not in fp.encode() and v not in raw
    plain = hashlib.sha256(v).digest()
    assert raw != plain
    assert base64.urlsafe_b64encode(plain).rstrip(b"=").decode() not in fp
    assert plain.hex() not in fp


def test_versions_and_match() -> None:
    v1 = Fingerprinter(KEY_A, 1, "t", "p", "ns")
    v2 = Fingerprinter(KEY_B, 2, "t", "p", "ns")
    fp1 = parse_fingerprint(v1.fingerprint(b"x"))
    assert v1.matches(b"x", fp1)
    assert not v1.matches(b"y", fp1)
    assert not v2.matches(b"x", fp1)  # another version never matches
    assert fp1.key_version == 1
    assert "KEY" not in repr(v1) and str(KEY_A) not in repr(v1)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fp1",
        "fp1.0.AAAA",
        "fp2.1." + "A" * 43,
        "fp1.1." + "A" * 42,
        "fp1.1." + "A" * 44,
        "fp1.01." + "A" * 43,
        "fp1.1." + "+" * 43,
        "x" * 1000,
        "fp1.99999999999." + "A" * 43,
    ],
)
def test_malformed_fingerprints_are_rejected(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_fingerprint(text)
    assert info.value.reason == "FINGERPRINT_MALFORMED"
    assert len(text) < 4 or text not in info.value.message


@given(st.text(max_size=100))
def test_parser_only_raises_invalid_argument(text: str) -> None:
    try:
        parsed = parse_fingerprint(text)
    except InvalidArgument:
        return
    assert isinstance(parsed, ParsedFingerprint)


@pytest.mark.parametrize("ns", ["", "Email", "1x", "a" * 65, "e mail", "émail"])
def test_bad_namespaces(ns: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_namespace(ns)
