"""open_store URL handling, redact_url, and the storage layer's import boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zumik_secrets.storage
from zumik_secrets.storage.factory import open_store, redact_url


def test_sqlite_url_creates_parent_dir(tmp_path):
    target = tmp_path / "a" / "b" / "zumik.db"
    s = open_store(f"sqlite:///{target}")
    try:
        assert s.backend == "sqlite"
        assert target.parent.is_dir()
        s.migrate()
        assert target.exists()
    finally:
        s.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"], ids=["long", "short"])
def test_postgres_schemes_accepted(scheme):
    s = open_store(f"{scheme}://u:pw@127.0.0.1:1/db", connect_timeout=1, pool_timeout=0.5)
    try:
        assert s.backend == "postgresql"
    finally:
        s.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root:topsecret@db/x",
        "sqlite://relative.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///x.db?mode=ro",
        "",
    ],
)
def test_bad_urls_are_value_errors_without_password(url):
    with pytest.raises(ValueError) as info:
        open_store(url)
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://zumik:s3cr%40t@db:5432/z", "postgresql://zumik:***@db:5432/z"),
        ("postgresql://zumik@db/z", "postgresql://zumik@db/z"),
        (
            "postgresql://db/z?password=s3cret&sslmode=require",
            "postgresql://db/z?password=***&sslmode=require",
        ),
        ("host=db user=z password=s3cret dbname=z", "host=db user=z password=*** dbname=z"),
        ("host=db password='s3 cret' dbname=z", "host=db password=*** dbname=z"),
        ("sqlite:///var/zumik.db", "sqlite:///var/zumik.db"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_storage_never_imports_grpc():
    root = Path(zumik_secrets.storage.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("grpc"), f"{path} imports {name}"
                assert not name.startswith(("zumik_secrets.api", "zumik_secrets.server")), path


def test_migrations_ship_as_package_data():
    from zumik_secrets.storage._common import load_migrations

    shipped = {
        pkg: [m.version for m in load_migrations(pkg)]
        for pkg in ("zumik_secrets.storage.sqlite", "zumik_secrets.storage.postgres")
    }
    assert len(set(map(tuple, shipped.values()))) == 1, shipped  # both backends ship the same
    for pkg in ("zumik_secrets.storage.sqlite", "zumik_secrets.storage.postgres"):
        migrations = load_migrations(pkg)
        versions = [m.version for m in migrations]
        # Ascending, unique and gapless from 1.
        assert versions == list(range(1, len(versions) + 1)), versions
        assert 3 in versions  # data keys and sealed secrets
        assert "CREATE TABLE api_keys" in migrations[0].sql
