"""Shared pytest configuration."""

import os

# grpcio reads this at import time; handshake-failure logs are noise in tests that provoke them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

pytest_plugins = [
    "tests.fix_leaks",
    "tests.fix_pki",
    "tests.fix_db",
    "tests.fix_server",
    "tests.security.report",
]
