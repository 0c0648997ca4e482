"""``make release``: build, describe and sign a release in build/release/ (offline).

1. Build the sdist and wheel of the service (``.``) and of the client (``clients/python``) with
   ``python -m build --no-isolation`` (the build backend comes from the hashed build lock, not
   from the network), ``SOURCE_DATE_EPOCH`` set to the commit time.
2. Write the SBOM of the build environment (CycloneDX, ``cyclonedx-py environment``): every
   package installed from the hashed locks, i.e. what the artifacts were built from and with.
3. Write the provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate (builder,
   source commit and dirty flag, the lock files' digests as resolved dependencies, the build
   commands, a digest of every artifact as a subject), in a DSSE envelope signed with the
   Ed25519 release key (securesystemslib's DSSE and signer).
4. Write ``SHA256SUMS`` over every artifact and the provenance, and sign it (DSSE).
5. Verify the result the way a consumer would (:mod:`zumik_secrets.cli.verify_release`).

The release key: ``ZUMIK_RELEASE_KEY`` (a PEM Ed25519 private key file) or, for development,
``var/release/release-key.pem``, generated on first use (0600, never committed: var/ is
ignored). Its public half is written next to the release as ``release-key.pub.pem``; consumers
must get the public key out of band (a copy inside the release proves nothing). The production
path is keyless signing against a public transparency log (docs/security/releases.md); it needs
the network and an OIDC identity, so nothing here pretends to do it.

No Docker engine runs on the development machines: the image archive is not built here, and the
provenance says so (``internalParameters.image``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))

from zumik_secrets.cli import verify_release as vr  # noqa: E402

LOCK_FILES = ("requirements/build.lock", "requirements/dev.lock", "package-lock.json")
BUILD_TYPE = "https://zumik.local/release/make-release/v1"
BUILDER_ID = "https://zumik.local/builders/local-make-release"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def _run(command: list[str], env: dict[str, str], log: list[str]) -> None:
    shown = " ".join(
        str(Path(c).relative_to(REPO)) if c.startswith(str(REPO)) else c for c in command
    )
    log.append(shown)
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def _release_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        load_pem_private_key,
    )

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        print(f"release: generated a development release key in {path} (never commit it)")
    loaded = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SystemExit(f"release: {path} is not an Ed25519 private key")
    return loaded


def _sign(payload: bytes, payload_type: str, signer: Any) -> dict[str, Any]:
    from securesystemslib.dsse import Envelope

    envelope = Envelope(payload=payload, payload_type=payload_type, signatures={})
    envelope.sign(signer)
    result: dict[str, Any] = envelope.to_dict()
    return result


def build(out: Path, key_path: Path) -> Path:
    """Build and sign a release into ``out``; returns the public key file."""
    started = datetime.now(UTC)
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    epoch = _git("log", "-1", "--format=%ct")
    if out.exists():
        shutil.rmtree(out)
    dist = out / vr.DIST_DIR
    dist.mkdir(parents=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch, "PYTHONHASHSEED": "0"}
    py = sys.executable
    commands: list[str] = []
    for project in (".", "clients/python"):
        _run(
            [
                py,
                "-m",
                "build",
                "--no-isolation",
                "--sdist",
                "--wheel",
                "--outdir",
                str(dist),
                project,
            ],
            env,
            commands,
        )
    sbom = dist / "sbom-build-environment.cdx.json"
    _run(
        [
            str(Path(py).parent / "cyclonedx-py"),
            "environment",
            "--output-reproducible",
            "--of",
            "JSON",
            "-o",
            str(sbom),
            py,
        ],
        env,
        commands,
    )
    return sign_release(out, key_path, commands, started, commit, dirty, int(epoch))


def sign_release(
    out: Path,
    key_path: Path,
    commands: list[str],
    started: datetime,
    commit: str,
    dirty: bool,
    epoch: int,
) -> Path:
    """Describe and sign the files of ``out``/dist: provenance, SHA256SUMS and its envelope.

    Returns:
        The public key file written next to ``out``.
    """
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

    dist = out / vr.DIST_DIR
    artifacts = sorted(p for p in dist.rglob("*") if p.is_file())
    subjects: list[dict[str, Any]] = [
        {"name": str(p.relative_to(out)), "digest": {"sha256": vr.sha256_file(p)}}
        for p in artifacts
    ]
    resolved = [
        {
            "uri": f"git+file://{REPO.name}@{commit}",
            "digest": {"gitCommit": commit},
        },
        *(
            {"name": lock, "digest": {"sha256": vr.sha256_file(REPO / lock)}}
            for lock in LOCK_FILES
            if (REPO / lock).is_file()
        ),
    ]
    statement = {
        "_type": vr.STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": vr.SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {"repository": REPO.name, "commit": commit, "dirty": dirty},
                    "target": "make release",
                },
                "internalParameters": {
                    "commands": commands,
                    "sourceDateEpoch": epoch,
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "image": "not built: no container engine on this machine",
                },
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID},
                "metadata": {
                    "invocationId": str(uuid.uuid4()),
                    "startedOn": started.isoformat().replace("+00:00", "Z"),
                    "finishedOn": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                },
            },
        },
    }
    private = _release_key(key_path)
    signer = CryptoSigner(private)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    provenance = out / vr.PROVENANCE_FILE
    provenance.write_text(
        json.dumps(_sign(payload, vr.IN_TOTO_PAYLOAD_TYPE, signer), indent=2) + "\n"
    )
    lines = [f"{s['digest']['sha256']}  {s['name']}" for s in subjects]
    lines.append(f"{vr.sha256_file(provenance)}  {vr.PROVENANCE_FILE}")
    manifest = ("\n".join(sorted(lines, key=lambda line: line[66:])) + "\n").encode()
    (out / vr.MANIFEST_FILE).write_bytes(manifest)
    (out / vr.MANIFEST_ENVELOPE).write_text(
        json.dumps(_sign(manifest, vr.MANIFEST_PAYLOAD_TYPE, signer), indent=2) + "\n"
    )
    public = out.parent / "release-key.pub.pem"
    public.write_bytes(
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return public


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "build" / "release"))
    parser.add_argument(
        "--key",
        default=os.environ.get(
            "ZUMIK_RELEASE_KEY", str(REPO / "var" / "release" / "release-key.pem")
        ),
    )
    args = parser.parse_args()
    out = Path(args.out)
    public = build(out, Path(args.key))
    report = vr.verify_release(out, public.read_bytes())
    print(f"release: {out}: {len(report.files)} files signed; public key {public}")
    for name in report.files:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
