"""Backup and point-in-time restore drill (`make restore-drill`), on a throwaway PostgreSQL.

What it does, printing each step and check (docs/operations/backup-restore.md explains why):

1. Starts a private PostgreSQL cluster with WAL archiving (``archive_command`` into a local
   directory: the stand-in for the object store) and a real `zumik-secrets serve` on it.
2. Loads data through the service: two tenants, API keys, sealed secrets.
3. Takes a base backup (``pg_basebackup``) and marks time T1 (``recovery_target_time``).
4. Makes the changes a restore must not silently undo: a new API key, a revocation, a tenant
   purge (receipt saved outside the database, as the customer and the operator keep it), then a
   master-key rotation (add version 2, rewrap, retire and ``keygen --drop-version 1``); marks LSN
   L2 (``recovery_target_lsn``).
5. Restores to L2 into a new cluster and starts the service with the current keyring: the chains
   verify, the revocation and the purge hold, the receipt is served and verifies offline.
6. Restores to T1 into another cluster: every wrapped key in it is under master-key version 1,
   which the current keyring no longer has, so with the current keyring nothing sealed in it can
   be opened (shown offline). Against the audit witness of before the restore the restored
   chain fails (the witness remembers what the restore removed); with a new witness and the
   keyring backup of T1 the service starts, and shows what came back:
   the revoked key verifies VALID again and the purged tenant's secret opens again. The drill
   then re-applies the revocation and the purge (the operator's duty after such a restore) and
   checks they hold; the key created after T1 does not exist.

Exit status 0 when every check passed. ``--keep`` leaves the working directory (no secrets
beyond the throwaway keyrings and dev PKI in it) for inspection.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ops_lib import Client, PgCluster, ServerProcess, cli
from zumik.secrets.v1 import audit_service_pb2 as apb

from zumik_secrets.cli.dev_pki import DevPki, generate_dev_pki
from zumik_secrets.core.errors import DecryptionFailed
from zumik_secrets.core.keyring import MasterKeyring, blob_version, generate_keyring

SCOPES = ["secrets.seal", "secrets.open", "secrets.read", "keys.read"]


class Drill:
    """Runs the drill and records every check."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.failures: list[str] = []
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        """Print a step heading with the elapsed time."""
        print(f"\n[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        """Record and print one check."""
        print(f"  {'ok  ' if ok else 'FAIL'} {what}{f' ({detail})' if detail else ''}", flush=True)
        if not ok:
            self.failures.append(what)

    def note(self, text: str) -> None:
        """Print an observation that is not a pass/fail check."""
        print(f"  ..   {text}", flush=True)


def _serve(pki: DevPki, url: str, ring: Path, log: Path, witness: Path) -> ServerProcess:
    return ServerProcess(pki, url, ring, log, extra_env={"ZUMIK_AUDIT_WITNESS_DIR": str(witness)})


def _first(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def _wrapped_versions(cluster: PgCluster, db: str) -> dict[int, int]:
    """Master-key version -> number of keyring-wrapped blobs stored in the restored database."""
    counts: dict[int, int] = {}
    rows = cluster.query(
        "SELECT wrapped_key FROM data_keys WHERE wrapped_key IS NOT NULL AND wrapped_by = 'keyring'"
        " UNION ALL SELECT wrapped_private_key FROM signing_keys",
        db,
    )
    for (blob,) in rows:
        v = blob_version(bytes(blob))
        counts[v] = counts.get(v, 0) + 1
    return counts


def _unwrappable(cluster: PgCluster, db: str, ring: MasterKeyring, tenant: str) -> int:
    """How many of ``tenant``'s wrapped data keys ``ring`` can still unwrap (header only: a
    version missing from the ring can never unwrap)."""
    rows = cluster.query(
        "SELECT tenant_id, wrapped_key FROM data_keys WHERE wrapped_key IS NOT NULL", db
    )
    n = 0
    for owner, blob in rows:
        if owner != tenant:
            continue
        try:
            version = blob_version(bytes(blob))
        except DecryptionFailed:
            continue
        n += version in ring.fingerprints()
    return n


def run(work: Path) -> int:
    """The drill; returns the exit status."""
    d = Drill(work)
    db = "zumik"
    archive = work / "wal-archive"
    pki = generate_dev_pki(work / "pki")
    keyring = work / "keyring.json"
    keyring.write_text(generate_keyring(), encoding="utf-8")
    keyring.chmod(0o600)
    offsite = work / "offsite"  # what the operator keeps outside the database
    offsite.mkdir()
    witness = offsite / "witness"  # audit checkpoints published outside the database
    witness.mkdir()
    after_restore = offsite / "witness-after-T1-restore"
    after_restore.mkdir()

    d.step("1. PostgreSQL with WAL archiving, and the service on it")
    primary = PgCluster.create(work / "pg", "primary", archive)
    primary.query(f"CREATE DATABASE {db}")
    print(f"  cluster on 127.0.0.1:{primary.port}, archive_command -> {archive}")
    server = _serve(pki, primary.url(db), keyring, work / "server-primary.log", witness)
    clusters = [primary]
    servers = [server]
    try:
        server.wait_serving()
        c = Client(pki, server.target)

        d.step("2. Load data through the service")
        k1_name, k1 = c.create_api_key("acme", "web", SCOPES)
        _, acme_claim = c.verify(k1)
        acme_secret = c.seal(acme_claim, "acme", "web", b"acme-provider-key")
        _, k2 = c.create_api_key("globex", "app", SCOPES)
        _, globex_claim = c.verify(k2)
        globex_secret = c.seal(globex_claim, "globex", "app", b"globex-provider-key")
        print(f"  acme: key {k1_name}, secret {acme_secret}")
        print(f"  globex: secret {globex_secret}")

        d.step("3. Base backup (pg_basebackup) and restore point T1")
        base = work / "base"
        primary.base_backup(base)
        shutil.copy(keyring, offsite / "keyring-at-T1.json")  # the keyring backup of that day
        time.sleep(1.0)
        t1 = str(primary.query("SELECT clock_timestamp()")[0][0])
        time.sleep(1.0)
        print(f"  base backup {base}; T1 = {t1}")

        d.step("4. Changes after T1: new key, revocation, tenant purge, master-key rotation")
        k3_name, k3 = c.create_api_key("acme", "web", SCOPES)
        c.revoke(k1_name)
        purge = c.purge_tenant("globex")
        receipt_name = purge["receipt"]["name"]
        receipt_file = _write_json(offsite / "globex-receipt.json", purge)
        keys_file = _write_json(offsite / "checkpoint-keys.json", c.checkpoint_keys())
        c.create_checkpoint("acme")  # published to the witness: it now pins the changes
        print(f"  created {k3_name}; revoked {k1_name}; purged tenants/globex ({receipt_name})")
        c.close()
        server.stop()
        env = {"ZUMIK_DATABASE_URL": primary.url(db)}
        for args in (
            ("keygen", "--add-version", "--out", str(keyring)),
            ("rewrap-data-keys", "--keyring", str(keyring)),
            ("keygen", "--retire", "1", "--out", str(keyring)),
            ("keygen", "--drop-version", "1", "--out", str(keyring)),
        ):
            done = cli(*args, env=env)
            print(f"  $ zumik-secrets {' '.join(args[:3])} ...: {done.stdout.strip()}")
            d.check(f"`{' '.join(args[:3])}` succeeded", done.returncode == 0, done.stderr)
        current = MasterKeyring.from_text(keyring.read_text(encoding="utf-8"))
        d.check("the current keyring holds version 2 only", list(current.fingerprints()) == [2])
        l2 = str(primary.query("SELECT pg_current_wal_lsn()")[0][0])
        segment = primary.archive_through(l2)
        print(f"  L2 = {l2} (archived in {segment})")
        primary.stop()

        d.step("5. Restore to L2 (recovery_target_lsn) and serve it with the current keyring")
        after = PgCluster.restore(
            base, work / "pg", "restore-L2", archive, {"recovery_target_lsn": l2}
        )
        clusters.append(after)
        d.check(
            "every wrapped key in the L2 restore is under version 2",
            set(_wrapped_versions(after, db)) == {2},
            str(_wrapped_versions(after, db)),
        )
        server = _serve(pki, after.url(db), keyring, work / "server-L2.log", witness)
        servers.append(server)
        server.wait_serving()
        c = Client(pki, server.target)
        for tenant in ("acme", "globex"):
            chain = c.verify_chain(tenant)
            d.check(
                f"audit chain of {tenant} verifies",
                chain.ok,
                f"{chain.checked_count} events, head {chain.head_sequence}",
            )
        d.check("revoked key stays revoked", c.verify(k1)[0] == "VERIFY_RESULT_REVOKED")
        result, k3_claim = c.verify(k3)
        d.check("key created after T1 verifies", result == "VERIFY_RESULT_VALID")
        d.check("acme's secret opens", c.open(k3_claim, acme_secret) == b"acme-provider-key")
        d.check("globex's key is gone", c.verify(k2)[0] == "VERIFY_RESULT_NOT_FOUND")
        d.check(
            "globex's secret is gone", c.open(globex_claim, globex_secret) != b"globex-provider-key"
        )
        served = c.get_receipt(receipt_name)
        d.check("the purge receipt is served", isinstance(served, dict))
        if isinstance(served, dict):
            served_file = _write_json(work / "receipt-from-L2.json", served)
            l2_keys = _write_json(work / "keys-from-L2.json", c.checkpoint_keys())
            out = cli("purge", "verify-receipt", str(served_file), "--keys", str(l2_keys))
            d.check("the served receipt verifies offline", out.returncode == 0, _first(out.stdout))
        c.close()
        server.stop()
        after.stop()

        d.step("6. Restore to T1 (recovery_target_time): before the revocation and the purge")
        before = PgCluster.restore(
            base, work / "pg", "restore-T1", archive, {"recovery_target_time": t1}
        )
        clusters.append(before)
        versions = _wrapped_versions(before, db)
        d.check("every wrapped key in the T1 restore is under version 1", set(versions) == {1})
        d.check(
            "with the current keyring none of globex's data keys can be unwrapped",
            _unwrappable(before, db, current, "globex") == 0,
        )
        d.note(
            f"{sum(versions.values())} wrapped data and signing keys need version 1: with the "
            "current keyring none of them unwraps, so nothing sealed at T1 can be opened"
        )
        old_ring = offsite / "keyring-at-T1.json"
        server = _serve(pki, before.url(db), old_ring, work / "server-T1-w.log", witness)
        servers.append(server)
        server.wait_serving()
        c = Client(pki, server.target)
        chain = c.verify_chain("acme")
        d.check(
            "against the pre-restore witness acme's restored chain fails (as it must)",
            not chain.ok,
            apb.ChainFailure.Name(chain.failure),
        )
        c.close()
        server.stop()
        # The operator keeps the old witness as evidence and starts a new one for the restored
        # history (docs/operations/backup-restore.md).
        server = _serve(pki, before.url(db), old_ring, work / "server-T1.log", after_restore)
        servers.append(server)
        server.wait_serving()
        c = Client(pki, server.target)
        for tenant in ("acme", "globex"):
            chain = c.verify_chain(tenant)
            d.check(
                f"audit chain of {tenant} verifies (shorter: ends at T1)",
                chain.ok,
                f"{chain.checked_count} events, head {chain.head_sequence}",
            )
        d.check("key created after T1 does not exist", c.verify(k3)[0] == "VERIFY_RESULT_NOT_FOUND")
        result, _k1_claim = c.verify(k1)
        d.check(
            "RESURRECTED: the revoked key verifies VALID again", result == "VERIFY_RESULT_VALID"
        )
        result, globex_claim = c.verify(k2)
        opened = c.open(globex_claim, globex_secret) if globex_claim else result
        d.check(
            "RESURRECTED: the purged tenant's secret opens again (keyring backup of T1)",
            opened == b"globex-provider-key",
        )
        d.check("the receipt is not in the T1 database", c.get_receipt(receipt_name) == "NOT_FOUND")
        out = cli("purge", "verify-receipt", str(receipt_file), "--keys", str(keys_file))
        d.check(
            "the offsite receipt still verifies offline", out.returncode == 0, _first(out.stdout)
        )

        print("  re-applying what happened after T1 (docs/operations/backup-restore.md):")
        c.revoke(k1_name)
        d.check("re-applied revocation holds", c.verify(k1)[0] == "VERIFY_RESULT_REVOKED")
        again = c.purge_tenant("globex")
        d.check(
            "re-applied purge: globex's key is gone", c.verify(k2)[0] == "VERIFY_RESULT_NOT_FOUND"
        )
        d.check(
            "re-applied purge: globex's secret is gone",
            c.open(globex_claim, globex_secret) != b"globex-provider-key",
        )
        new_receipt = _write_json(work / "receipt-reapplied.json", again)
        t1_keys = _write_json(work / "keys-from-T1.json", c.checkpoint_keys())
        out = cli("purge", "verify-receipt", str(new_receipt), "--keys", str(t1_keys))
        d.check("the new receipt verifies offline", out.returncode == 0, _first(out.stdout))
        chain = c.verify_chain("globex")
        d.check("globex's chain verifies after the re-applied purge", chain.ok)
        c.close()
    finally:
        for s in servers:
            s.stop()
        for cl in clusters:
            cl.stop("immediate")

    d.step("Summary")
    print(
        "  restored: L2 (recovery_target_lsn, after every change) and T1 (recovery_target_time,\n"
        "  before them), each from one pg_basebackup plus the WAL archive, into a new cluster.\n"
        "  verified: audit chains, the purge receipt (served and offline), revocation and purge\n"
        "  at L2; at T1 the revocation and the purge were undone until re-applied, and nothing\n"
        "  sealed at T1 opens without the keyring backup of T1 (version 1 was dropped), and\n"
        "  the pre-restore audit witness rejects the T1 chain (a new witness serves it)."
    )
    if d.failures:
        print(f"restore-drill: FAILED {len(d.failures)} checks: {d.failures}")
        return 1
    print(f"restore-drill: OK in {time.monotonic() - d.started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zumik-restore-drill-"))
    work.chmod(0o755)  # PostgreSQL (as user postgres when run as root) reads the archive here
    print(f"restore-drill: working directory {work}")
    try:
        return run(work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
