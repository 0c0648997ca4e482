"""Signed releases: the signing half of ``make release`` (scripts/release.py, sign_release) and
the offline verifier (``zumik-secrets verify-release``). Flipping one byte of any artifact, of
the provenance, of the manifest or of its envelope must make verification fail; so must an
extra file, a missing file, a re-signed release under another key, and subjects that do not
match the manifest.

The artifacts here are small stand-ins so the test runs in a second; ``make release`` builds the
real sdists and wheels with the same signing code (scripts/release.py ``build``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from zumik_secrets.cli import verify_release as vr
from zumik_secrets.cli.main import main as cli_main

REPO = Path(__file__).resolve().parents[2]


def _release_module():
    spec = importlib.util.spec_from_file_location("zumik_release", REPO / "scripts" / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["zumik_release"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A signed release of stand-in artifacts; returns (release dir, public key, private key)."""
    base = tmp_path_factory.mktemp("release")
    out = base / "release"
    dist = out / vr.DIST_DIR
    dist.mkdir(parents=True)
    (dist / "zumik_secrets-0.1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 wheel " * 50)
    (dist / "zumik_secrets-0.1.0.tar.gz").write_bytes(b"\x1f\x8b sdist " * 50)
    (dist / "zumik_secrets_client-0.1.0-py3-none-any.whl").write_bytes(b"PK client " * 50)
    (dist / "sbom-build-environment.cdx.json").write_text('{"bomFormat": "CycloneDX"}')
    key = base / "key" / "release-key.pem"
    public = _release_module().sign_release(
        out, key, ["python -m build"], datetime.now(UTC), "0" * 40, False, 0
    )
    return out, public, key


def _copy(release: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(release[0], target)
    return target


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_a_fresh_release_verifies(release: tuple[Path, Path, Path]) -> None:
    out, public, _ = release
    report = vr.verify_release(out, public.read_bytes())
    assert len(report.files) == 5  # four artifacts and the provenance
    statement = report.statement
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    build = statement["predicate"]["buildDefinition"]
    assert build["externalParameters"]["source"] == {
        "repository": REPO.name,
        "commit": "0" * 40,
        "dirty": False,
    }
    locks = {d.get("name") for d in build["resolvedDependencies"]}
    assert {"requirements/build.lock", "requirements/dev.lock"} <= locks
    assert statement["predicate"]["runDetails"]["builder"]["id"]
    envelope = json.loads((out / vr.PROVENANCE_FILE).read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert len(envelope["signatures"]) == 1
    assert cli_main(["verify-release", str(out), "--key", str(public)]) == 0


@pytest.mark.parametrize(
    "victim",
    [
        "dist/zumik_secrets-0.1.0-py3-none-any.whl",
        "dist/zumik_secrets-0.1.0.tar.gz",
        "dist/zumik_secrets_client-0.1.0-py3-none-any.whl",
        "dist/sbom-build-environment.cdx.json",
        vr.PROVENANCE_FILE,
        vr.MANIFEST_FILE,
        vr.MANIFEST_ENVELOPE,
    ],
)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_anywhere_fails(
    release: tuple[Path, Path, Path], tmp_path: Path, victim: str, where: str
) -> None:
    out = _copy(release, tmp_path)
    path = out / victim
    data = bytearray(path.read_bytes())
    index = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(vr.ReleaseError):
        vr.verify_release(out, release[1].read_bytes())
    assert cli_main(["verify-release", str(out), "--key", str(release[1])]) == 1


def test_every_file_is_covered_by_the_flip_test(release: tuple[Path, Path, Path]) -> None:
    covered = {
        "dist/zumik_secrets-0.1.0-py3-none-any.whl",
        "dist/zumik_secrets-0.1.0.tar.gz",
        "dist/zumik_secrets_client-0.1.0-py3-none-any.whl",
        "dist/sbom-build-environment.cdx.json",
        vr.PROVENANCE_FILE,
        vr.MANIFEST_FILE,
        vr.MANIFEST_ENVELOPE,
    }
    assert set(_files(release[0])) == covered


def test_an_extra_or_missing_file_fails(release: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = _copy(release, tmp_path)
    (out / "dist" / "backdoor.whl").write_bytes(b"PK")
    with pytest.raises(vr.ReleaseError, match="not in the signed manifest"):
        vr.verify_release(out, release[1].read_bytes())
    out2 = _copy(release, tmp_path / "2")
    (out2 / "dist" / "zumik_secrets-0.1.0.tar.gz").unlink()
    with pytest.raises(vr.ReleaseError, match="missing"):
        vr.verify_release(out2, release[1].read_bytes())


def test_another_key_does_not_verify(release: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    other = Ed25519PrivateKey.generate().public_key()
    pem = other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(vr.ReleaseError, match="signature"):
        vr.verify_release(release[0], pem)


def test_resigned_tampering_under_an_attackers_key_fails(
    release: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """An attacker who swaps an artifact and re-signs everything with their own key is caught
    by the trusted public key, not by the files' consistency with each other."""
    out = _copy(release, tmp_path)
    (out / "dist" / "zumik_secrets-0.1.0.tar.gz").write_bytes(b"evil")
    for name in (vr.PROVENANCE_FILE, vr.MANIFEST_FILE, vr.MANIFEST_ENVELOPE):
        (out / name).unlink()
    _release_module().sign_release(
        out, tmp_path / "attacker.pem", [], datetime.now(UTC), "0" * 40, False, 0
    )
    with pytest.raises(vr.ReleaseError, match="signature"):
        vr.verify_release(out, release[1].read_bytes())


def test_manifest_lines_are_strict() -> None:
    with pytest.raises(vr.ReleaseError):
        vr.parse_manifest("0" * 64 + "  ../etc/passwd\n")
    with pytest.raises(vr.ReleaseError):
        vr.parse_manifest("0" * 64 + "  /abs\n")
    with pytest.raises(vr.ReleaseError):
        vr.parse_manifest("0" * 64 + "  a\n" + "1" * 64 + "  a\n")
    with pytest.raises(vr.ReleaseError):
        vr.parse_manifest("XYZ  a\n")
