"""``make controls``: verify the security controls checklist and render docs/security/controls.md.

The registry (``security/controls.toml``) lists every control the security overview promises,
each with its evidence:

* ``kind = "test"``: pytest node ids. A function id covers all its parameter cases. The control
  holds only if every mapped id ran and passed: an id that is missing (renamed, deleted, not
  collected), skipped or failing fails the control, and the command.
* ``kind = "process"``: the document that defines the process. Shown as "process", never as
  verified by code; a missing document fails.
* ``kind = "defined"``: automation defined in the repository that runs elsewhere (it needs the
  network). Shown as "defined, not run on this machine"; a missing definition fails.

Results come from a JUnit XML file (``--junit``: ``make test`` writes one, so CI does not run
the tests twice) or, without one, from running the mapped tests now.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KINDS = ("test", "process", "defined")
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


@dataclass
class Control:
    """One control of the registry and its verdict."""

    id: str
    area: str
    title: str
    kind: str
    tests: list[str] = field(default_factory=list)
    docs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cases: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        if self.problems:
            return "**FAILING**: " + "; ".join(self.problems)
        if self.kind == "test":
            return f"verified ({self.cases} test cases passed)"
        if self.kind == "process":
            return "process (defined in a document; not verifiable by code)"
        return "defined, not run on this machine"


def load_registry(path: Path) -> list[Control]:
    """Parse the registry; a malformed entry becomes a failing control, not a crash."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    controls: list[Control] = []
    seen: set[str] = set()
    for index, raw in enumerate(data.get("control", [])):
        entry: dict[str, Any] = raw if isinstance(raw, dict) else {}
        control = Control(
            id=str(entry.get("id", f"#{index}")),
            area=str(entry.get("area", "")),
            title=str(entry.get("title", "")),
            kind=str(entry.get("kind", "")),
            tests=[str(t) for t in entry.get("tests", [])],
            docs=[str(d) for d in entry.get("docs", [])],
        )
        if control.id in seen:
            control.problems.append("duplicate id")
        seen.add(control.id)
        if not control.title:
            control.problems.append("no title")
        if control.kind not in KINDS:
            control.problems.append(f"kind must be one of {KINDS}")
        elif control.kind == "test" and not control.tests:
            control.problems.append("no evidence (no tests mapped)")
        elif control.kind != "test" and not control.docs:
            control.problems.append("no evidence (no document named)")
        controls.append(control)
    if not controls:
        raise SystemExit(f"controls: {path} lists no controls")
    return controls


def _node_id(root: Path, classname: str, name: str) -> str:
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = "/".join(parts[:cut]) + ".py"
        if (root / candidate).is_file():
            return "::".join([candidate, *parts[cut:], name])
    return f"{classname.replace('.', '/')}.py::{name}"


def read_junit(path: Path, root: Path) -> dict[str, str]:
    """node id -> ``passed`` / ``failed`` / ``skipped`` from a pytest JUnit XML file."""
    results: dict[str, str] = {}
    tree = ET.parse(path)  # noqa: S314 - our own pytest output
    for case in tree.iter("testcase"):
        node = _node_id(root, case.get("classname", ""), case.get("name", ""))
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        # A node reported twice (an error in teardown after a pass) keeps the worst outcome.
        if _RANK[outcome] >= _RANK.get(results.get(node, "passed"), 0):
            results[node] = outcome
    return results


def run_tests(controls: list[Control], root: Path, pytest_args: list[str]) -> dict[str, str]:
    """Run the mapped tests that exist now (collect first, so a missing id cannot abort the
    run) and return their results."""
    wanted = sorted({t for c in controls if c.kind == "test" for t in c.tests})
    files = sorted({t.split("::", 1)[0] for t in wanted if (root / t.split("::", 1)[0]).is_file()})
    if not files:
        return {}
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    ids = [line.strip() for line in collected if "::" in line]
    run = [i for i in ids if any(i == t or i.startswith(t + "[") for t in wanted)]
    if not run:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "controls.xml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                *pytest_args,
                *run,
            ],
            cwd=root,
            check=False,
        )
        return read_junit(junit, root) if junit.exists() else {}


def evaluate(controls: list[Control], results: dict[str, str], root: Path) -> None:
    """Fill in each control's problems and case count."""
    for control in controls:
        if control.kind == "test":
            for test in control.tests:
                outcomes = [
                    outcome
                    for node, outcome in results.items()
                    if node == test or node.startswith(test + "[")
                ]
                if not outcomes:
                    control.problems.append(f"`{test}` missing (not collected or not run)")
                elif "failed" in outcomes:
                    control.problems.append(f"`{test}` failing")
                elif "skipped" in outcomes:
                    control.problems.append(f"`{test}` skipped")
                else:
                    control.cases += len(outcomes)
        else:
            for doc in control.docs:
                if not (root / doc).is_file():
                    control.problems.append(f"`{doc}` missing")


def render(controls: list[Control], source: str) -> str:
    """The checklist as Markdown."""
    failing = sum(not c.ok for c in controls)
    lines = [
        "# Security controls checklist",
        "",
        "Generated by `make controls` from `security/controls.toml`: every control the security",
        "overview promises, the evidence that proves it, and whether that evidence holds now.",
        "Do not edit by hand.",
        "",
        f"Results: {source}. {len(controls)} controls, "
        f"{sum(c.ok and c.kind == 'test' for c in controls)} verified by tests, "
        f"{sum(c.ok and c.kind == 'process' for c in controls)} process, "
        f"{sum(c.ok and c.kind == 'defined' for c in controls)} defined but not run here, "
        f"{failing} failing.",
        "",
        "| id | area | control | evidence | status |",
        "|---|---|---|---|---|",
    ]
    for c in controls:
        evidence = "<br>".join(f"`{e}`" for e in (c.tests if c.kind == "test" else c.docs))
        lines.append(f"| {c.id} | {c.area} | {c.title} | {evidence or '(none)'} | {c.status} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when every control holds, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO))
    parser.add_argument("--registry", default="security/controls.toml")
    parser.add_argument("--out", default="docs/security/controls.md")
    parser.add_argument("--junit", default="", help="read results from this JUnit XML file")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (own run only)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    controls = load_registry(root / args.registry)
    if args.junit:
        results = read_junit(Path(args.junit), root)
        source = f"read from `{Path(args.junit).name}` (the `make test` run)"
    else:
        results = run_tests(controls, root, list(args.pytest_args))
        source = "from running the mapped tests"
    evaluate(controls, results, root)
    out = root / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(controls, source), encoding="utf-8")
    failing = [c for c in controls if not c.ok]
    for c in controls:
        print(f"controls: {c.id:<20} {'FAIL' if c.problems else 'ok  '} {c.status}")
    print(f"controls: wrote {out}; {len(failing)} of {len(controls)} controls failing")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
