#!/usr/bin/env python3
"""Fail if any code path under the given directories builds an insecure gRPC port or channel.

The service is mutual-TLS only (DESIGN.md section 1): no plaintext listener, no plaintext or
unverified client channel. This walks the Python AST (so comments and strings do not count) and
flags:

* calls to ``insecure_channel``, ``add_insecure_port``, ``insecure_channel_credentials``,
  ``insecure_server_credentials``, ``local_channel_credentials``, ``local_server_credentials``,
  ``ssl._create_unverified_context``;
* ``insecure=True`` passed to any call (the gRPC experimental single-call API);
* ``verify=False`` passed to any call (HTTP clients: requests, httpx);
* ``ssl.CERT_NONE`` anywhere, and assigning ``False`` to ``check_hostname``;
* ``require_client_auth=False`` passed to any call (a server that stops asking for client
  certificates).

A line may opt out with a trailing ``# transport-check: allow <why>`` comment; the reason is
printed so a reviewer sees every exception. Exit status: 0 clean, 1 findings, 2 usage error.

Usage: ``check_no_insecure_transport.py [DIR_OR_FILE ...]`` (default: ``service clients``).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

BANNED_CALLS = frozenset(
    {
        "insecure_channel",
        "add_insecure_port",
        "insecure_channel_credentials",
        "insecure_server_credentials",
        "local_channel_credentials",
        "local_server_credentials",
        "_create_unverified_context",
    }
)
BANNED_KEYWORDS = {"insecure": True, "verify": False, "require_client_auth": False}
ALLOW_MARK = "# transport-check: allow"


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def findings(source: str, filename: str) -> Iterator[tuple[int, str]]:
    """(line, problem) for every insecure construct in ``source``."""
    tree = ast.parse(source, filename=filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = _name(node.func)
            if called in BANNED_CALLS:
                yield node.lineno, f"calls {called}()"
            for kw in node.keywords:
                banned = BANNED_KEYWORDS.get(kw.arg or "")
                if (
                    banned is not None
                    and isinstance(kw.value, ast.Constant)
                    and kw.value.value is banned
                ):
                    yield node.lineno, f"passes {kw.arg}={banned}"
        elif isinstance(node, ast.Attribute) and node.attr == "CERT_NONE":
            yield node.lineno, "uses ssl.CERT_NONE"
        elif isinstance(node, ast.Name) and node.id == "CERT_NONE":
            yield node.lineno, "uses CERT_NONE"
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if (
                isinstance(value, ast.Constant)
                and value.value is False
                and any(_name(t) == "check_hostname" for t in targets)
            ):
                yield node.lineno, "sets check_hostname = False"


def check_file(path: Path) -> list[str]:
    """Problems in one file, as ``path:line: problem`` lines (allowed ones say so)."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    out = []
    for lineno, problem in findings(source, str(path)):
        line = lines[lineno - 1] if lineno <= len(lines) else ""
        if ALLOW_MARK in line:
            reason = line.split(ALLOW_MARK, 1)[1].strip() or "(no reason given)"
            print(f"{path}:{lineno}: allowed: {problem}: {reason}")
            continue
        out.append(f"{path}:{lineno}: {problem}")
    return out


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("service"), Path("clients")]
    missing = [r for r in roots if not r.exists()]
    if missing:
        print(f"error: no such path: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    problems: list[str] = []
    files = 0
    for root in roots:
        for path in sorted([root] if root.is_file() else root.rglob("*.py")):
            if any(part in {".venv", "node_modules", "build"} for part in path.parts):
                continue
            files += 1
            problems.extend(check_file(path))
    for problem in problems:
        print(problem)
    print(
        f"insecure-transport check: {files} files, "
        + (f"{len(problems)} finding(s)" if problems else "no insecure port or channel")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
