"""Fuzz the core parsers directly: keys, session tokens, claims, handles, names, fingerprints.

Every parser must either accept its input or raise a :class:`ZumikError` (never another
exception), never echo the input in the error, and a mutated valid credential must never parse
as valid (checksums, signatures). Same profiles as the server fuzzing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.security.strategies import CONFUSABLES, fuzz_settings
from zumik_secrets.core import api_keys, handles, names, session_tokens
from zumik_secrets.core.claims import ClaimSigner, ClaimVerifier
from zumik_secrets.core.errors import ZumikError
from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
from zumik_secrets.core.primitives import generate_ed25519

pytestmark = pytest.mark.fuzz

_CHARS = st.characters(exclude_categories=("Cs",))
TEXT = st.one_of(
    st.text(_CHARS, max_size=80),
    st.text(
        st.sampled_from("zkslivetf_0123456789ABCDEFabcdef-./=" + "".join(CONFUSABLES)), max_size=120
    ),
    st.builds(
        lambda c, n: c * n,
        st.text(_CHARS, min_size=1, max_size=3),
        st.sampled_from((199, 201, 4097, 70_000)),
    ),
)


def parses_or_refuses(parse: Callable[[str], Any], text: str) -> Any:
    """Run ``parse``; a refusal must be a ZumikError that does not echo long inputs."""
    try:
        return parse(text)
    except ZumikError as error:
        # Short inputs can be words of the message itself ("tenants/", "tenant c"): only an
        # input longer than the fixed words it could match is a real echo.
        if len(text) >= 24:
            assert text not in error.message
            assert all(text not in v for v in error.metadata.values())
        return None


NAME_PARSERS = [
    names.parse_tenant_name,
    names.parse_project_name,
    names.parse_api_key_name,
    names.parse_session_name,
    names.parse_secret_name,
    names.parse_handle_name,
    names.parse_purge_receipt_name,
]


@fuzz_settings()
@given(text=TEXT)
def test_api_key_parser(text: str) -> None:
    parses_or_refuses(api_keys.parse_api_key, text)


@fuzz_settings()
@given(index=st.integers(0, 200), char=st.sampled_from("0aZ_9x" + "".join(CONFUSABLES)))
def test_mutated_api_key_never_parses(index: int, char: str) -> None:
    raw = api_keys.generate_api_key("live").raw
    i = index % len(raw)
    assume(raw[i] != char)
    mutated = raw[:i] + char + raw[i + 1 :]
    assert parses_or_refuses(api_keys.parse_api_key, mutated) is None


@fuzz_settings()
@given(text=TEXT)
def test_session_token_parser(text: str) -> None:
    parses_or_refuses(session_tokens.hash_session_token, text)


@fuzz_settings()
@given(text=TEXT, kind=st.one_of(st.none(), st.sampled_from(["key", "ses", "sec", "hdl"])))
def test_handle_parser(text: str, kind: str | None) -> None:
    parses_or_refuses(lambda t: handles.parse_handle(t, kind), text)


@fuzz_settings()
@given(text=TEXT, which=st.sampled_from(NAME_PARSERS))
def test_name_parsers(text: str, which: Callable[[str], Any]) -> None:
    parses_or_refuses(which, text)


def test_fingerprint_parser_if_present() -> None:
    try:
        module = importlib.import_module("zumik_secrets.core.fingerprints")
    except ImportError:
        pytest.skip("core.fingerprints is not built yet")
    parse = getattr(module, "parse_fingerprint", None)
    if parse is None:
        pytest.skip("core.fingerprints has no parse_fingerprint yet")

    @fuzz_settings()
    @given(text=TEXT)
    def run(text: str) -> None:
        parses_or_refuses(parse, text)

    run()


_SIGNER = ClaimSigner("sk_fuzz", generate_ed25519(), "zumik-secrets", "zumik-secrets")


def _verifier() -> ClaimVerifier:
    public = _SIGNER.public_raw
    return ClaimVerifier(
        "zumik-secrets", lambda kid: public if kid == "sk_fuzz" else None, issuer="zumik-secrets"
    )


@fuzz_settings()
@given(text=TEXT)
def test_claim_verifier_on_random_text(text: str) -> None:
    parses_or_refuses(lambda t: _verifier().verify(t, 1_700_000_000), text)


@fuzz_settings()
@given(index=st.integers(0, 2000), char=st.sampled_from("AaZz09-_.=" + "".join(CONFUSABLES)))
def test_mutated_claim_never_verifies(index: int, char: str) -> None:
    now = 1_700_000_000
    token, _ = _SIGNER.mint("acme", "proj", "key_x", ("keys.read",), now, 60, credential_id="key_x")
    assert _verifier().verify(token, now).tenant_id == "acme"
    i = index % len(token)
    assume(token[i] != char)
    mutated = token[:i] + char + token[i + 1 :]
    # A base64url character change can leave the decoded bytes equal (trailing bits): skip those.
    result = parses_or_refuses(lambda t: _verifier().verify(t, now), mutated)
    if result is not None:
        assert i >= len(token) - 2 or token.count(".") != mutated.count("."), (i, char)


@fuzz_settings()
@given(text=TEXT)
def test_keyring_parser(text: str) -> None:
    parses_or_refuses(MasterKeyring.from_text, text)


@fuzz_settings()
@given(index=st.integers(0, 400), char=st.sampled_from('{}[]",:0aZ-_ '))
def test_mutated_keyring_parses_or_refuses(index: int, char: str) -> None:
    text = generate_keyring()
    i = index % len(text)
    parses_or_refuses(MasterKeyring.from_text, text[:i] + char + text[i + 1 :])
