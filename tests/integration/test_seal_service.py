"""SealService over real mTLS on both backends: round trips, authorization, AAD binding,
no plaintext at rest or in telemetry, rotation, rewrap, crypto-shredding, audit fail-closed."""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from zumik.secrets.v1 import common_pb2, seal_service_pb2

from tests import fix_leaks
from tests.fix_db import wait_until
from tests.fix_server import RunningServer, ServerFactory
from tests.grpc_errors import error_info
from zumik_secrets.app.audit import AuditEntry
from zumik_secrets.core.errors import Unavailable
from zumik_secrets.core.handles import new_handle
from zumik_secrets.server.log_setup import JsonFormatter, RedactionFilter

pytestmark = pytest.mark.integration

T, P = "acme", "web"
PARENT = f"tenants/{T}/projects/{P}"
SEAL_SCOPES = ("secrets.seal", "secrets.read", "secrets.admin")
OPEN_SCOPES = ("secrets.open", "secrets.read")
PLAINTEXT = b"sk-live-PLAINTEXT-SENTINEL-5c1e9a7b3d"


def _fails(call: Callable[[], Any], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    assert err.code() == code, (err.code(), err.details())  # type: ignore[attr-defined]
    return err


def _seal(server: RunningServer, plaintext: bytes = PLAINTEXT, parent: str = PARENT, **kw: Any):
    tenant, project = parent.split("/")[1], parent.split("/")[3]
    claim = server.mint_claim(tenant, project, SEAL_SCOPES)
    return (
        server.stubs("console", claim=claim)
        .seal.Seal(
            seal_service_pb2.SealRequest(parent=parent, plaintext=plaintext, **kw), timeout=5
        )
        .secret
    )


def _open(server: RunningServer, name: str, scopes: tuple[str, ...] = OPEN_SCOPES) -> Any:
    tenant, project = name.split("/")[1], name.split("/")[3]
    claim = server.mint_claim(tenant, project, scopes)
    return server.stubs("executor", claim=claim).seal.Open(
        seal_service_pb2.OpenRequest(name=name), timeout=5
    )


def _admin(server: RunningServer, parent: str = PARENT) -> Any:
    return server.stubs("control-plane").seal


# ----------------------------------------------------------------------------- database access


def _db_execute(server: RunningServer, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run SQL directly on the server's database (sqlite3 or psycopg), bypassing the service."""
    url = server.runtime.config.database_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            cur = conn.execute(sql.replace("%s", "?"), params)
            rows = cur.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _every_cell(server: RunningServer) -> Iterator[tuple[str, str, bytes]]:
    """Every cell of every table, as bytes (text columns UTF-8)."""
    url = server.runtime.config.database_url
    if url.startswith("sqlite"):
        tables = [
            r[0] for r in _db_execute(server, "SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
    else:
        tables = [
            r[0]
            for r in _db_execute(
                server, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
    assert "sealed_secrets" in tables and "data_keys" in tables
    for table in tables:
        if url.startswith("sqlite"):
            cols = [r[1] for r in _db_execute(server, f"PRAGMA table_info({table})")]
        else:
            cols = [
                r[0]
                for r in _db_execute(
                    server,
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                    (table,),
                )
            ]
        for col in cols:
            cast = col if url.startswith("sqlite") else f"{col}::text"
            for (value,) in _db_execute(server, f"SELECT {cast} FROM {table}"):  # noqa: S608
                if value is None:
                    continue
                raw = (
                    bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                )
                yield table, col, raw


# ----------------------------------------------------------------------------- round trip & authz


def test_seal_then_open_round_trips_over_mtls(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    secret = _seal(server, display_name="OpenAI key", metadata={"provider": "openai"})
    assert secret.name.startswith(f"{PARENT}/secrets/sec_")
    assert len(secret.name.rsplit("/", 1)[1]) == 26
    assert secret.version == 1 and secret.data_key_version == 1
    assert secret.size_bytes == len(PLAINTEXT)
    assert dict(secret.metadata) == {"provider": "openai"}
    assert PLAINTEXT not in secret.SerializeToString()
    opened = _open(server, secret.name)
    assert opened.plaintext == PLAINTEXT
    assert opened.version == 1 and opened.name == secret.name
    # the executor may read metadata too (policy), never ciphertext
    claim = server.mint_claim(T, P, OPEN_SCOPES)
    got = server.stubs("executor", claim=claim).seal.GetSecret(
        seal_service_pb2.GetSecretRequest(name=secret.name), timeout=5
    )
    assert got.secret == secret


def test_open_authorization(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    name = _seal(server).name
    # The console identity is not granted Open by the policy, whatever its claim says.
    claim = server.mint_claim(T, P, OPEN_SCOPES)
    err = _fails(
        lambda: server.stubs("console", claim=claim).seal.Open(
            seal_service_pb2.OpenRequest(name=name), timeout=5
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "METHOD_NOT_ALLOWED"
    # A claim for another tenant: NOT_FOUND, byte-identical to a missing secret.
    other = server.mint_claim("globex", P, OPEN_SCOPES)
    err = _fails(
        lambda: server.stubs("executor", claim=other).seal.Open(
            seal_service_pb2.OpenRequest(name=name), timeout=5
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_info(err).reason == "NOT_FOUND"
    missing = f"{PARENT}/secrets/{new_handle('sec')}"
    err_missing = _fails(lambda: _open(server, missing), grpc.StatusCode.NOT_FOUND)
    assert error_info(err_missing).reason == "NOT_FOUND"
    # A claim without secrets.open: PERMISSION_DENIED naming the scope.
    err = _fails(
        lambda: _open(server, name, ("secrets.read", "secrets.seal")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "MISSING_SCOPE"
    assert error_info(err).metadata["scope"] == "secrets.open"
    for e in (err, err_missing):
        assert PLAINTEXT.decode() not in (e.details() or "")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"plaintext": b""}, "plaintext"),
        ({"plaintext": b"x" * (64 * 1024 + 1)}, "plaintext"),
        ({"display_name": "x" * 129}, "display_name"),
        ({"display_name": "tab\there"}, "display_name"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"Upper": "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 257}}, "metadata"),
        ({"metadata": {"k": "line\nbreak"}}, "metadata"),
    ],
)
def test_seal_limits_are_invalid_argument(
    zumik_server: RunningServer, kw: dict[str, Any], field: str
) -> None:
    request = {"plaintext": b"ok-plaintext", **kw}
    err = _fails(lambda: _seal(zumik_server, **request), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).metadata["field"] == field


def test_largest_plaintext_is_accepted(zumik_server: RunningServer) -> None:
    big = bytes(range(256)) * 256
    assert len(big) == 64 * 1024
    name = _seal(zumik_server, big).name
    assert _open(zumik_server, name).plaintext == big


def test_get_list_update_delete(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    claim = server.mint_claim(T, P, SEAL_SCOPES)
    seal = server.stubs("console", claim=claim).seal
    names = [_seal(server, f"value-{i}".encode() * 3, display_name=f"n{i}").name for i in range(5)]
    _seal(server, b"elsewhere-value", parent=f"tenants/{T}/projects/other")
    seen: list[str] = []
    token = ""
    while True:
        page = seal.ListSecrets(
            seal_service_pb2.ListSecretsRequest(parent=PARENT, page_size=2, page_token=token),
            timeout=5,
        )
        assert len(page.secrets) <= 2
        seen.extend(s.name for s in page.secrets)
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    # A token is bound to its listing.
    first = seal.ListSecrets(seal_service_pb2.ListSecretsRequest(parent=PARENT, page_size=1))
    err = _fails(
        lambda: seal.ListSecrets(
            seal_service_pb2.ListSecretsRequest(parent=PARENT, page_token="garbage"), timeout=5
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "INVALID_PAGE_TOKEN"
    other_claim = server.mint_claim(T, "other", SEAL_SCOPES)
    err = _fails(
        lambda: server.stubs("console", claim=other_claim).seal.ListSecrets(
            seal_service_pb2.ListSecretsRequest(
                parent=f"tenants/{T}/projects/other", page_token=first.next_page_token
            ),
            timeout=5,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # Update: new version, old ciphertext replaced.
    old_ct = _db_execute(
        server,
        "SELECT ciphertext FROM sealed_secrets WHERE secret_id = %s",
        (names[0].split("/")[-1],),
    )[0][0]
    updated = seal.UpdateSecret(
        seal_service_pb2.UpdateSecretRequest(name=names[0], plaintext=b"rotated-provider-key"),
        timeout=5,
    ).secret
    assert updated.version == 2 and updated.size_bytes == len(b"rotated-provider-key")
    opened = _open(server, names[0])
    assert (opened.plaintext, opened.version) == (b"rotated-provider-key", 2)
    cts = [bytes(r[0]) for r in _db_execute(server, "SELECT ciphertext FROM sealed_secrets")]
    assert bytes(old_ct) not in cts
    # Delete, then NOT_FOUND everywhere; delete with rotation returns the new version.
    answer = seal.DeleteSecret(seal_service_pb2.DeleteSecretRequest(name=names[1]), timeout=5)
    assert answer.name == names[1] and not answer.HasField("data_key")
    _fails(lambda: _open(server, names[1]), grpc.StatusCode.NOT_FOUND)
    _fails(
        lambda: seal.GetSecret(seal_service_pb2.GetSecretRequest(name=names[1]), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )
    _fails(
        lambda: seal.DeleteSecret(seal_service_pb2.DeleteSecretRequest(name=names[1]), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )
    answer = seal.DeleteSecret(
        seal_service_pb2.DeleteSecretRequest(name=names[2], rotate_data_key=True), timeout=5
    )
    assert answer.data_key.version == 2
    assert answer.data_key.state == common_pb2.DATA_KEY_STATE_PRIMARY
    assert _open(server, names[3]).plaintext == b"value-3" * 3  # older version still opens


# ----------------------------------------------------------------------------- AAD binding


def _expect_clean_failure(server: RunningServer, name: str) -> None:
    err = _fails(lambda: _open(server, name), grpc.StatusCode.FAILED_PRECONDITION)
    info = error_info(err)
    assert info.reason == "DECRYPTION_FAILED"
    text = f"{err.details()} {err.trailing_metadata()!r}"  # type: ignore[attr-defined]
    assert "moved" in err.details()  # type: ignore[attr-defined]
    assert PLAINTEXT.decode() not in text


def test_moving_a_ciphertext_row_makes_open_fail(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    # Each destination has its own seal key so that the failure is the binding, not a lookup.
    for parent in (PARENT, f"tenants/{T}/projects/p2", f"tenants/t2/projects/{P}"):
        _seal(server, b"warm-up-value-123", parent=parent)
    victims = [_seal(server).name for _ in range(4)]
    ids = [n.rsplit("/", 1)[1] for n in victims]

    # 1. Another secret id in the same project (same data key: only the AAD stops it).
    new_id = new_handle("sec")
    _db_execute(
        server, "UPDATE sealed_secrets SET secret_id = %s WHERE secret_id = %s", (new_id, ids[0])
    )
    _expect_clean_failure(server, f"{PARENT}/secrets/{new_id}")
    # 2. Another secret's ciphertext copied over this row.
    other = _seal(server, b"other-secret-value").name.rsplit("/", 1)[1]
    _db_execute(
        server,
        "UPDATE sealed_secrets SET ciphertext = (SELECT ciphertext FROM sealed_secrets"
        " WHERE secret_id = %s) WHERE secret_id = %s",
        (ids[1], other),
    )
    _expect_clean_failure(server, f"{PARENT}/secrets/{other}")
    # 3. Another project of the same tenant.
    _db_execute(
        server, "UPDATE sealed_secrets SET project_id = 'p2' WHERE secret_id = %s", (ids[2],)
    )
    _expect_clean_failure(server, f"tenants/{T}/projects/p2/secrets/{ids[2]}")
    # 4. Another tenant.
    _db_execute(
        server, "UPDATE sealed_secrets SET tenant_id = 't2' WHERE secret_id = %s", (ids[3],)
    )
    _expect_clean_failure(server, f"tenants/t2/projects/{P}/secrets/{ids[3]}")


def test_copied_data_key_does_not_unwrap(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    name = _seal(server, b"value-in-p2-abc", parent=f"tenants/{T}/projects/p2").name
    _seal(server, b"value-in-t2-abc", parent=f"tenants/t2/projects/{P}")
    _db_execute(
        server,
        "UPDATE data_keys SET wrapped_key = (SELECT wrapped_key FROM data_keys WHERE"
        " tenant_id = 't2' AND project_id = %s) WHERE tenant_id = %s AND project_id = 'p2'",
        (P, T),
    )
    server.runtime.data_keys.cache.clear()
    _expect_clean_failure(server, name)


# ------------------------------------------------------------------------ no plaintext anywhere


@pytest.fixture
def telemetry() -> Iterator[tuple[Any, io.StringIO]]:
    """Every span and every log line the service writes during the test."""
    fix_leaks.install_tracer_provider()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another tracer provider was installed first in this process")
    exporter = fix_leaks.TEST_SPAN_EXPORTER
    exporter.clear()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield exporter, stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def test_plaintext_never_at_rest_in_logs_spans_or_errors(
    zumik_server_any_backend: RunningServer, telemetry: tuple[Any, io.StringIO]
) -> None:
    server = zumik_server_any_backend
    exporter, log = telemetry
    secrets = [PLAINTEXT, b"second-SENTINEL-plaintext-0e4f", bytes(range(7, 250))]
    names = [_seal(server, s, metadata={"provider": "x"}).name for s in secrets]
    errors: list[str] = []
    for name, value in zip(names, secrets, strict=True):
        assert _open(server, name).plaintext == value
    claim = server.mint_claim(T, P, SEAL_SCOPES)
    server.stubs("console", claim=claim).seal.UpdateSecret(
        seal_service_pb2.UpdateSecretRequest(name=names[1], plaintext=secrets[1] + b"-v2"),
        timeout=5,
    )
    # Failures of every kind on the way.
    for call in (
        lambda: _open(server, names[0], ("secrets.read",)),
        lambda: _open(server, f"{PARENT}/secrets/{new_handle('sec')}"),
        lambda: _seal(server, PLAINTEXT, metadata={"BAD": "x"}),
        lambda: _seal(server, PLAINTEXT * 3000),
    ):
        try:
            call()
        except grpc.RpcError as err:
            errors.append(f"{err.code()} {err.details()} {err.trailing_metadata()!r}")  # type: ignore[attr-defined]
    assert len(errors) == 4
    _db_execute(
        server,
        "UPDATE sealed_secrets SET project_id = 'zz' WHERE secret_id = %s",
        (names[2].rsplit("/", 1)[1],),
    )
    with pytest.raises(grpc.RpcError) as moved:
        _open(server, f"tenants/{T}/projects/zz/secrets/{names[2].rsplit('/', 1)[1]}")
    err = moved.value
    errors.append(f"{err.code()} {err.details()} {err.trailing_metadata()!r}")  # type: ignore[attr-defined]

    needles = [s for s in secrets] + [secrets[1] + b"-v2"]
    cells = list(_every_cell(server))
    assert any(t == "sealed_secrets" and c == "ciphertext" for t, c, _ in cells)
    for table, col, raw in cells:
        for needle in needles:
            assert needle not in raw, (table, col)
            assert needle.hex().encode() not in raw.lower(), (table, col)
    spans = []
    for span in exporter.get_finished_spans():
        spans.append(repr(dict(span.attributes or {})))
        spans.extend(repr(dict(event.attributes or {})) for event in span.events)
        spans.append(span.status.description or "")
    assert any("SealService" in s for s in spans)
    lines = log.getvalue()
    assert "secret.open" in lines or "SealService" in lines
    for needle in needles:
        text = needle.decode("latin-1")
        assert not any(text in s for s in spans)
        assert text not in lines
        assert not any(text in e for e in errors)


# ----------------------------------------------------------------------------- audit


class _Recorder:
    def __init__(self, fail_durable: bool = False) -> None:
        self.entries: list[tuple[AuditEntry, bool]] = []
        self.fail_durable = fail_durable

    def record(self, entry: AuditEntry, *, durable: bool = False) -> None:
        if durable and self.fail_durable:
            raise Unavailable("audit store down", reason="AUDIT_STORE_UNAVAILABLE")
        self.entries.append((entry, durable))

    @contextmanager
    def change(self, *entries: AuditEntry, record_unchanged: bool = True) -> Iterator[None]:
        if self.fail_durable:  # the event cannot be written: the change does not happen
            raise Unavailable("audit store down", reason="AUDIT_STORE_UNAVAILABLE")
        yield
        self.entries.extend((entry, True) for entry in entries)


def test_every_open_is_audited_durably_and_fails_closed(zumik_server: RunningServer) -> None:
    name = _seal(zumik_server).name
    recorder = _Recorder()
    zumik_server.runtime.sealed_secrets._audit = recorder  # type: ignore[assignment]
    assert _open(zumik_server, name).plaintext == PLAINTEXT
    opens = [(e, d) for e, d in recorder.entries if e.action == "secret.open"]
    assert len(opens) == 1
    entry, durable = opens[0]
    assert durable and entry.outcome == "success" and entry.target == name
    assert entry.tenant_id == T and entry.actor == "spiffe://zumik.local/svc/executor"
    missing = f"{PARENT}/secrets/{new_handle('sec')}"
    _fails(lambda: _open(zumik_server, missing), grpc.StatusCode.NOT_FOUND)
    failed = [
        e for e, _ in recorder.entries if e.action == "secret.open" and e.outcome == "failure"
    ]
    assert failed[-1].target == missing and failed[-1].reason == "NOT_FOUND"
    # The recorder is down: nothing comes back.
    recorder.fail_durable = True
    err = _fails(lambda: _open(zumik_server, name), grpc.StatusCode.UNAVAILABLE)
    assert error_info(err).reason == "AUDIT_UNAVAILABLE"
    assert PLAINTEXT.decode() not in f"{err.details()} {err.trailing_metadata()!r}"  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- rotation


def _versions(server: RunningServer, parent: str = PARENT) -> dict[int, int]:
    answer = server.stubs("control-plane").seal.ListDataKeyVersions(
        seal_service_pb2.ListDataKeyVersionsRequest(parent=parent), timeout=5
    )
    return {v.version: v.state for v in answer.data_keys}


def test_rotate_rewrap_destroy(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    admin = server.stubs("control-plane").seal
    old = [_seal(server, f"old-secret-{i}-value".encode()) for i in range(5)]
    assert {s.data_key_version for s in old} == {1}
    rotated = admin.RotateDataKey(seal_service_pb2.RotateDataKeyRequest(parent=PARENT), timeout=5)
    assert rotated.data_key.version == 2
    assert rotated.data_key.wrapped_by == "keyring"
    assert _versions(server) == {
        1: common_pb2.DATA_KEY_STATE_ENABLED,
        2: common_pb2.DATA_KEY_STATE_PRIMARY,
    }
    new = _seal(server, b"new-secret-value-1")
    assert new.data_key_version == 2
    for i, s in enumerate(old):  # the old version still opens what it sealed
        assert _open(server, s.name).plaintext == f"old-secret-{i}-value".encode()

    # Destroy guards.
    err = _fails(
        lambda: admin.DestroyDataKeyVersion(
            seal_service_pb2.DestroyDataKeyVersionRequest(
                parent=PARENT,
                purpose=common_pb2.DATA_KEY_PURPOSE_SEAL,
                version=1,
                confirm_version=2,
            ),
            timeout=5,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).reason == "CONFIRMATION_MISMATCH"
    err = _fails(
        lambda: admin.DestroyDataKeyVersion(
            seal_service_pb2.DestroyDataKeyVersionRequest(
                parent=PARENT,
                purpose=common_pb2.DATA_KEY_PURPOSE_SEAL,
                version=2,
                confirm_version=2,
            ),
            timeout=5,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "DATA_KEY_PRIMARY"

    # Rewrap in batches of 2, resuming with the token and reporting progress.
    token, total, progress = "", 0, []
    while True:
        answer = admin.RewrapSecrets(
            seal_service_pb2.RewrapSecretsRequest(parent=PARENT, batch_size=2, page_token=token),
            timeout=5,
        )
        assert answer.target_version == 2
        total += answer.rewrapped_count
        progress.append(answer.remaining_count)
        token = answer.next_page_token
        if not token:
            break
    assert total == 5 and progress[-1] == 0 and progress == sorted(progress, reverse=True)
    versions_in_db = {
        int(r[0])
        for r in _db_execute(
            server, "SELECT data_key_version FROM sealed_secrets WHERE tenant_id = %s", (T,)
        )
    }
    assert versions_in_db == {2}
    again = admin.RewrapSecrets(seal_service_pb2.RewrapSecretsRequest(parent=PARENT), timeout=5)
    assert (again.rewrapped_count, again.remaining_count, again.next_page_token) == (0, 0, "")

    # Nothing is left under v1: destroying it loses nothing.
    destroyed = admin.DestroyDataKeyVersion(
        seal_service_pb2.DestroyDataKeyVersionRequest(
            parent=PARENT, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL, version=1, confirm_version=1
        ),
        timeout=5,
    )
    assert destroyed.unrecoverable_secret_count == 0
    assert destroyed.data_key.state == common_pb2.DATA_KEY_STATE_DESTROYED
    assert destroyed.data_key.HasField("destroy_time")
    for i, s in enumerate(old):
        got = _open(server, s.name)
        assert (got.plaintext, got.version) == (f"old-secret-{i}-value".encode(), 1)

    # Crypto-shred a version that still seals something, without rewrapping first.
    doomed = _seal(server, b"doomed-secret-value")
    admin.RotateDataKey(seal_service_pb2.RotateDataKeyRequest(parent=PARENT), timeout=5)
    destroyed = admin.DestroyDataKeyVersion(
        seal_service_pb2.DestroyDataKeyVersionRequest(
            parent=PARENT, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL, version=2, confirm_version=2
        ),
        timeout=5,
    )
    assert destroyed.unrecoverable_secret_count == 7  # 5 rewrapped + new + doomed
    wrapped = _db_execute(
        server,
        "SELECT wrapped_key FROM data_keys WHERE tenant_id = %s AND project_id = %s"
        " AND version = 2",
        (T, P),
    )
    assert wrapped == [(None,)]  # the key material is gone
    err = _fails(lambda: _open(server, doomed.name), grpc.StatusCode.FAILED_PRECONDITION)
    info = error_info(err)
    assert info.reason == "DATA_KEY_DESTROYED"
    assert info.metadata["data_key_version"] == "2"
    assert "destroyed" in err.details() and "never" in err.details()  # type: ignore[attr-defined]
    # Idempotent, and the rest of the project keeps working under v3.
    again_destroyed = admin.DestroyDataKeyVersion(
        seal_service_pb2.DestroyDataKeyVersionRequest(
            parent=PARENT, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL, version=2, confirm_version=2
        ),
        timeout=5,
    )
    assert again_destroyed.unrecoverable_secret_count == 7
    fresh = _seal(server, b"fresh-secret-value")
    assert fresh.data_key_version == 3
    assert _open(server, fresh.name).plaintext == b"fresh-secret-value"
    rewrap = admin.RewrapSecrets(seal_service_pb2.RewrapSecretsRequest(parent=PARENT), timeout=5)
    assert (rewrap.rewrapped_count, rewrap.remaining_count) == (0, 0)  # nothing recoverable left
    # Fingerprint keys are separate data keys of the same project.
    fp = admin.RotateDataKey(
        seal_service_pb2.RotateDataKeyRequest(
            parent=PARENT, purpose=common_pb2.DATA_KEY_PURPOSE_FINGERPRINT
        ),
        timeout=5,
    )
    assert (
        fp.data_key.version == 1 and fp.data_key.purpose == common_pb2.DATA_KEY_PURPOSE_FINGERPRINT
    )


def test_rotation_on_one_replica_reaches_the_other(
    zumik_server_factory: ServerFactory, pg_url: str
) -> None:
    """Two replicas over one PostgreSQL: a rotation and a destruction on A reach B's cache."""
    from tests.fix_db import truncate_tables

    truncate_tables(pg_url)
    a = zumik_server_factory(pg_url)
    b = zumik_server_factory(pg_url)
    first = _seal(a, b"replica-secret-one")
    assert _open(b, first.name).plaintext == b"replica-secret-one"  # B caches v1 and primary
    assert _seal(b, b"replica-secret-two").data_key_version == 1
    a.stubs("control-plane").seal.RotateDataKey(
        seal_service_pb2.RotateDataKeyRequest(parent=PARENT), timeout=5
    )
    assert wait_until(lambda: _seal(b, b"replica-secret-n").data_key_version == 2, timeout=5)
    a.stubs("control-plane").seal.DestroyDataKeyVersion(
        seal_service_pb2.DestroyDataKeyVersionRequest(
            parent=PARENT, purpose=common_pb2.DATA_KEY_PURPOSE_SEAL, version=1, confirm_version=1
        ),
        timeout=5,
    )

    def b_refuses() -> bool:
        try:
            _open(b, first.name)
        except grpc.RpcError as err:
            return error_info(err).reason == "DATA_KEY_DESTROYED"
        return False

    assert wait_until(b_refuses, timeout=5)
