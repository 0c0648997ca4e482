"""``zumik-secrets verify-release DIR --key PUBKEY``: check a signed release offline.

A release directory (``make release``) holds:

* ``dist/``: the sdists and wheels of the service and the client, and the SBOM(s);
* ``provenance.intoto.json``: a DSSE envelope (payload type ``application/vnd.in-toto+json``)
  of an in-toto Statement v1 whose predicate is SLSA provenance v1, naming every file of
  ``dist/`` with its SHA-256;
* ``SHA256SUMS``: one ``<sha256>  <path>`` line per file of ``dist/`` and for the provenance;
* ``SHA256SUMS.dsse.json``: a DSSE envelope whose payload is exactly ``SHA256SUMS``.

Both envelopes are signed with the Ed25519 release key; DSSE (the pre-authentication encoding,
the envelope format and the signature check) is securesystemslib's, not re-implemented here.
Verification needs only this directory and the public key (trusted out of band): no network.
It fails on any signature that does not verify, any digest that differs, any file of ``dist/``
that the manifest or the provenance does not name, and any named file that is missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.intoto.json"
MANIFEST_FILE = "SHA256SUMS"
MANIFEST_ENVELOPE = "SHA256SUMS.dsse.json"
DIST_DIR = "dist"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MANIFEST_PAYLOAD_TYPE = "text/plain; charset=utf-8; zumik-sha256sums"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"


class ReleaseError(Exception):
    """The release does not verify (the message says what failed)."""


@dataclass
class Report:
    """What verification checked."""

    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    statement: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_key(public_key_pem: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError("the release key must be an Ed25519 public key")
    return SSlibKey.from_crypto(key)


def _open_envelope(path: Path, key: Any, payload_type: str) -> bytes:
    """Verify a DSSE envelope file with ``key``; returns its payload."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    try:
        data = json.loads(path.read_bytes())
        envelope = Envelope.from_dict(data)
    except FileNotFoundError:
        raise ReleaseError(f"{path.name}: missing") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is a failed verification
        raise ReleaseError(f"{path.name}: not a DSSE envelope ({type(exc).__name__})") from None
    if envelope.payload_type != payload_type:
        raise ReleaseError(
            f"{path.name}: payload type {envelope.payload_type!r}, want {payload_type!r}"
        )
    try:
        envelope.verify([key], 1)
    except VerificationError as exc:
        raise ReleaseError(f"{path.name}: signature does not verify ({exc})") from None
    return bytes(envelope.payload)


def parse_manifest(text: str) -> dict[str, str]:
    """``<sha256>  <path>`` lines -> {path: sha256}.

    Raises:
        ReleaseError: a malformed line, an unsafe path or a repeated path.
    """
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ReleaseError(f"{MANIFEST_FILE} line {number}: not '<sha256>  <path>'")
        if name.startswith("/") or ".." in Path(name).parts or not name or name in out:
            raise ReleaseError(f"{MANIFEST_FILE} line {number}: bad or repeated path")
        out[name] = digest
    return out


def verify_release(directory: Path, public_key_pem: bytes) -> Report:
    """Verify every signature and digest of a release directory, offline.

    Raises:
        ReleaseError: the first failure (the report of every check is not needed to refuse).
    """
    key = _load_key(public_key_pem)
    report = Report()

    manifest_bytes = _open_envelope(directory / MANIFEST_ENVELOPE, key, MANIFEST_PAYLOAD_TYPE)
    plain = directory / MANIFEST_FILE
    if not plain.is_file() or plain.read_bytes() != manifest_bytes:
        raise ReleaseError(f"{MANIFEST_FILE}: differs from the signed manifest")
    manifest = parse_manifest(manifest_bytes.decode("utf-8"))

    dist = directory / DIST_DIR
    on_disk = {
        str(p.relative_to(directory)) for p in dist.rglob("*") if p.is_file() or p.is_symlink()
    }
    unlisted = sorted(on_disk - set(manifest))
    if unlisted:
        raise ReleaseError(f"files not in the signed manifest: {unlisted}")
    if PROVENANCE_FILE not in manifest:
        raise ReleaseError(f"{MANIFEST_FILE} does not name {PROVENANCE_FILE}")
    for name, digest in sorted(manifest.items()):
        path = directory / name
        if path.is_symlink() or not path.is_file():
            raise ReleaseError(f"{name}: missing (or not a regular file)")
        if sha256_file(path) != digest:
            raise ReleaseError(f"{name}: SHA-256 differs from the signed manifest")
        report.files.append(name)

    payload = _open_envelope(directory / PROVENANCE_FILE, key, IN_TOTO_PAYLOAD_TYPE)
    try:
        statement = json.loads(payload)
    except ValueError:
        raise ReleaseError(f"{PROVENANCE_FILE}: the statement is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ReleaseError(f"{PROVENANCE_FILE}: not an in-toto Statement v1")
    if statement.get("predicateType") != SLSA_PROVENANCE_V1:
        raise ReleaseError(f"{PROVENANCE_FILE}: predicate is not SLSA provenance v1")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise ReleaseError(f"{PROVENANCE_FILE}: no subjects")
    named: dict[str, str] = {}
    for subject in subjects:
        s_name = subject.get("name") if isinstance(subject, dict) else None
        s_digest = subject.get("digest", {}).get("sha256") if isinstance(subject, dict) else None
        if not isinstance(s_name, str) or not isinstance(s_digest, str):
            raise ReleaseError(f"{PROVENANCE_FILE}: a subject without name or sha256")
        named[s_name] = s_digest
    artifacts = {n: d for n, d in manifest.items() if n != PROVENANCE_FILE}
    if named != artifacts:
        differs = sorted(n for n in named if n in artifacts and named[n] != artifacts[n])
        raise ReleaseError(
            f"{PROVENANCE_FILE}: subjects differ from the manifest's artifacts "
            f"(only in provenance: {sorted(set(named) - set(artifacts))}, "
            f"only in manifest: {sorted(set(artifacts) - set(named))}, digest differs: {differs})"
        )
    report.statement = statement
    return report


def main(directory: str, key_file: str) -> int:
    """CLI entry: print the verdict; 0 when everything verifies, 1 otherwise."""
    try:
        report = verify_release(Path(directory), Path(key_file).read_bytes())
    except ModuleNotFoundError:
        print("verify-release needs securesystemslib: pip install 'zumik-secrets[release]'")
        return 2
    except (ReleaseError, OSError) as exc:
        print(f"verify-release: FAILED: {exc}")
        return 1
    predicate = report.statement.get("predicate", {})
    source = predicate.get("buildDefinition", {}).get("externalParameters", {}).get("source", {})
    print(
        f"verify-release: OK: {len(report.files)} files, 2 signatures (manifest, provenance); "
        f"source {source.get('commit', '?')[:12]}{' (dirty)' if source.get('dirty') else ''}"
    )
    return 0


def add_parser(sub: Any) -> None:
    """Add ``verify-release`` to the CLI's subparsers."""
    p = sub.add_parser(
        "verify-release",
        help="verify a signed release directory offline (signatures, digests, provenance)",
    )
    p.add_argument("directory", help="the release directory (make release: build/release)")
    p.add_argument("--key", required=True, help="the release public key (PEM, Ed25519)")
    p.set_defaults(func=lambda args: main(args.directory, args.key))
