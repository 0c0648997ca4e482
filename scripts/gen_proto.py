"""Regenerate the Python stubs of the .proto contracts, deterministically.

Runs ``grpc_tools.protoc`` (through ``python -m grpc_tools.protoc``, which adds the well-known
types to the include path) with the mypy-protobuf plugins over every ``.proto`` file under
``proto/``, sorted, into a scratch directory, then syncs the result into
``clients/python/src``: changed files are rewritten, unchanged ones are left alone (so their
mtimes do not change and make does not rebuild what depends on them), and generated files
whose .proto is gone are deleted. Each generated package directory also gets an
``__init__.py`` and a ``py.typed`` marker; ``zumik/`` and ``zumik/secrets/`` stay namespace
packages.

It also writes ``service/zumik_secrets/server/contracts.binpb``: a FileDescriptorSet of the
contracts *with their source comments* (``--include_source_info``; the well-known types are
not included), which the server's reflection serves so that ``grpcurl describe`` shows the
comments (the generated modules carry descriptors without them).

Usage: ``python scripts/gen_proto.py [--proto-root DIR] [--out DIR] [--descriptor-set FILE]``.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROTO_ROOT = REPO_ROOT / "proto"
DEFAULT_OUT = REPO_ROOT / "clients" / "python" / "src"
DEFAULT_DESCRIPTOR_SET = REPO_ROOT / "service" / "zumik_secrets" / "server" / "contracts.binpb"
DESCRIPTOR_SET_NAME = "contracts.binpb"
# Only this top-level package of the output tree is owned by the generator; the helper package
# zumik_secrets_client lives next to it and is never touched.
GENERATED_TOP = "zumik"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PACKAGE_INIT = '"""Generated protobuf and gRPC modules. Do not edit: run `make proto`."""\n'
# Namespace levels shared with other distributions: never given an __init__.py.
NAMESPACE_DEPTH = 2  # zumik/, zumik/secrets/


def _plugin(name: str) -> Path:
    """Locate a protoc plugin installed next to the running interpreter.

    Raises:
        SystemExit: if the plugin is not installed (mypy-protobuf missing from the venv).
    """
    candidate = Path(sys.executable).parent / name
    found = candidate if candidate.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"gen_proto: {name} not found; install mypy-protobuf in this venv")
    return Path(found)


def _is_generated(path: Path) -> bool:
    return path.name.endswith(GENERATED_SUFFIXES) or path.name in ("__init__.py", "py.typed")


def _generate(proto_root: Path, protos: list[str], scratch: Path) -> None:
    """Run protoc over ``protos`` (paths relative to ``proto_root``) into ``scratch``.

    Raises:
        SystemExit: if protoc fails.
    """
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={scratch}",
        f"--grpc_python_out={scratch}",
        f"--mypy_out={scratch}",
        f"--mypy_grpc_out={scratch}",
        "--include_source_info",
        f"--descriptor_set_out={scratch / DESCRIPTOR_SET_NAME}",
        *protos,
    ]
    # Output is captured because the mypy plugins chat on stderr; it is shown only on failure.
    result = subprocess.run(cmd, cwd=proto_root, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"gen_proto: protoc failed with exit status {result.returncode}")
    # Package markers for every directory holding generated modules, below the namespace levels.
    for module in sorted(scratch.rglob("*_pb2.py")):
        package = module.parent
        depth = len(package.relative_to(scratch).parts)
        if depth > NAMESPACE_DEPTH:
            (package / "__init__.py").write_text(PACKAGE_INIT, encoding="utf-8")
            (package / "py.typed").write_text("", encoding="utf-8")


def _sync(scratch: Path, out: Path) -> list[str]:
    """Make the generated part of ``out`` equal to ``scratch``; return the changed paths."""
    changes: list[str] = []
    wanted = {
        p.relative_to(scratch)
        for p in scratch.rglob("*")
        if p.is_file() and p.name != DESCRIPTOR_SET_NAME
    }
    existing_root = out / GENERATED_TOP
    existing = (
        {p.relative_to(out) for p in existing_root.rglob("*") if p.is_file() and _is_generated(p)}
        if existing_root.exists()
        else set()
    )
    for rel in sorted(existing - wanted):
        (out / rel).unlink()
        changes.append(f"removed {rel.as_posix()}")
    for rel in sorted(wanted):
        src, dst = scratch / rel, out / rel
        if dst.exists() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        changes.append(f"wrote {rel.as_posix()}")
    return changes


def main(argv: list[str] | None = None) -> int:
    """Regenerate the stubs; return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--descriptor-set", type=Path, default=DEFAULT_DESCRIPTOR_SET)
    args = parser.parse_args(argv)
    proto_root: Path = args.proto_root.resolve()
    out: Path = args.out.resolve()

    protos = sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))
    if not protos:
        print(f"gen_proto: no .proto files under {proto_root}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="zumik-gen-") as tmp:
        scratch = Path(tmp)
        _generate(proto_root, protos, scratch)
        changes = _sync(scratch, out)
        descriptor_set: Path = args.descriptor_set.resolve()
        built = scratch / DESCRIPTOR_SET_NAME
        if not (descriptor_set.exists() and filecmp.cmp(built, descriptor_set, shallow=False)):
            descriptor_set.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built, descriptor_set)
            changes.append(f"wrote {descriptor_set.as_posix()}")
    for line in changes:
        print(f"gen_proto: {line}")
    print(f"gen_proto: {len(protos)} proto files, {len(changes)} generated files changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
