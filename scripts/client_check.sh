#!/usr/bin/env bash
# Install clients/python with its `typing` extra, and nothing else, for real (not editable) into
# a fresh scratch venv outside the repo and check what a user of the distribution gets: imports
# from any directory, the typed stubs (.pyi + py.typed), namespace packages, dependency pins that
# match the generated code, and `mypy --strict` passing on the README's examples (and failing on
# a script with type errors, so the check can fail). Deletes the scratch venv afterwards.
#
# Env: PYTHON (interpreter for the scratch venv, default python3), DEV_PY (a python with mypy,
# default .venv/bin/python).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
dev_py="${DEV_PY:-$repo/.venv/bin/python}"
# Absolute: the checks below run from / (a relative DEV_PY silently skipped the mypy check).
case "$dev_py" in /*) ;; *) dev_py="$PWD/$dev_py" ;; esac
scratch="$(mktemp -d "${TMPDIR:-/tmp}/zumik-client-check.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

echo "client-check: scratch venv $scratch"
"$python" -m venv "$scratch/venv"
vpy="$scratch/venv/bin/python"
# Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
mkdir "$scratch/src"
tar -C "$repo/clients/python" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=.mypy_cache -cf - . | tar -C "$scratch/src" -xf -
"$vpy" -m pip install --quiet --disable-pip-version-check "$scratch/src[typing]"

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

# PEP 561: mypy --strict, run against the scratch venv, must see the installed types. The README's
# ```python blocks are one module, in order, as tests/integration/test_client_readme.py runs them.
"$vpy" - "$repo/clients/python/README.md" "$scratch/readme_examples.py" <<'PY'
import pathlib
import re
import sys

text = pathlib.Path(sys.argv[1]).read_text()
blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
assert len(blocks) >= 6, f"only {len(blocks)} python blocks in the README"
pathlib.Path(sys.argv[2]).write_text("\n".join(blocks))
print(f"client-check: {len(blocks)} README blocks to type-check")
PY
cat > "$scratch/use_client.py" <<'PY'
import grpc

from zumik.secrets.v1 import key_service_pb2, key_service_pb2_grpc
from zumik_secrets_client import connect, errors


def get(channel: grpc.Channel, name: str) -> str:
    stub = key_service_pb2_grpc.KeyServiceStub(channel)
    try:
        reply: key_service_pb2.GetApiKeyResponse = stub.GetApiKey(
            key_service_pb2.GetApiKeyRequest(name=name)
        )
    except errors.ApiKeyNotFound as exc:
        return exc.reason or ""
    return reply.api_key.name


def open_channel() -> grpc.Channel:
    return connect("localhost:8443", ca_file="ca.pem", cert_file="c.pem", key_file="k.pem")
PY
cat > "$scratch/wrong.py" <<'PY'
import grpc

from zumik.secrets.v1 import key_service_pb2, key_service_pb2_grpc, seal_service_pb2
from zumik_secrets_client import aio, connect


def get(channel: grpc.Channel) -> int:
    stub = key_service_pb2_grpc.KeyServiceStub(channel)
    return stub.GetApiKey(seal_service_pb2.OpenRequest(name="x")).api_key.name


async def aget(channel: grpc.aio.Channel) -> None:
    stub = key_service_pb2_grpc.KeyServiceStub(channel)
    stub.GetApiKey(key_service_pb2.GetApiKeyRequest(name="x")).api_key


connect("x", ca_file="a", cert_file="b", key_file="c", default_timeout="5")
aio.connect("x", ca_file="a", cert_file="b", key_file="c", claim=42)
PY
if "$dev_py" -c 'import mypy' 2>/dev/null; then
  # mypy from the dev venv; every module it checks against (the client, grpc-stubs,
  # types-protobuf) from the scratch venv.
  mypy=("$dev_py" -m mypy --strict --no-incremental --cache-dir=/dev/null
    --python-executable "$vpy")
  "${mypy[@]}" "$scratch/use_client.py" "$scratch/readme_examples.py"
  if out="$("${mypy[@]}" "$scratch/wrong.py" 2>&1)"; then
    echo "$out"; echo "client-check: mypy accepted a script with type errors" >&2; exit 1
  fi
  errors="$(grep -c ': error:' <<<"$out" || true)"
  [ "$errors" -ge 5 ] || { echo "$out"; echo "client-check: expected 5 type errors" >&2; exit 1; }
  echo "client-check: mypy --strict rejects the wrong script ($errors errors), as it should"
else
  echo "client-check: mypy not available in $dev_py; skipping the typing check" >&2
fi
echo "client-check: OK"
