"""Master-key rotation: add a keyring version, rewrap data and signing keys, drop the old version.

No secret is re-encrypted: the ciphertext rows are byte-identical before and after, yet a server
holding only the new keyring version opens everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from zumik.secrets.v1 import seal_service_pb2

from tests.fix_server import RunningServer, ServerFactory
from zumik_secrets.cli.main import main
from zumik_secrets.core.keyring import MasterKeyring, blob_version
from zumik_secrets.storage.factory import open_store
from zumik_secrets.storage.records import SIGNING_KEY_PURPOSES

pytestmark = pytest.mark.integration


def _seal(server: RunningServer, tenant: str, plaintext: bytes) -> str:
    claim = server.mint_claim(tenant, "p", ("secrets.seal",))
    return (
        server.stubs("console", claim=claim)
        .seal.Seal(
            seal_service_pb2.SealRequest(
                parent=f"tenants/{tenant}/projects/p", plaintext=plaintext
            ),
            timeout=5,
        )
        .secret.name
    )


def _open(server: RunningServer, name: str) -> bytes:
    claim = server.mint_claim(name.split("/")[1], "p", ("secrets.open",))
    return bytes(
        server.stubs("executor", claim=claim)
        .seal.Open(seal_service_pb2.OpenRequest(name=name), timeout=5)
        .plaintext
    )


def test_kek_rotation_rewraps_keys_not_data(
    zumik_server_factory: ServerFactory,
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = zumik_server_factory(store_url)
    keyring_file = Path(server.runtime.config.master_keyring_file)
    secrets_ = {f"t{i}": f"provider-key-{i}-abcdef".encode() for i in range(3)}
    names = {t: _seal(server, t, v) for t, v in secrets_.items()}
    server.stubs("control-plane").seal.RotateDataKey(
        seal_service_pb2.RotateDataKeyRequest(parent="tenants/t0/projects/p"), timeout=5
    )
    names["t0-v2"] = _seal(server, "t0", b"sealed-under-dek-v2")
    server.close()

    store = open_store(store_url)
    try:
        cipher_before = sorted(
            bytes(r.ciphertext)
            for t in ("t0", "t1", "t2")
            for r in store.sealed_secrets.list(t, "p", page_size=100, after_seq=0)
        )
    finally:
        store.close()

    # 1. Add a keyring version (primary) and rewrap.
    assert main(["keygen", "--out", str(keyring_file), "--add-version"]) == 0
    assert MasterKeyring.from_text(keyring_file.read_text()).primary == 2
    monkeypatch.setenv("ZUMIK_MASTER_KEYRING_FILE", str(keyring_file))
    assert main(["rewrap-data-keys", "--database-url", store_url]) == 0
    out = capsys.readouterr().out
    assert "rewrapped 4 data keys and" in out  # plus the claim (and audit) signing keys
    assert main(["rewrap-data-keys", "--database-url", store_url]) == 0  # idempotent
    assert "rewrapped 0 data keys and 0 signing keys" in capsys.readouterr().out

    store = open_store(store_url)
    try:
        wrapped = store.data_keys.list_wrapped(after=None, limit=100)
        assert len(wrapped) == 4
        assert {blob_version(r.wrapped_key) for r in wrapped if r.wrapped_key} == {2}
        signing = [k for p in SIGNING_KEY_PURPOSES for k in store.signing_keys.list(p)]
        assert any(k.purpose == "claims" for k in signing)
        assert {blob_version(k.wrapped_private_key) for k in signing} == {2}
        assert {k.keyring_version for k in signing} == {2}
        cipher_after = sorted(
            bytes(r.ciphertext)
            for t in ("t0", "t1", "t2")
            for r in store.sealed_secrets.list(t, "p", page_size=100, after_seq=0)
        )
    finally:
        store.close()
    assert cipher_after == cipher_before  # no secret was re-encrypted

    # 2. Retire version 1, then remove it from the keyring altogether.
    assert main(["keygen", "--out", str(keyring_file), "--retire", "1"]) == 0
    doc = json.loads(keyring_file.read_text())
    assert [k["state"] for k in doc["keys"]] == ["retired", "active"]
    doc["keys"] = [k for k in doc["keys"] if k["version"] == 2]
    keyring_file.write_text(json.dumps(doc))

    # 3. A server holding only version 2 opens everything, old data-key versions included.
    again = zumik_server_factory(store_url)
    assert again.runtime.keyring.fingerprints().keys() == {2}
    for tenant, value in secrets_.items():
        assert _open(again, names[tenant]) == value
    assert _open(again, names["t0-v2"]) == b"sealed-under-dek-v2"
    assert _open(again, _seal(again, "t9", b"after-rotation-value")) == b"after-rotation-value"
