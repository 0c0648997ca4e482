"""`zumik-secrets signing-keys list` and `zumik-secrets signing-keys retire KID`.

Claim-signing keys rotate with the RotateSigningKey RPC: the new key signs, the previous one
keeps verifying ("retiring") for the longest claim lifetime plus 30 s, so claims already handed
out stay valid until they expire. After a compromise that overlap is the attacker's window too:
``retire KID`` ends it at once for a retiring key (never the active one: rotate first). Every
replica drops the key within the change feed's bound, and claims it signed, outstanding or
forged, are refused from then on; honest callers get UNAUTHENTICATED and verify their API key
or session again for a fresh claim (docs/operations/signing-key.md).

Both commands work on the database directly (``--database-url``, default ``ZUMIK_DATABASE_URL``)
and never read a private key.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from typing import Any

PURPOSE_CLAIMS = "claims"


def _store(url_arg: str | None) -> tuple[Any, str]:
    from zumik_secrets.server.config import DEFAULT_DATABASE_URL
    from zumik_secrets.storage.factory import open_store

    url = url_arg or os.environ.get("ZUMIK_DATABASE_URL") or DEFAULT_DATABASE_URL
    return open_store(url), url


def cmd_list(args: argparse.Namespace) -> int:
    """Print every signing key of the purpose: kid, state, retire_after, keyring version."""
    store, _ = _store(args.database_url)
    try:
        records = store.signing_keys.list(args.purpose)
    finally:
        store.close()
    for rec in records:
        after = rec.retire_after.isoformat(timespec="seconds") if rec.retire_after else "-"
        print(
            f"{rec.kid}\t{rec.state}\tretire_after={after}\tkeyring_version={rec.keyring_version}"
        )
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    """Retire a retiring claim-signing key now (it stops verifying on every replica)."""
    store, _ = _store(args.database_url)
    try:
        records = {r.kid: r for r in store.signing_keys.list(PURPOSE_CLAIMS)}
        rec = records.get(args.kid)
        if rec is None:
            raise ValueError(f"no claim-signing key {args.kid!r}")
        if rec.state == "active":
            raise ValueError(
                f"{args.kid} is the active key: rotate first (KeyService/RotateSigningKey), "
                "then retire it"
            )
        if rec.state != "retired":
            store.signing_keys.set_state(rec.kid, "retired", datetime.now(UTC))
    finally:
        store.close()
    print(f"{args.kid}: retired; claims it signed are refused on every replica from now on")
    return 0


def add_parsers(sub: Any) -> None:
    """Add the ``signing-keys`` command group to the CLI's subparsers."""
    group = sub.add_parser("signing-keys", help="inspect signing keys, end a rotation overlap")
    group_sub = group.add_subparsers(dest="signing_keys_command", required=True)
    p = group_sub.add_parser("list", help="list signing keys (kid, state, retire_after)")
    p.add_argument("--purpose", choices=("claims", "audit"), default=PURPOSE_CLAIMS)
    p.add_argument("--database-url", help="default: ZUMIK_DATABASE_URL or the embedded SQLite")
    p.set_defaults(func=cmd_list)
    p = group_sub.add_parser(
        "retire",
        help="retire a retiring claim-signing key now (after a compromise: ends the overlap)",
    )
    p.add_argument("kid", help="the key id (from `list` or RotateSigningKey's previous_key)")
    p.add_argument("--database-url", help="default: ZUMIK_DATABASE_URL or the embedded SQLite")
    p.set_defaults(func=cmd_retire)
