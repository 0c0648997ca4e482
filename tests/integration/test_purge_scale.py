"""How long a tenant purge takes at scale (rows bulk-inserted through the stores, purge over gRPC).

``ZUMIK_PURGE_SCALE`` sets the number of secrets and of API keys (default 300, to keep the suite
fast; the closing note of issue 8 measured 10,000 of each: run with ``ZUMIK_PURGE_SCALE=10000
pytest -s tests/integration/test_purge_scale.py``). The time is printed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from datetime import UTC, datetime

import pytest

from tests.fix_server import RunningServer
from tests.integration import purge_support as ps
from zumik_secrets.core import sealing
from zumik_secrets.core.handles import new_handle
from zumik_secrets.storage.records import ApiKeyRecord, SealedSecretRecord

pytestmark = pytest.mark.integration

N = int(os.environ.get("ZUMIK_PURGE_SCALE", "300"))


def test_purge_of_a_large_tenant(zumik_server_any_backend: RunningServer) -> None:
    server = zumik_server_any_backend
    store = server.runtime.store
    tenant, project = ps.tenant_id("big"), "p1"
    now = datetime.now(UTC)
    primary = server.runtime.data_keys.primary(tenant, project, "seal")
    started = time.perf_counter()
    for i in range(N):
        secret_id = new_handle("sec")
        plaintext = f"value-{i}".encode()
        store.sealed_secrets.insert(
            SealedSecretRecord(
                secret_id=secret_id,
                tenant_id=tenant,
                project_id=project,
                display_name=f"s{i}",
                metadata={},
                version=1,
                data_key_version=primary.version,
                size_bytes=len(plaintext),
                ciphertext=sealing.seal(
                    primary.aead,
                    primary.version,
                    plaintext,
                    sealing.secret_aad(tenant, project, secret_id, 1),
                ),
                created_at=now,
                updated_at=now,
            )
        )
        key_id = new_handle("key")
        store.api_keys.insert(
            ApiKeyRecord(
                key_id=key_id,
                tenant_id=tenant,
                project_id=project,
                display_name=f"k{i}",
                env="live",
                masked_prefix=f"zk_live_{key_id[4:]}\u2026",
                salt=secrets.token_bytes(16),
                secret_hash=hashlib.sha256(secrets.token_bytes(32)).digest(),
                scopes=("secrets.open",),
                state="active",
                created_at=now,
                expire_time=None,
                revoke_time=None,
                last_used_at=None,
                rotated_from=None,
            )
        )
    filled = time.perf_counter() - started

    started = time.perf_counter()
    receipt = ps.purge_tenant(server, tenant, timeout=600).receipt
    took = time.perf_counter() - started

    counts = {c.kind: c.count for c in receipt.destroyed}
    assert counts["secrets"] == N and counts["api_keys"] == N
    assert counts["data_key_versions"] == 1
    assert not store.purges.scope_has_data(tenant, None)
    print(
        f"\n[{store.backend}] purge of {N} secrets + {N} API keys: {took:.2f} s"
        f" (bulk insert took {filled:.1f} s)"
    )
