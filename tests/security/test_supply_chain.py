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


def test_the_image_lock_pins_the_runtime_only_at_the_dev_versions() -> None:
    service = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())["project"]
    runtime_declared = {
        _requirement_name(s) for s in [*service["dependencies"], *client.get("dependencies", [])]
    } - LOCAL
    dev_only = {_requirement_name(s) for s in service["optional-dependencies"]["dev"]}
    runtime = _pins("requirements/runtime.lock")
    dev = _pins("requirements/dev.lock")
    missing = sorted(runtime_declared - set(runtime))
    assert not missing, f"not in requirements/runtime.lock (run `make lock`): {missing}"
    assert not dev_only & set(runtime) - runtime_declared, "dev tools in the image lock"
    assert not LOCAL & set(runtime), "the local packages must not be in the lock"
    assert all(hashes for _, hashes in runtime.values()), "pinned without a hash"
    differ = {n: (v, dev[n][0]) for n, (v, _) in runtime.items() if n in dev and dev[n][0] != v}
    assert not differ, f"runtime.lock and dev.lock pin different versions: {differ}"


def test_the_dockerfile_installs_only_from_the_hashed_locks() -> None:
    text = (REPO / "deploy/Dockerfile").read_text()
    joined = text.replace("\\\n", " ")
    installs = [
        " ".join(part.split())
        for line in joined.splitlines()
        for part in line.split("&&")
        if "pip install" in part
    ]
    assert installs, "no pip install in the Dockerfile"
    for cmd in installs:
        from_lock = "--require-hashes" in cmd and "-r requirements/" in cmd
        local_wheels = "--no-deps" in cmd and "--no-index" in cmd
        assert from_lock or local_wheels, f"unpinned install in the Dockerfile: {cmd!r}"
    assert "requirements/runtime.lock" in text
    assert "pip wheel" not in text or "--no-deps" in text
