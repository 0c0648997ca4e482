#!/usr/bin/env bash
# Build the sdist and wheel of the client (clients/python) and of the service (the repository
# root) into DIST (default dist/), check them with `twine check --strict`, then install both
# wheels into a fresh scratch venv outside the repository and use them: import the client and
# its contract-made error classes, run the service's CLI. Builds run without isolation, from the
# dev venv's hashed pins (setuptools, build, twine), on copies of the sources so the tree stays
# clean. The scratch venv gets the wheels' dependencies from the package index, as a user would.
#
# Env: PYTHON (interpreter for the scratch venv, default python3), DEV_PY (the dev venv's python,
# default .venv/bin/python), DIST (output directory, default dist).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
dev_py="${DEV_PY:-$repo/.venv/bin/python}"
dist="${DIST:-$repo/dist}"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/zumik-dist.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

rm -rf "$dist"
mkdir -p "$dist" "$scratch/client" "$scratch/service"
excludes=(--exclude=build --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache
  --exclude=dist)
tar -C "$repo/clients/python" "${excludes[@]}" -cf - . | tar -C "$scratch/client" -xf -
tar -C "$repo" "${excludes[@]}" -cf - pyproject.toml README.md service | tar -C "$scratch/service" -xf -

for what in client service; do
  echo "dist: building $what"
  "$dev_py" -m build --no-isolation --sdist --wheel --outdir "$dist" "$scratch/$what" \
    >"$scratch/build-$what.log" 2>&1 || { cat "$scratch/build-$what.log"; exit 1; }
done
ls -1 "$dist"
# The client's metadata must be clean (--strict: warnings fail); the service's pyproject (not
# this script's to change) declares no readme, which twine reports as a warning only.
"$dev_py" -m twine check --strict "$dist"/zumik_secrets_client-*
"$dev_py" -m twine check "$dist"/zumik_secrets-[0-9]*

echo "dist: installing the wheels into a clean venv"
"$python" -m venv "$scratch/venv"
vpy="$scratch/venv/bin/python"
"$vpy" -m pip install --quiet --disable-pip-version-check "$dist"/*.whl
cd /  # nothing from the repository may be importable by accident
"$vpy" - <<'PY'
import importlib.metadata as md

import zumik_secrets_client
from zumik_secrets_client import aio, errors

assert "site-packages" in zumik_secrets_client.__file__, zumik_secrets_client.__file__
version = md.version("zumik-secrets-client")
assert version == zumik_secrets_client.__version__, (version, zumik_secrets_client.__version__)
assert errors.reason_class("CLAIM_EXPIRED").__name__ == "ClaimExpired"
print(f"dist: zumik-secrets-client {version}: {len(errors.REASONS)} reasons, aio {aio.connect.__name__}")
print(f"dist: zumik-secrets {md.version('zumik-secrets')}")
PY
"$scratch/venv/bin/zumik-secrets" --help >/dev/null
"$vpy" -m pip check
echo "dist: OK ($dist)"
