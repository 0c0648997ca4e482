"""`zumik-secrets audit verify FILE --keys KEYS_FILE`: check an audit export offline.

FILE is what ExportEvents streamed, one line per message (``zumik-audit-export/1``, see
:mod:`zumik_secrets.core.audit_chain`); ``-`` reads standard input. KEYS_FILE is the
ListCheckpointKeys response saved as JSON (``{"keys": [{"kid", "x", "status"}, ...]}``, the
protobuf JSON form; a bare list of keys is accepted too). The verifier runs the same code as
the server's VerifyChain: every link, every sequence number and every checkpoint signature.

It trusts nothing in the file that the keys cannot verify: the export's last event must be
covered by a signed checkpoint (else the unanchored tail fails, unless ``--allow-unanchored``),
and a ``resume`` line is used only when a signed checkpoint confirms it. ``--witness PATH`` (a
witness directory, ``ZUMIK_AUDIT_WITNESS_DIR``, or a witness file; repeatable) adds the
checkpoints published outside the database: the export fails when it and the witness disagree.

Exit status: 0 when the export verifies, 1 when it does not (the first failing sequence number
and why are printed), 2 when a file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zumik_secrets.app.audit_witness import read_witness
from zumik_secrets.core.audit_chain import Checkpoint, parse_export, verify_export
from zumik_secrets.core.encoding import b64url_decode


def load_keys(path: Path) -> dict[str, bytes]:
    """Checkpoint public keys by kid from a saved ListCheckpointKeys response.

    Raises:
        ValueError: unreadable, not JSON, or a key that is not base64url Ed25519.
    """
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read keys file {path}: {exc.strerror}") from None
    except json.JSONDecodeError:
        raise ValueError(f"keys file {path} is not JSON") from None
    items = data.get("keys", []) if isinstance(data, dict) else data
    keys: dict[str, bytes] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("kid"), str):
            raise ValueError(f"keys file {path}: every key needs a kid and x")
        try:
            public = b64url_decode(str(item.get("x", "")))
        except ValueError:
            raise ValueError(f"keys file {path}: key {item['kid']} is not base64url") from None
        if len(public) != 32:
            raise ValueError(f"keys file {path}: key {item['kid']} is not an Ed25519 key")
        keys[item["kid"]] = public
    if not keys:
        raise ValueError(f"keys file {path} holds no keys")
    return keys


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify an export file; prints OK or the first failure."""
    keys = load_keys(Path(args.keys))
    if args.file == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read export {args.file}: {exc.strerror}") from None
    witness: list[Checkpoint] = []
    for path in args.witness or []:
        try:
            witness.extend(read_witness(Path(path)))
        except OSError as exc:
            raise ValueError(f"cannot read witness {path}: {exc.strerror}") from None
    report = verify_export(
        lines, keys, witness=witness, allow_unanchored=bool(args.allow_unanchored)
    )
    if report.ok:
        print(f"OK: {report.checked_count} events verified, head {report.head_sequence}")
        tenant = parse_export(lines).tenant
        later = max((cp.sequence for cp in witness if cp.tenant == tenant), default=0)
        if later > report.head_sequence:
            # Not a failure (the witness may simply be newer than the export), but an export
            # holder can hand over a prefix ending at an older checkpoint: say so.
            print(
                f"note: the witness holds a checkpoint at sequence {later}, past this export's "
                "end: the export is older than the witness, or was cut short"
            )
        return 0
    failure = report.failure.value if report.failure else "UNKNOWN"
    print(f"FAILED at sequence {report.first_bad_sequence}: {failure} ({report.detail})")
    return 1


def add_parser(sub: Any) -> None:
    """Add the ``audit`` command group to the CLI's subparsers."""
    audit = sub.add_parser("audit", help="audit log tools (offline verification of an export)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    p = audit_sub.add_parser(
        "verify", help="verify an ExportEvents file offline; exit 0 if it verifies, 1 if not"
    )
    p.add_argument("file", help="export file, one JSON line per event or checkpoint (- = stdin)")
    p.add_argument("--keys", required=True, help="ListCheckpointKeys response saved as JSON")
    p.add_argument(
        "--witness",
        action="append",
        metavar="PATH",
        help="audit witness directory or file (ZUMIK_AUDIT_WITNESS_DIR); fail when the export "
        "and the witness disagree (repeatable)",
    )
    p.add_argument(
        "--allow-unanchored",
        action="store_true",
        help="accept an export whose last event (or resume point) no signed checkpoint covers",
    )
    p.set_defaults(func=cmd_audit_verify)
