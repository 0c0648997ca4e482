"""What the contracts' comments say about errors, read from the descriptor set with comments.

``make proto`` writes ``service/zumik_secrets/server/contracts.binpb`` (the contracts with
their source comments). From it:

* :func:`method_errors`: per RPC, the ``CODE `REASON``` pairs of the ``Errors:`` paragraph of
  its comment (what is specific to that method);
* :func:`common_reasons`: the reasons common.proto says every call can fail with;
* :func:`documented_reasons`: the union, per RPC: every reason a caller may see from it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR_SET = REPO / "service" / "zumik_secrets" / "server" / "contracts.binpb"
ENUM_PROTO = REPO / "proto" / "zumik" / "secrets" / "v1" / "error_reason.proto"
PACKAGE = "zumik.secrets.v1"

CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "UNIMPLEMENTED",
        "INTERNAL",
    }
)
_REASON = re.compile(r"`([A-Z][A-Z0-9_]+)`")


def _files() -> list[descriptor_pb2.FileDescriptorProto]:
    data = DESCRIPTOR_SET.read_bytes()
    return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)


def split_outside_parentheses(text: str) -> list[str]:
    """Split on ``;`` that are not inside parentheses."""
    groups, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ";" and depth == 0:
            groups.append(current)
            current = ""
        else:
            current += char
    return [*groups, current]


def documented_codes() -> dict[str, str]:
    """reason -> the gRPC code its comment in error_reason.proto starts with."""
    text = ENUM_PROTO.read_text(encoding="utf-8")
    codes: dict[str, str] = {}
    for match in re.finditer(r"((?:[ \t]*//[^\n]*\n)+)[ \t]*ERROR_REASON_(\w+) = \d+;", text):
        first = match.group(1).strip().splitlines()[0].removeprefix("//").strip()
        codes[match.group(2)] = first.split(":", 1)[0]
    codes.pop("UNSPECIFIED", None)
    return codes


@functools.cache
def method_errors() -> dict[str, tuple[tuple[str, str], ...]]:
    """``Service.Method`` -> the (code, reason) pairs its comment's ``Errors:`` part lists."""
    docs: dict[str, tuple[tuple[str, str], ...]] = {}
    for file in _files():
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for s_index, service in enumerate(file.service):
            for m_index, method in enumerate(service.method):
                text = comments.get((6, s_index, 2, m_index), "")
                pairs: list[tuple[str, str]] = []
                if "Errors:" in text:
                    errors_part = " ".join(text.split("Errors:", 1)[1].split())
                    if errors_part.startswith("as "):  # "Errors: as PurgeProject."
                        other = errors_part.removeprefix("as ").rstrip(".").strip()
                        pairs.append(("SAME_AS", other))
                    for group in split_outside_parentheses(errors_part):
                        words = group.strip().split()
                        if words and words[0] in CODES:
                            pairs.extend((words[0], r) for r in _REASON.findall(group))
                docs[f"{service.name}.{method.name}"] = tuple(pairs)
    for name, pairs in list(docs.items()):
        if pairs and pairs[0][0] == "SAME_AS":
            service = name.split(".")[0]
            docs[name] = docs[f"{service}.{pairs[0][1]}"]
    return docs


@functools.cache
def common_reasons() -> frozenset[str]:
    """The reasons common.proto says every call can fail with."""
    common = next(f for f in _files() if f.name.endswith("/common.proto"))
    package_comment = next(
        loc.leading_comments for loc in common.source_code_info.location if list(loc.path) == [2]
    )
    section = package_comment.split("Every call can fail with these", 1)[1]
    section = section.split("# Names and ids", 1)[0]
    reasons = set(_REASON.findall(section))
    if "`CLAIM_*`" in section:
        reasons |= {
            r
            for r, code in documented_codes().items()
            if r.startswith("CLAIM_") and code == "UNAUTHENTICATED"
        }
    return frozenset(reasons)


def documented_reasons(method: str) -> frozenset[str]:
    """Every reason the contract says ``Service.Method`` (or ``/pkg.Service/Method``) may send."""
    key = method.removeprefix("/").removeprefix(f"{PACKAGE}.").replace("/", ".")
    return common_reasons() | {reason for _, reason in method_errors()[key]}
