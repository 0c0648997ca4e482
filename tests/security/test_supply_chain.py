"""The hashed lock files cover every declared dependency (else `make lock` was forgotten)."""

from __future__ import annotations

import re
import tomllib

from tests.security.rpcs import REPO

LOCAL = {"zumik-secrets", "zumik-secrets-client"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, spec
    return _norm(match.group(1))


def _pins(path: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in (REPO / path).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            current = _norm(match.group(1))
            pins[current] = (match.group(2), 0)
        elif "--hash=sha256:" in line and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def test_every_declared_dependency_is_pinned_with_hashes() -> None:
    service = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())["project"]
    declared = {
        _requirement_name(spec)
        for spec in [
            *service["dependencies"],
            *service["optional-dependencies"]["dev"],
            *client.get("dependencies", []),
        ]
    } - LOCAL
    pins = {**_pins("requirements/dev.lock"), **_pins("requirements/build.lock")}
    missing = sorted(declared - set(pins))
    assert not missing, f"not in requirements/dev.lock (run `make lock`): {missing}"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"pinned without a hash: {unhashed}"
    assert not LOCAL & set(pins), "the local packages must not be in the lock"
