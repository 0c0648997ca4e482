"""Migrations keep the expand/contract rule that rolling upgrades rely on
(docs/operations/upgrade.md; tests/integration/test_upgrade_mixed.py runs the previous release
on the newest schema).

- An expand migration (the default) only adds: the previous release keeps working on it. A
  PostgreSQL migration that drops, renames, retypes or tightens something must say
  ``-- phase: contract`` in its text, and ships only once no release that uses the thing runs.
- Both adapters have the same versions, each with the same phase.

0001-0005 predate the rule and were reviewed by hand: the only destructive statement among them
replaces a CHECK constraint with a looser one (0003, both adapters).
"""

from __future__ import annotations

import re

from zumik_secrets.storage import _common

REVIEWED_BEFORE_THE_RULE = 5
# Statements that can break a server that still uses the old shape.
DESTRUCTIVE = re.compile(
    r"\bDROP\s+(TABLE|COLUMN|VIEW|FUNCTION|TYPE|SCHEMA)\b"
    r"|\bRENAME\b"
    r"|\bALTER\s+COLUMN\s+\S+\s+(TYPE|SET\s+NOT\s+NULL|SET\s+DATA\s+TYPE)\b"
    r"|\bDROP\s+CONSTRAINT\b"
    r"|\bTRUNCATE\b",
    re.IGNORECASE,
)


def _without_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def _migrations(backend: str) -> dict[int, _common.Migration]:
    return {m.version: m for m in _common.load_migrations(f"zumik_secrets.storage.{backend}")}


def test_both_adapters_have_the_same_versions_and_phases() -> None:
    pg, lite = _migrations("postgres"), _migrations("sqlite")
    assert sorted(pg) == sorted(lite)
    assert {v: m.phase for v, m in pg.items()} == {v: m.phase for v, m in lite.items()}


def test_destructive_postgresql_migrations_declare_contract() -> None:
    for version, migration in _migrations("postgres").items():
        if version <= REVIEWED_BEFORE_THE_RULE:
            continue
        found = DESTRUCTIVE.search(_without_comments(migration.sql))
        assert not found or migration.phase == "contract", (
            f"{version:04d}_{migration.name} has {found.group(0)!r}: an older server may still use "
            "what it removes; write it as expand (add, backfill, keep the old shape) or mark it "
            "'-- phase: contract' and ship it once no release that uses it runs"
        )


def test_the_phase_marker_is_read_and_the_rule_can_fail() -> None:
    contract = _common.Migration(9, "x", "-- phase: contract\nALTER TABLE t DROP COLUMN c;")
    expand = _common.Migration(9, "x", "ALTER TABLE t DROP COLUMN c;")
    assert contract.phase == "contract"
    assert expand.phase == "expand"
    assert DESTRUCTIVE.search(_without_comments(expand.sql))
    assert not DESTRUCTIVE.search(_without_comments("ALTER TABLE t ADD COLUMN c text;"))
    assert not DESTRUCTIVE.search(_without_comments("-- we never DROP TABLE here\nSELECT 1;"))
