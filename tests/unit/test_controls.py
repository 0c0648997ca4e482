"""The controls checklist (scripts/controls.py, `make controls`): it must fail when a mapped test
is removed, fails or is skipped, when a control has no evidence or its document is missing, and
it must mark automation that runs elsewhere as "defined, not run on this machine", never as
passing. Also: the real registry maps only tests and documents that exist."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _controls() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "zumik_controls", REPO / "scripts" / "controls.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["zumik_controls"] = module
    spec.loader.exec_module(module)
    return module


FAKE_TESTS = """
import pytest

def test_ok():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n

def test_broken():
    assert False

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
"""


def _project(tmp_path: Path, controls: str) -> Path:
    root = tmp_path / "proj"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_fake.py").write_text(FAKE_TESTS)
    (root / "docs").mkdir()
    (root / "docs" / "process.md").write_text("# process\n")
    (root / "security").mkdir()
    (root / "security" / "controls.toml").write_text(controls)
    return root


def _control(
    cid: str, kind: str, *, tests: tuple[str, ...] = (), docs: tuple[str, ...] = ()
) -> str:
    return (
        f'[[control]]\nid = "{cid}"\narea = "A"\ntitle = "control {cid}"\nkind = "{kind}"\n'
        f"tests = {list(tests)!r}\ndocs = {list(docs)!r}\n\n".replace("'", '"')
    )


GOOD = (
    _control("T1", "test", tests=("tests/test_fake.py::test_ok", "tests/test_fake.py::test_param"))
    + _control("P1", "process", docs=("docs/process.md",))
    + _control("D1", "defined", docs=("docs/process.md",))
)


def _run(root: Path, *extra: str) -> tuple[int, str]:
    module = _controls()
    code = module.main(["--root", str(root), *extra])
    return code, (root / "docs" / "security" / "controls.md").read_text()


def test_all_evidence_holds(tmp_path: Path) -> None:
    code, doc = _run(_project(tmp_path, GOOD))
    assert code == 0, doc
    assert "verified (3 test cases passed)" in doc
    assert "process (defined in a document" in doc
    assert "defined, not run on this machine" in doc
    assert "FAILING" not in doc


@pytest.mark.parametrize(
    ("test_id", "problem"),
    [
        ("tests/test_fake.py::test_removed", "missing"),
        ("tests/test_gone.py::test_ok", "missing"),
        ("tests/test_fake.py::test_broken", "failing"),
        ("tests/test_fake.py::test_skipped", "skipped"),
    ],
)
def test_a_removed_failing_or_skipped_test_fails_the_checklist(
    tmp_path: Path, test_id: str, problem: str
) -> None:
    registry = GOOD + _control("BAD", "test", tests=("tests/test_fake.py::test_ok", test_id))
    code, doc = _run(_project(tmp_path, registry))
    assert code == 1
    row = next(line for line in doc.splitlines() if line.startswith("| BAD "))
    assert "FAILING" in row and problem in row
    # The other controls are still reported as they are.
    assert "verified (3 test cases passed)" in doc


def test_removing_a_test_from_the_source_fails(tmp_path: Path) -> None:
    root = _project(tmp_path, GOOD)
    assert _run(root)[0] == 0
    fake = root / "tests" / "test_fake.py"
    fake.write_text(fake.read_text().replace("def test_ok():", "def test_renamed():"))
    code, doc = _run(root)
    assert code == 1 and "`tests/test_fake.py::test_ok` missing" in doc


@pytest.mark.parametrize(
    "entry",
    [
        _control("E1", "test"),
        _control("E2", "process"),
        _control("E3", "process", docs=("docs/nope.md",)),
        _control("E4", "defined", docs=("ci/nope.yml",)),
        _control("E5", "wishful", docs=("docs/process.md",)),
    ],
)
def test_no_evidence_fails(tmp_path: Path, entry: str) -> None:
    junit = tmp_path / "all-pass.xml"
    junit.write_text(
        '<?xml version="1.0"?><testsuites><testsuite>'
        '<testcase classname="tests.test_fake" name="test_ok"/>'
        '<testcase classname="tests.test_fake" name="test_param[1]"/>'
        "</testsuite></testsuites>"
    )
    code, doc = _run(_project(tmp_path, GOOD + entry), "--junit", str(junit))
    assert code == 1 and doc.count("FAILING") == 1


def test_results_can_come_from_a_junit_file(tmp_path: Path) -> None:
    root = _project(tmp_path, GOOD)
    junit = tmp_path / "results.xml"
    junit.write_text(
        '<?xml version="1.0"?><testsuites><testsuite>'
        '<testcase classname="tests.test_fake" name="test_ok"/>'
        '<testcase classname="tests.test_fake" name="test_param[1]"/>'
        '<testcase classname="tests.test_fake" name="test_param[2]"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    code, doc = _run(root, "--junit", str(junit))
    assert code == 1 and "`tests/test_fake.py::test_param` skipped" in doc
    junit.write_text(junit.read_text().replace("<skipped/>", ""))
    assert _run(root, "--junit", str(junit))[0] == 0
    # A junit file from a run that did not include a mapped test: missing, not passing.
    junit.write_text(junit.read_text().replace('name="test_ok"', 'name="test_other"'))
    code, doc = _run(root, "--junit", str(junit))
    assert code == 1 and "`tests/test_fake.py::test_ok` missing" in doc


def test_the_real_registry_maps_existing_tests_and_documents() -> None:
    registry = tomllib.loads((REPO / "security" / "controls.toml").read_text())
    controls = registry["control"]
    assert len({c["id"] for c in controls}) == len(controls)
    for control in controls:
        assert control["kind"] in ("test", "process", "defined")
        if control["kind"] == "test":
            assert control["tests"], control["id"]
            for node in control["tests"]:
                path, _, name = node.partition("::")
                source = (REPO / path).read_text()
                assert re.search(rf"^def {re.escape(name)}\(", source, re.M), node
        else:
            assert control["docs"], control["id"]
            for doc in control["docs"]:
                assert (REPO / doc).is_file(), doc
    # Scanning needs the network: it must be "defined", never claimed as verified here.
    scan = next(c for c in controls if c["id"] == "SUPPLY-SCAN")
    assert scan["kind"] == "defined"
