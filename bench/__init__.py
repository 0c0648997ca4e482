"""Benchmark harness of Zumik Secrets (`python -m bench`; see bench/README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def ensure_import_paths() -> None:
    """Make the service and the generated stubs importable from a plain checkout.

    `make venv` installs both editable; a venv without them (or a fresh `make proto`) still works
    because the sources win, as in pytest's configuration.
    """
    for sub, module in (("clients/python/src", "zumik.secrets.v1"), ("service", "zumik_secrets")):
        path = str(_REPO / sub)
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found and path not in sys.path:
            sys.path.insert(0, path)
