"""The database holds no raw API key, no raw session token and no claim, on either backend.

Keys and sessions are created, verified (so claims are minted and usage is flushed), rotated;
then every column of every table is scanned for the raw values and for any substring longer
than 8 characters of their secret parts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from zumik.secrets.v1 import common_pb2, key_service_pb2

from tests.fix_server import RunningServer
from zumik_secrets.core import api_keys as key_format

pytestmark = pytest.mark.integration

PARENT = "tenants/tenant-a/projects/proj"
WINDOW = 9  # "any substring longer than 8 characters"


def _windows(secret: str) -> set[str]:
    return {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}


def _rows(url: str) -> Iterator[tuple[str, str, object]]:
    """(table, column, value) for every cell of every table."""
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[1]
        conn = sqlite3.connect(path)
        try:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                cur = conn.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from the catalog
                cols = [d[0] for d in cur.description]
                for row in cur:
                    yield from ((table, c, v) for c, v in zip(cols, row, strict=True))
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        for table in tables:
            cur = conn.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from the catalog
            cols = [d.name for d in cur.description or ()]
            for row in cur:
                yield from ((table, c, v) for c, v in zip(cols, row, strict=True))


def _texts(value: object) -> list[str]:
    if value is None or isinstance(value, int | float):
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return [data.decode("latin-1"), data.hex()]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _texts(v)]
    return [str(value)]


def test_database_holds_no_raw_credential_or_claim(
    zumik_server_any_backend: RunningServer, store_url: str
) -> None:
    server = zumik_server_any_backend
    keys = server.stubs("control-plane").keys
    gateway = server.stubs("gateway").keys
    raw_values: list[str] = []
    secret_parts: list[str] = []
    for i in range(3):
        created = keys.CreateApiKey(
            key_service_pb2.CreateApiKeyRequest(
                parent=PARENT, scopes=["keys.read"], display_name=f"k{i}"
            )
        )
        raw_values.append(created.raw_key)
        secret_parts.append(key_format.parse_api_key(created.raw_key).secret)
        answer = gateway.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key=created.raw_key))
        assert answer.result == common_pb2.VERIFY_RESULT_VALID
        raw_values.append(answer.claim)
        secret_parts.append(answer.claim.rsplit(".", 1)[1])  # the signature
    rotated = keys.RotateApiKey(key_service_pb2.RotateApiKeyRequest(name=created.api_key.name))
    raw_values.append(rotated.raw_key)
    secret_parts.append(key_format.parse_api_key(rotated.raw_key).secret)
    for i in range(3):
        session = keys.CreateSession(
            key_service_pb2.CreateSessionRequest(parent=PARENT, user_subject=f"u{i}", scopes=["a"])
        )
        raw_values.append(session.token)
        secret_parts.append(session.token[3:])
        answer_s = gateway.VerifySession(key_service_pb2.VerifySessionRequest(token=session.token))
        assert answer_s.result == common_pb2.VERIFY_RESULT_VALID
        raw_values.append(answer_s.claim)
        secret_parts.append(answer_s.claim.rsplit(".", 1)[1])
        new = keys.RotateSession(key_service_pb2.RotateSessionRequest(name=session.session.name))
        raw_values.append(new.token)
        secret_parts.append(new.token[3:])
    server.runtime.usage.flush()

    needles = set(raw_values)
    for part in secret_parts:
        needles |= _windows(part)
    cells = 0
    for table, column, value in _rows(store_url):
        cells += 1
        for text in _texts(value):
            hits = [n for n in needles if n in text]
            assert not hits, f"{table}.{column} holds part of a raw credential or claim"
    assert cells > 50  # the scan did see the rows
