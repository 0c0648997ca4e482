"""The supervisor's decisions with stand-in workers (tiny Python processes speaking its pipe).

The real server under the supervisor is tested in tests/integration/test_supervisor.py; here the
workers are scripts that report SERVING and exit on cue, so restarts, the crash-loop give-up and
a failed start run in a second or two.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from zumik_secrets.core.keyring import generate_keyring
from zumik_secrets.server.config import ServerConfig
from zumik_secrets.server.supervisor import RestartPolicy, Supervisor, WorkerLink

# argv[-1] is INDEX:FD:PARENT_PID. Report SERVING (unless told not to), live a moment, exit 3.
_WORKER = """
import os, sys, time
index, fd, parent = (int(x) for x in sys.argv[-1].split(":"))
if sys.argv[1] == "serve":
    os.write(fd, b"NS")
time.sleep(float(sys.argv[2]))
sys.exit(3)
"""

FAST = RestartPolicy(first_backoff=0.01, max_backoff=0.05, window=60, max_restarts=2)


def _config(tmp_path: Path) -> ServerConfig:
    return ServerConfig.load(
        {
            "ZUMIK_DEV": "1",
            "ZUMIK_MASTER_KEYRING": generate_keyring(),
            "ZUMIK_DATABASE_URL": f"sqlite:///{tmp_path / 'zumik.db'}",
            "ZUMIK_LISTEN": "127.0.0.1:0",
            "ZUMIK_DRAIN_SECONDS": "1",
        }
    )


def _run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, *worker: str, processes: int = 1
) -> tuple[int, list[logging.LogRecord]]:
    """Supervise stand-in workers (``worker``: serve|fail, seconds to live); exit code, records."""
    caplog.set_level(logging.INFO, logger="zumik.supervisor")
    command = [sys.executable, "-c", _WORKER, *worker]
    code = Supervisor(_config(tmp_path), processes, command, policy=FAST).run()
    return code, [r for r in caplog.records if r.name == "zumik.supervisor"]


def test_a_crashing_worker_is_restarted_then_the_supervisor_gives_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code, records = _run(tmp_path, caplog, "serve", "0.2")
    assert code == 1
    messages = [r.getMessage() for r in records]
    # Two restarts are allowed within the window; the third exit is a crash loop.
    assert messages.count("worker restarted") == FAST.max_restarts
    assert messages.count("worker exited") == FAST.max_restarts
    assert "worker crash loop: giving up" in messages
    exited = [r for r in records if r.getMessage() == "worker exited"]
    assert [getattr(r, "exit_code", None) for r in exited] == [3, 3]
    assert [getattr(r, "restart_in_s", None) for r in exited] == [0.01, 0.02]


def test_a_worker_that_never_serves_fails_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code, records = _run(tmp_path, caplog, "fail", "0", processes=2)
    assert code == 1
    messages = [r.getMessage() for r in records]
    assert "worker exited before serving" in messages
    assert "worker restarted" not in messages
    assert messages.count("worker started") == 1  # the second waits for the first to serve


def test_worker_link_parses_its_spec() -> None:
    link = WorkerLink("3:7:1234")
    assert (link.index, link.parent) == (3, 1234)
    with pytest.raises(ValueError, match="INDEX:FD:PARENT_PID"):
        WorkerLink("3:7")
