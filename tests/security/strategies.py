"""Hypothesis strategies generated from protobuf descriptors, and the fuzz profiles.

``request_strategy(rpc, tenant, project)`` draws a request message of the RPC's input type with
random values in every field: short and oversized strings and bytes, unicode confusables and
control characters, out-of-range enum values, extreme integers and timestamps, empty and huge
repeated fields and maps. The resource field usually holds a well-formed name of the caller's own
tenant (so the request reaches the servicer) and otherwise a hostile variant of one (deep,
confusable, traversal, wildcard, oversized).

Profiles (``ZUMIK_FUZZ_PROFILE``): ``ci`` (default: bounded, derandomized so CI is stable) and
``long`` (``make fuzz``: many more examples, random seeds).
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.security.rpcs import VALID_FIELDS, Rpc, fill_shape
from zumik_secrets.core.encoding import base62_encode

FD = _descriptor.FieldDescriptor

settings.register_profile(
    "zumik-fuzz-ci",
    max_examples=int(os.environ.get("ZUMIK_FUZZ_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "zumik-fuzz-long",
    max_examples=int(os.environ.get("ZUMIK_FUZZ_EXAMPLES", "500")),
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz_settings() -> settings:
    """The profile chosen by ``ZUMIK_FUZZ_PROFILE`` (``ci`` or ``long``)."""
    name = os.environ.get("ZUMIK_FUZZ_PROFILE", "ci")
    return settings(settings.get_profile(f"zumik-fuzz-{name}"))


# Lone surrogates cannot be encoded as UTF-8 by the client: undecodable strings are sent as raw
# bytes by the dedicated test instead.
_CHARS = st.characters(exclude_categories=("Cs",))

#: Unicode trouble: confusables, zero-width and bidi controls, NUL, full-width, combining marks.
CONFUSABLES = (
    "\u0430",  # Cyrillic a
    "\u0435",  # Cyrillic e
    "\u03bf",  # Greek omicron
    "\u200b",  # zero-width space
    "\u200d",  # zero-width joiner
    "\u202e",  # right-to-left override
    "\ufeff",  # BOM
    "\x00",
    "\uff54",  # full-width t
    "\u0301",  # combining acute
    "\u2044",  # fraction slash
    "\u2215",  # division slash
    "\uff0f",  # full-width solidus
    "\U0001f600",
)

_LONG_SIZES = (65, 129, 257, 1025, 4097, 65_537)


def oversized_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda c, n: (c * n)[:n],
        st.text(_CHARS, min_size=1, max_size=4),
        st.sampled_from(_LONG_SIZES),
    )


def text_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(_CHARS, max_size=40),
        st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_./"), max_size=70),
        st.lists(st.sampled_from(CONFUSABLES), min_size=1, max_size=8).map("".join),
        oversized_text(),
    )


def bytes_values() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda b, n: (b * n)[:n],
            st.binary(min_size=1, max_size=8),
            st.sampled_from((65_536, 65_537, 300_000)),
        ),
    )


_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, hi, 0, 1, -1, 2, 1000, 1001, 2**31 - 1, 2**32) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _scalar(fd: FD) -> st.SearchStrategy[Any]:
    if fd.type == FD.TYPE_STRING:
        return text_values()
    if fd.type == FD.TYPE_BYTES:
        return bytes_values()
    if fd.type == FD.TYPE_BOOL:
        return st.booleans()
    if fd.type == FD.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 1000))
    if fd.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=64 if fd.type == FD.TYPE_DOUBLE else 32)
    lo, hi = _INT_RANGES[fd.type]
    return _ints(lo, hi)


def _is_repeated(fd: FD) -> bool:
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == FD.LABEL_REPEATED  # type: ignore[attr-defined]


def _small(fd: FD) -> st.SearchStrategy[Any]:
    """Short values, for huge repeated fields (a list of 5000 big values would be gigabytes)."""
    if fd.type == FD.TYPE_STRING:
        return st.text(_CHARS, max_size=8)
    if fd.type == FD.TYPE_BYTES:
        return st.binary(max_size=8)
    if fd.type == FD.TYPE_MESSAGE:
        return st.just({})
    return _scalar(fd)


def _many(
    element: st.SearchStrategy[Any], small: st.SearchStrategy[Any]
) -> st.SearchStrategy[list[Any]]:
    return st.one_of(
        st.lists(element, max_size=4),
        st.builds(lambda e, n: [e] * n, small, st.sampled_from((17, 65, 1001, 5000))),
    )


def message_values(
    desc: _descriptor.Descriptor,
    depth: int = 0,
    overrides: dict[str, Any] | None = None,
    preferred: dict[str, Any] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of field name -> value for ``desc`` (fields left out stay unset)."""
    strategies: dict[str, st.SearchStrategy[Any]] = {}
    required: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if overrides and fd.name in overrides:
            required[fd.name] = overrides[fd.name]
            continue
        if fd.type == FD.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                key_fd = fd.message_type.fields_by_name["key"]
                value_fd = fd.message_type.fields_by_name["value"]
                if value_fd.type == FD.TYPE_MESSAGE:
                    continue
                keys, values = _scalar(key_fd), _scalar(value_fd)
                small = st.dictionaries(keys, values, max_size=4)
                if key_fd.type == FD.TYPE_STRING:
                    huge = st.builds(
                        lambda v, n: {f"k{i}": v for i in range(n)},
                        values,
                        st.sampled_from((17, 300)),
                    )
                    strategies[fd.name] = st.one_of(small, huge)
                else:
                    strategies[fd.name] = small
                continue
            if depth >= 3:
                continue
            element: st.SearchStrategy[Any] = message_values(fd.message_type, depth + 1)
        else:
            element = _scalar(fd)
        strategies[fd.name] = _many(element, _small(fd)) if _is_repeated(fd) else element
    for name, value in (preferred or {}).items():
        if name in strategies:
            # A valid value half the time, so more requests get past validation.
            required[name] = st.one_of(st.just(value), strategies.pop(name))
    return st.fixed_dictionaries(required, optional=strategies)


