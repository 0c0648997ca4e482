#!/usr/bin/env bash
# Install clients/python for real (not editable) into a fresh scratch venv outside the repo and
# check what a user of the distribution gets: imports from any directory, the typed stubs
# (.pyi + py.typed, usable by mypy --strict), namespace packages, and dependency pins that match
# the generated code. Deletes the scratch venv afterwards.
#
# Env: PYTHON (interpreter for the scratch venv, default python3), DEV_PY (a python with mypy,
# default .venv/bin/python).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
dev_py="${DEV_PY:-$repo/.venv/bin/python}"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/zumik-client-check.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

echo "client-check: scratch venv $scratch"
"$python" -m venv "$scratch/venv"
vpy="$scratch/venv/bin/python"
# Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
mkdir "$scratch/src"
tar -C "$repo/clients/python" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=.mypy_cache -cf - . | tar -C "$scratch/src" -xf -
"$vpy" -m pip install --quiet --disable-pip-version-check "$scratch/src"

cd /  # nothing from the repo may be importable by accident
"$vpy" - <<'PY'
import importlib.metadata as md
import pathlib
import re

from zumik.secrets.v1 import key_service_pb2, key_service_pb2_grpc  # noqa: F401
import zumik.secrets
import zumik_secrets_client

v1 = pathlib.Path(key_service_pb2.__file__).parent
assert "site-packages" in str(v1), f"imported from {v1}, not the installed distribution"
for name in ("py.typed", "key_service_pb2.pyi", "key_service_pb2_grpc.pyi"):
    assert (v1 / name).is_file(), f"{name} missing from the installed zumik.secrets.v1"
helper = pathlib.Path(zumik_secrets_client.__file__).parent
assert (helper / "py.typed").is_file(), "py.typed missing from zumik_secrets_client"
for ns in (v1.parent, v1.parent.parent):
    assert not (ns / "__init__.py").exists(), f"{ns} must stay a namespace package"

# The pins must cover what the generated code checks at import time.
requires = " ".join(md.requires("zumik-secrets-client") or [])
gencode = (v1 / "key_service_pb2.py").read_text()
major, minor, patch = re.search(
    r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", gencode
).groups()
assert f"protobuf>={major}.{minor}.{patch}" in requires, (requires, major, minor, patch)
grpc_gen = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (v1 / "key_service_pb2_grpc.py").read_text())
assert grpc_gen and f"grpcio>={grpc_gen.group(1)}" in requires, (requires, grpc_gen)

methods = zumik_secrets_client.idempotent_methods()
assert methods, "no idempotent methods found in the contracts"
print(f"client-check: imports OK from {v1}; {len(methods)} idempotent methods; requires {requires}")
PY

# PEP 561: mypy --strict, run against the scratch venv, must see the installed types.
cat > "$scratch/use_client.py" <<'PY'
import grpc

from zumik.secrets.v1 import key_service_pb2, key_service_pb2_grpc
from zumik_secrets_client import connect


def get(channel: grpc.Channel, name: str) -> str:
    stub = key_service_pb2_grpc.KeyServiceStub(channel)
    reply: key_service_pb2.GetApiKeyResponse = stub.GetApiKey(
        key_service_pb2.GetApiKeyRequest(name=name)
    )
    return reply.api_key.name


def open_channel() -> grpc.Channel:
    return connect("localhost:8443", ca_file="ca.pem", cert_file="c.pem", key_file="k.pem")
PY
if "$dev_py" -c 'import mypy' 2>/dev/null; then
  # grpc-stubs and types-protobuf come from the dev venv; the package under test from the scratch one.
  "$vpy" -m pip install --quiet --disable-pip-version-check grpc-stubs types-protobuf
  "$dev_py" -m mypy --strict --no-incremental --cache-dir=/dev/null \
    --python-executable "$vpy" "$scratch/use_client.py"
else
  echo "client-check: mypy not available in $dev_py; skipping the typing check" >&2
fi
echo "client-check: OK"
