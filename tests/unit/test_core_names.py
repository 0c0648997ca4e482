"""Resource names: round trips, error shape, and the grammar's edges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vectors.make_vectors import fixed_rand
from zumik_secrets.core import handles, names
from zumik_secrets.core.errors import InvalidArgument

ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
bodies = st.binary(min_size=16, max_size=16)


def handle(kind: str, random: bytes) -> str:
    return handles.new_handle(kind, fixed_rand(random))


@given(ids, ids, bodies)
def test_project_scoped_roundtrips(tenant: str, project: str, random: bytes) -> None:
    for cls, parse, seg, kind in [
        (names.ApiKeyName, names.parse_api_key_name, "apiKeys", "key"),
        (names.SessionName, names.parse_session_name, "sessions", "ses"),
        (names.SecretName, names.parse_secret_name, "secrets", "sec"),
    ]:
        h = handle(kind, random)
        text = f"tenants/{tenant}/projects/{project}/{seg}/{h}"
        parsed: Any = parse(text)
        assert parsed == cls(tenant, project, h)
        assert str(parsed) == text
        assert (parsed.tenant, parsed.project, parsed.id) == (tenant, project, h)
        assert str(parsed.parent) == f"tenants/{tenant}/projects/{project}"
        assert str(parsed.parent.parent) == f"tenants/{tenant}"


@given(ids, ids, st.from_regex(r"[a-z]{2,8}", fullmatch=True), bodies)
def test_tenant_scoped_roundtrips(tenant: str, project: str, kind: str, random: bytes) -> None:
    assert str(names.parse_tenant_name(f"tenants/{tenant}")) == f"tenants/{tenant}"
    p = names.parse_project_name(f"tenants/{tenant}/projects/{project}")
    assert (p.tenant, p.project) == (tenant, project)
    h = handle(kind, random)
    hn = names.parse_handle_name(f"tenants/{tenant}/handles/{h}")
    assert (hn.tenant, hn.id, hn.kind) == (tenant, h, kind)
    assert str(hn) == f"tenants/{tenant}/handles/{h}"
    r = handle("rcp", random)
    rn = names.parse_purge_receipt_name(f"tenants/{tenant}/purgeReceipts/{r}")
    assert str(rn) == f"tenants/{tenant}/purgeReceipts/{r}"


H = "key_0000000000000000000001"

BAD: list[tuple[Callable[..., Any], str]] = [
    (names.parse_tenant_name, ""),
    (names.parse_tenant_name, "tenants/"),
    (names.parse_tenant_name, "tenants/Acme"),
    (names.parse_tenant_name, "tenants/-acme"),
    (names.parse_tenant_name, "tenants/" + "a" * 64),
    (names.parse_tenant_name, "tenants/acme/"),
    (names.parse_tenant_name, "/tenants/acme"),
    (names.parse_tenant_name, "tenants/acme\n"),
    (names.parse_tenant_name, "tenants/ac me"),
    (names.parse_tenant_name, "tenants/\u0430cme"),  # Cyrillic a
    (names.parse_project_name, "tenants/acme"),
    (names.parse_project_name, "tenants/acme/project/web"),
    (names.parse_project_name, "tenants/acme/projects/web/x"),
    (names.parse_api_key_name, f"tenants/acme/projects/web/apiKeys/{H[:-1]}"),
    (names.parse_api_key_name, "tenants/acme/projects/web/apiKeys/ses_0000000000000000000001"),
    (names.parse_api_key_name, "tenants/acme/projects/web/apikeys/" + H),
    (names.parse_api_key_name, "tenants/acme/projects/web/apiKeys/key_" + "z" * 22),
    (names.parse_session_name, "tenants/acme/projects/web/sessions/" + H),
    (names.parse_secret_name, "tenants/acme/projects/web/secrets/" + H),
    (names.parse_handle_name, "tenants/acme/handles/K_0000000000000000000001"),
    (names.parse_handle_name, "tenants/acme/handles/hdl_" + "z" * 22),
    (names.parse_purge_receipt_name, "tenants/acme/purgeReceipts/" + H),
    (names.parse_purge_receipt_name, "tenants/acme/purgeReceipts/rcp_1" + "x" * 300),
]


@pytest.mark.parametrize(("parse", "text"), BAD)
def test_rejects(parse: Callable[..., Any], text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(text, field="parent")
    err = info.value
    assert err.reason == "INVALID_NAME"
    assert err.metadata == {"field": "parent"}
    assert [v.field for v in err.violations] == ["parent"]
    assert err.message.startswith("parent must look like tenants/{tenant}")
    if len(text) > len("tenants/"):
        assert text not in err.message


def test_message_names_the_pattern() -> None:
    with pytest.raises(InvalidArgument) as info:
        names.parse_project_name("nope", field="parent")
    assert info.value.message == "parent must look like tenants/{tenant}/projects/{project}"


@pytest.mark.parametrize(
    ("parse", "prefix"),
    [
        (names.parse_api_key_name, "tenants/t/projects/p/apiKeys/key_"),
        (names.parse_session_name, "tenants/t/projects/p/sessions/ses_"),
        (names.parse_secret_name, "tenants/t/projects/p/secrets/sec_"),
        (names.parse_handle_name, "tenants/t/handles/doc_"),
        (names.parse_purge_receipt_name, "tenants/t/purgeReceipts/rcp_"),
    ],
)
def test_an_id_of_2_to_the_128_or_more_is_refused_saying_why(
    parse: Callable[..., Any], prefix: str
) -> None:
    from zumik_secrets.core import encoding

    assert encoding.base62_encode_int(2**128 - 1, 22) == handles.LARGEST_ID
    assert parse(prefix + handles.LARGEST_ID).id.endswith(handles.LARGEST_ID)
    for too_large in (encoding.base62_encode_int(2**128, 22), "z" * 22):
        with pytest.raises(InvalidArgument) as info:
            parse(prefix + too_large)
        err = info.value
        assert err.reason == "INVALID_NAME"
        assert "2^128 or more" in err.message
        assert handles.LARGEST_ID in err.message
        assert too_large not in err.message.replace(handles.LARGEST_ID, "")
        assert err.violations[0].description == err.message
    # A malformed id (wrong length) keeps the plain message: the size is not what is wrong.
    with pytest.raises(InvalidArgument) as info:
        parse(prefix + "A" * 21)
    assert "2^128" not in info.value.message


def test_a_handle_of_2_to_the_128_or_more_says_why() -> None:
    with pytest.raises(InvalidArgument) as info:
        handles.parse_handle("sec_" + "z" * 22, "sec")
    assert info.value.reason == "INVALID_HANDLE"
    assert info.value.message.endswith(handles.ID_TOO_LARGE)
    with pytest.raises(InvalidArgument) as info:
        handles.parse_handle("key_" + "z" * 22, "sec")  # wrong kind: not a size problem
    assert "2^128" not in info.value.message


def test_dataclasses_validate_and_are_frozen() -> None:
    with pytest.raises(InvalidArgument):
        names.ProjectName("acme", "Web")
    with pytest.raises(InvalidArgument):
        names.ApiKeyName("acme", "web", "ses_0000000000000000000001")
    p = names.ProjectName("acme", "web")
    with pytest.raises(AttributeError):
        p.tenant = "other"  # type: ignore[misc]
    assert hash(p) == hash(names.ProjectName("acme", "web"))


@pytest.mark.parametrize("value", ["a", "0", "a-b", "a" * 63, "9lives"])
def test_valid_ids(value: str) -> None:
    assert names.validate_tenant_id(value) == value
    assert names.validate_project_id(value) == value


@pytest.mark.parametrize("value", ["", "-a", "A", "a_b", "a" * 64, "a.b", "\u00e9", None])
def test_invalid_ids(value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        names.validate_tenant_id(value, field="tenant_id")  # type: ignore[arg-type]
    assert info.value.reason == "INVALID_NAME"
    assert info.value.metadata == {"field": "tenant_id"}


@pytest.mark.parametrize("value", ["a", "keys.read", "secrets:open", "a_b-c", "a" * 64])
def test_valid_scopes(value: str) -> None:
    assert names.validate_scope(value) == value


@pytest.mark.parametrize("value", ["", "1a", "Keys", "a" * 65, "a b", "a/b", "a\n"])
def test_invalid_scopes(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        names.validate_scope(value, field="scopes[0]")
    assert info.value.reason == "INVALID_SCOPE"
    assert info.value.metadata == {"field": "scopes[0]"}


PARSERS = [
    names.parse_tenant_name,
    names.parse_project_name,
    names.parse_api_key_name,
    names.parse_session_name,
    names.parse_secret_name,
    names.parse_handle_name,
    names.parse_purge_receipt_name,
]

name_like = st.lists(
    st.one_of(
        st.sampled_from(
            ["tenants", "projects", "apiKeys", "sessions", "secrets", "handles", "purgeReceipts"]
        ),
        ids,
        st.from_regex(r"[a-z]{2,8}_[0-9A-Za-z]{21,23}", fullmatch=True),
        st.text(max_size=5),
    ),
    max_size=7,
).map("/".join)


@given(st.sampled_from(PARSERS), st.one_of(name_like, st.text(max_size=80)))
def test_parsers_only_raise_invalid_argument(parse: Callable[..., Any], text: str) -> None:
    try:
        parsed = parse(text)
    except InvalidArgument as exc:
        assert exc.reason == "INVALID_NAME"
        return
    assert str(parsed) == text


BODY = "0" * 21 + "1"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("tenants/acme", names.TenantName),
        ("tenants/-", names.TenantName),
        ("tenants/acme/settings", names.SettingsName),
        ("tenants/-/settings", names.SettingsName),
        ("tenants/acme/projects/web", names.ProjectName),
        (f"tenants/acme/projects/web/apiKeys/key_{BODY}", names.ApiKeyName),
        (f"tenants/acme/projects/web/sessions/ses_{BODY}", names.SessionName),
        (f"tenants/acme/projects/web/secrets/sec_{BODY}", names.SecretName),
        (f"tenants/acme/handles/hdl_{BODY}", names.HandleName),
        (f"tenants/acme/purgeReceipts/rcp_{BODY}", names.PurgeReceiptName),
    ],
)
def test_parse_resource_recognises_every_shape(text: str, kind: type[object]) -> None:
    parsed = names.parse_resource(text)
    assert isinstance(parsed, kind)
    assert str(parsed) == text
    assert names.expect(parsed, kind) is parsed  # type: ignore[type-var]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tenants",
        "tenants/",
        "tenants/-/projects/web",
        f"tenants/-/projects/web/secrets/sec_{BODY}",
        "tenants/acme/projects",
        "tenants/acme/projects/web/secrets",
        f"tenants/acme/projects/web/secrets/key_{BODY}",
        f"tenants/acme/handles/hdl_{BODY}/x",
        "tenants/ACME",
        "tenants/acme/unknown",
        "x" * 5000,
    ],
)
def test_parse_resource_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        names.parse_resource(text, field="parent")
    assert err.value.reason == "INVALID_NAME"
    assert err.value.metadata == {"field": "parent"}
    assert len(err.value.message) < 120  # the input is never echoed


def test_expect_names_the_wanted_pattern() -> None:
    with pytest.raises(InvalidArgument) as err:
        names.expect(names.parse_resource("tenants/acme"), names.ProjectName, field="parent")
    assert "tenants/{tenant}/projects/{project}" in err.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tenants/acme", True),
        ("tenants/acme/settings", True),
        ("tenants/3f2a9c1e-8b7d-4e2f-9a1b-0c5d6e7f8a9b/projects/web", True),
        ("tenants/acme/projects/web/secrets/sec_0123456789ABCDEFabcdef", True),
        ("tenants/acme/projects/web/apiKeys/key_0123456789ABCDEFabcdef", True),
        ("tenants/acme/projects/web/sessions/ses_0123456789ABCDEFabcdef", True),
        ("tenants/acme/handles/user_0123456789ABCDEFabcdef", True),
        ("tenants/acme/purgeReceipts/rcp_0123456789ABCDEFabcdef", True),
        ("tenants/Acme", False),
        ("tenants/acme/", False),
        ("tenants/" + "a" * 64, False),
        ("tenants/acme/projects/web/secrets/key_0123456789ABCDEFabcdef", False),
        ("tenants/acme/projects/web/secrets/sec_0123456789ABCDEFabcdef/x", False),
        ("tenants/acme/handles/USER_0123456789ABCDEFabcdef", False),
        ("tenants/acme/projects/we_b", False),
        ("tenants/acme/settings/x", False),
        ("projects/web", False),
        ("tenants/acme/projects/" + "A1b2C3d4" * 6, False),
    ],
)
def test_is_resource_name(text: str, expected: bool) -> None:
    from zumik_secrets.core.names import is_resource_name

    assert is_resource_name(text) is expected