def fill(message: Message, values: dict[str, Any]) -> Message:
    """Set ``values`` (from :func:`message_values`) on ``message``; returns it."""
    for name, value in values.items():
        fd = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
            target.update(value)
        elif fd.type == FD.TYPE_MESSAGE and _is_repeated(fd):
            for item in value:
                fill(target.add(), item)
        elif fd.type == FD.TYPE_MESSAGE:
            fill(target, value)
            target.SetInParent()
        elif _is_repeated(fd):
            target.extend(value)
        else:
            setattr(message, name, value)
    return message


def resource_names(rpc: Rpc, tenant: str, project: str) -> st.SearchStrategy[str]:
    """Mostly valid names of the caller's own tenant, sometimes hostile variants of one."""
    assert rpc.shape is not None
    shape = rpc.shape
    bodies = st.binary(min_size=16, max_size=16).map(lambda b: base62_encode(b, 22))
    valid = bodies.map(lambda body: fill_shape(shape, tenant, project, body))

    def confusable(name: str, index: int, char: str) -> str:
        i = index % max(1, len(name))
        return name[:i] + char + name[i + 1 :]

    hostile = st.one_of(
        st.builds(lambda n, d: n + "/x" * d, valid, st.sampled_from((1, 8, 64, 600))),
        st.builds(lambda n, d: "/".join([n] * d), valid, st.sampled_from((2, 10))),
        st.builds(confusable, valid, st.integers(0, 80), st.sampled_from(CONFUSABLES)),
        valid.map(lambda n: n.replace(f"tenants/{tenant}", "tenants/-")),
        valid.map(lambda n: n.replace(f"tenants/{tenant}", f"tenants/{tenant}/../other")),
        valid.map(lambda n: n.upper()),
        valid.map(lambda n: n + "/"),
        valid.map(lambda n: n.replace("/", "%2F")),
        valid.map(lambda n: n.replace("/", "//")),
        valid.map(lambda n: n + "\x00"),
        st.builds(lambda n, k: n + "A" * k, valid, st.sampled_from((1, 1100, 70_000))),
        text_values(),
    )
    return st.one_of(valid, valid, hostile)


def request_strategy(rpc: Rpc, tenant: str, project: str) -> st.SearchStrategy[Message]:
    """Requests of ``rpc`` with random field values (see the module docstring)."""
    overrides: dict[str, Any] = {}
    if rpc.shape is not None:
        overrides[rpc.guard.resource_field] = resource_names(rpc, tenant, project)
    values = message_values(
        rpc.guard.input_type.DESCRIPTOR,
        overrides=overrides,
        preferred=VALID_FIELDS.get(rpc.guard.method, {}),
    )
    return values.map(lambda v: fill(rpc.guard.input_type(), v))
