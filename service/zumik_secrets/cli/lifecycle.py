"""`zumik-secrets purge verify-receipt` and `zumik-secrets retention run`.

``purge verify-receipt FILE --keys KEYS_FILE`` checks a purge receipt offline. FILE is the
receipt as protobuf JSON: what ``grpcurl`` prints for GetPurgeReceipt, PurgeTenant or
PurgeProject (``{"receipt": {...}}``) or the bare receipt object; ``-`` reads standard input.
KEYS_FILE is the ListCheckpointKeys response saved as JSON (as for ``audit verify``). The
signature must verify under the key its ``kid`` names, the statement must be canonical, and the
unsigned envelope fields must match it (see :mod:`zumik_secrets.core.purge_receipts`). Exit
status: 0 verified (a summary is printed), 1 not verified (why is printed), 2 unreadable input.

``retention run`` runs the retention sweeps (expired sessions, revoked keys past retention, old
audit events behind a signed anchor, old change-feed records) against the configured database
directly, without a server: ``--database-url`` (default ``ZUMIK_DATABASE_URL``), ``--keyring``
(default ``ZUMIK_MASTER_KEYRING_FILE``: the audit key that signs the anchors is wrapped by it),
``--tenant`` to sweep one tenant only. Defaults for tenants without settings come from
``ZUMIK_AUDIT_RETENTION_DAYS``, ``ZUMIK_REVOKED_KEY_RETENTION_DAYS`` and
``ZUMIK_SESSION_ABSOLUTE_TIMEOUT`` as for the server. The run is audited (``retention.run``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from zumik_secrets.cli.audit_verify import load_keys
from zumik_secrets.core.purge_receipts import InvalidReceipt, summary_lines, verify_receipt_document

CLI_ACTOR = "zumik-secrets/cli"


def cmd_verify_receipt(args: argparse.Namespace) -> int:
    """Verify a receipt file offline; prints the summary or why it fails."""
    keys = load_keys(Path(args.keys))
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read receipt {args.file}: {exc.strerror}") from None
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"receipt {args.file} is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(f"receipt {args.file} is not a JSON object")
    try:
        stmt = verify_receipt_document(doc, keys)
    except InvalidReceipt as exc:
        print(f"FAILED: {exc}")
        return 1
    print("OK: the receipt's signature verifies")
    for line in summary_lines(stmt):
        print(f"  {line}")
    return 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None


def cmd_retention_run(args: argparse.Namespace) -> int:
    """Run the retention sweeps on the configured database; prints what was removed."""
    from zumik_secrets.app.actor import Actor
    from zumik_secrets.app.audit_log import AuditLog
    from zumik_secrets.app.checkpoint_keys import CheckpointKeys
    from zumik_secrets.app.retention import Retention
    from zumik_secrets.app.tenant_settings import RetentionDefaults, TenantSettingsService
    from zumik_secrets.core.keyring import MasterKeyring
    from zumik_secrets.core.names import validate_tenant_id
    from zumik_secrets.server.config import DEFAULT_DATABASE_URL
    from zumik_secrets.storage.factory import open_store, redact_url

    tenant = validate_tenant_id(args.tenant, field="--tenant") if args.tenant else None
    url = args.database_url or os.environ.get("ZUMIK_DATABASE_URL") or DEFAULT_DATABASE_URL
    keyring_file = args.keyring or os.environ.get("ZUMIK_MASTER_KEYRING_FILE", "")
    if not keyring_file:
        raise ValueError("give --keyring or set ZUMIK_MASTER_KEYRING_FILE")
    ring = MasterKeyring.from_text(Path(keyring_file).read_text(encoding="utf-8"))
    defaults = RetentionDefaults(
        audit_retention=timedelta(days=_env_int("ZUMIK_AUDIT_RETENTION_DAYS", 400)),
        revoked_key_retention=timedelta(days=_env_int("ZUMIK_REVOKED_KEY_RETENTION_DAYS", 30)),
        session_absolute_lifetime=timedelta(
            seconds=_env_int("ZUMIK_SESSION_ABSOLUTE_TIMEOUT", 12 * 3600)
        ),
    )
    store = open_store(url)
    try:
        store.migrate()
        keys = CheckpointKeys(store.signing_keys, ring)
        keys.load()
        settings = TenantSettingsService(store.tenants, defaults=defaults, receipts=store.purges)
        audit_log = AuditLog(
            store.audit,
            keys,
            group_commit=False,  # one process, one run: write each event in this thread
            retention=defaults.audit_retention,
            retention_for=settings.audit_retention_for,
        )
        retention = Retention(
            sessions=store.sessions,
            api_keys=store.api_keys,
            changes=store.changes,
            audit_store=store.audit,
            audit_log=audit_log,
            settings=settings,
        )
        removed = retention.run(tenant, Actor(identity=CLI_ACTOR))
    finally:
        store.close()
    counts = ", ".join(f"{kind} {n}" for kind, n in removed.items())
    print(f"{redact_url(url)}: retention run for {tenant or 'every tenant'}: removed {counts}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add the ``purge`` and ``retention`` command groups to the CLI's subparsers."""
    purge = sub.add_parser("purge", help="purge tools (offline verification of a receipt)")
    purge_sub = purge.add_subparsers(dest="purge_command", required=True)
    p = purge_sub.add_parser(
        "verify-receipt",
        help="verify a purge receipt offline; exit 0 if it verifies, 1 if not",
    )
    p.add_argument("file", help="the receipt as protobuf JSON, e.g. grpcurl's output (- = stdin)")
    p.add_argument("--keys", required=True, help="ListCheckpointKeys response saved as JSON")
    p.set_defaults(func=cmd_verify_receipt)

    retention = sub.add_parser("retention", help="retention sweeps")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    p = retention_sub.add_parser(
        "run", help="run the retention sweeps now against the configured database"
    )
    p.add_argument("--database-url", help="default: ZUMIK_DATABASE_URL or the embedded SQLite")
    p.add_argument("--keyring", help="keyring file (default: ZUMIK_MASTER_KEYRING_FILE)")
    p.add_argument("--tenant", help="sweep this tenant only (default: every tenant)")
    p.set_defaults(func=cmd_retention_run)
