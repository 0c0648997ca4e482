"""ServerConfig: one-line setting declarations; env over TOML over defaults; --help table."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from zumik_secrets.server.config import ServerConfig, Setting, settings_help

REQUIRED = {
    "ZUMIK_TLS_CERT": "c.pem",
    "ZUMIK_TLS_KEY": "k.pem",
    "ZUMIK_TLS_CLIENT_CA": "ca.pem",
    "ZUMIK_POLICY_FILE": "policy.toml",
    "ZUMIK_MASTER_KEYRING": "{}",
}


def test_every_field_is_a_documented_setting() -> None:
    envs = [f.metadata["setting"].env for f in fields(ServerConfig)]
    assert all(isinstance(f.metadata["setting"], Setting) for f in fields(ServerConfig))
    assert len(set(envs)) == len(envs) and all(e.startswith("ZUMIK_") for e in envs)
    table = settings_help()
    assert all(env in table for env in envs)
    assert "[default: 127.0.0.1:50051]" in table and "[default: 16]" in table


def test_env_over_toml_over_default(tmp_path: Path) -> None:
    toml = tmp_path / "zumik.toml"
    toml.write_text('workers = 4\nreflection = false\nlisten = "0.0.0.0:1"\n')
    env = REQUIRED | {"ZUMIK_CONFIG": str(toml), "ZUMIK_WORKERS": "7"}
    config = ServerConfig.load(env)
    assert config.workers == 7 and config.reflection is False and config.listen == "0.0.0.0:1"
    assert config.max_streams_per_peer == 8


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("off", False), ("", False)])
def test_bool_values(text: str, value: bool) -> None:
    assert ServerConfig.load(REQUIRED | {"ZUMIK_REFLECTION": text}).reflection is value


def test_bad_values_name_the_env_var(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ZUMIK_WORKERS: cannot read int value"):
        ServerConfig.load(REQUIRED | {"ZUMIK_WORKERS": "many"})
    with pytest.raises(ValueError, match="ZUMIK_REFLECTION"):
        ServerConfig.load(REQUIRED | {"ZUMIK_REFLECTION": "maybe"})
    with pytest.raises(ValueError, match="ZUMIK_WORKERS must be at least 1"):
        ServerConfig.load(REQUIRED | {"ZUMIK_WORKERS": "0"})
    toml = tmp_path / "zumik.toml"
    toml.write_text("wrokers = 4\n")
    with pytest.raises(ValueError, match="unknown settings"):
        ServerConfig.load(REQUIRED | {"ZUMIK_CONFIG": str(toml)})


def test_missing_required_settings_fail_closed() -> None:
    with pytest.raises(ValueError, match="not configured: ZUMIK_TLS_CERT"):
        ServerConfig.load({})


def test_inline_keyring_is_not_in_repr() -> None:
    config = ServerConfig.load(REQUIRED | {"ZUMIK_MASTER_KEYRING": "SENTINEL-KEYRING"})
    assert config.master_keyring == "SENTINEL-KEYRING" and "SENTINEL" not in repr(config)


def test_dev_witness_belongs_to_one_database() -> None:
    """Two dev servers on different databases sharing var/dev/audit-witness saw each other's
    checkpoints as a rewrite (a false CHECKPOINT_MISMATCH; adversary 2026-12-04)."""

    def witness(url: str) -> str:
        return ServerConfig.load({"ZUMIK_DEV": "1", "ZUMIK_DATABASE_URL": url}).audit_witness_dir

    sqlite = witness("sqlite:///var/zumik.db")
    pg = witness("postgresql://postgres@127.0.0.1:5432/zumik")
    assert sqlite != pg
    assert all(w.startswith("var/dev/audit-witness/") for w in (sqlite, pg))
    assert witness("sqlite:///var/zumik.db") == sqlite
    # Replicas given the same database with another password share the witness; the path holds
    # no digest of the password.
    assert witness("postgresql://postgres:a@127.0.0.1:5432/zumik") == witness(
        "postgresql://postgres:b@127.0.0.1:5432/zumik"
    )
    # An explicit setting wins.
    explicit = ServerConfig.load({"ZUMIK_DEV": "1", "ZUMIK_AUDIT_WITNESS_DIR": "/w"})
    assert explicit.audit_witness_dir == "/w"
