"""Key files and database files are private and written atomically (issue 16, finding 5)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zumik_secrets.cli import main as cli
from zumik_secrets.core.keyring import MasterKeyring
from zumik_secrets.storage.factory import open_store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_0600(tmp_path: Path) -> None:
    out = tmp_path / "keyring.json"
    assert cli.main(["keygen", "--out", str(out)]) == 0
    assert _mode(out) == 0o600
    assert cli.main(["keygen", "--out", str(out)]) == 1  # exists, no --force: untouched


@pytest.mark.parametrize("args", [["--add-version"], ["--retire", "1"]])
def test_keyring_rewrite_is_atomic_and_narrows_a_loose_mode(
    tmp_path: Path, args: list[str]
) -> None:
    out = tmp_path / "keyring.json"
    assert cli.main(["keygen", "--out", str(out)]) == 0
    if args[0] == "--retire":
        assert cli.main(["keygen", "--out", str(out), "--add-version"]) == 0
    os.chmod(out, 0o644)
    before = out.read_text()
    inode = out.stat().st_ino
    assert cli.main(["keygen", "--out", str(out), *args]) == 0
    assert _mode(out) == 0o600
    assert out.stat().st_ino != inode  # replaced by rename, never truncated in place
    assert MasterKeyring.from_text(out.read_text()) is not None
    assert out.read_text() != before
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]  # no temp file left


def test_a_crash_mid_write_leaves_the_old_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "keyring.json"
    assert cli.main(["keygen", "--out", str(out)]) == 0
    before = out.read_text()

    def crash(fd: int) -> None:
        raise OSError(5, "simulated crash before the rename")

    monkeypatch.setattr(cli.os, "fsync", crash)
    try:
        code = cli.main(["keygen", "--out", str(out), "--add-version"])
    except OSError:
        code = -1
    assert code != 0
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]


def test_sqlite_database_files_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "zumik.db"
    store = open_store(f"sqlite:///{path}")
    try:
        store.migrate()
        assert store.tenants.get("acme") is None
    finally:
        store.close()
    for file in tmp_path.joinpath("var").iterdir():
        assert _mode(file) == 0o600, file.name


def test_a_loose_existing_database_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "zumik.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    store = open_store(f"sqlite:///{path}")
    store.close()
    assert _mode(path) == 0o600
