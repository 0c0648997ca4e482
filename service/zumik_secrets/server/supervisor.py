"""Several server processes on one port: start, watch, restart, drain, one health answer.

Python serves about one core per process (the GIL), so ``serve --processes N`` runs N worker
processes that each bind the same port with SO_REUSEPORT (the kernel spreads connections over
them), under this small supervisor, which:

- checks first that the port is free with a plain bind (no SO_REUSEPORT), so a stale server on
  the port fails start-up loudly instead of silently sharing it (DESIGN section 7);
- applies the migrations once, then starts the first worker and, once it serves, the others
  (the first boot of a database creates signing keys: one process does it);
- restarts a worker that exits, after a backoff that doubles with each exit in the last minute,
  and gives up (drains the others, exits 1) when a worker keeps failing;
- forwards SIGTERM or SIGINT to every worker, which turns NOT_SERVING, drains its in-flight
  calls and exits; workers still running after ``ZUMIK_DRAIN_SECONDS`` plus a margin are killed;
- answers the health-only listener (``ZUMIK_HEALTH_LISTEN``) for the whole set: SERVING only
  while every worker reports SERVING, NOT_SERVING while one is down or restarting and while
  draining. The gRPC health service on the main port still answers for the worker it reaches.

Each worker reports its health on a pipe inherited from the supervisor (one byte per change);
end of file on the pipe means the worker is gone. A worker dies with its supervisor
(``PR_SET_PDEATHSIG`` on Linux, a parent poll elsewhere), as processes of a container do.
Every supervisor decision is one JSON log line (logger ``zumik.supervisor``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import selectors
import signal
import socket
import subprocess  # nosec B404 - starts its own workers (sys.executable), no shell
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from grpc_health.v1 import health, health_pb2

from zumik_secrets.api.contracts import SERVICE_DESCRIPTORS
from zumik_secrets.server.config import ServerConfig
from zumik_secrets.server.health_listener import LIVENESS_SERVICE, HealthListener
from zumik_secrets.storage.factory import is_sqlite_url, open_store

_LOG = logging.getLogger("zumik.supervisor")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_READY_SERVICES = ("", *(s.full_name for s in SERVICE_DESCRIPTORS))

#: The hidden ``serve`` option that makes a process a supervised worker (see :class:`WorkerLink`).
WORKER_OPTION = "--supervised-worker"

DRAIN_MARGIN_S = 5.0
"""Seconds past ``ZUMIK_DRAIN_SECONDS`` a worker gets to exit after SIGTERM before SIGKILL."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart an exited worker and when to give up."""

    first_backoff: float = 0.5
    """Seconds before the first restart; doubled for each further exit within ``window``."""
    max_backoff: float = 30.0
    window: float = 60.0
    """Seconds over which a worker's exits are counted."""
    max_restarts: int = 5
    """Exits of one worker within ``window`` that are restarted; one more and the supervisor
    gives up (a crash loop: something outside the process is wrong)."""


# ------------------------------------------------------------------------------ sizing


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    CPU limit, rounded up) since ``os.cpu_count()`` counts the host's cores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        root = Path("/sys/fs/cgroup/cpu")
        quota_us = int((root / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period_us = int((root / "cpu.cfs_period_us").read_text(encoding="ascii"))
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def resolve_processes(config: ServerConfig, requested: int | None = None) -> int:
    """How many server processes to run: ``requested`` (``--processes``), else
    ``ZUMIK_PROCESSES``; 0 means one per usable core on PostgreSQL and one on SQLite, whose
    single writer gains nothing from more.

    Raises:
        ValueError: a negative count, or settings only one process can honour.
    """
    processes = config.processes if requested is None else requested
    if processes < 0:
        raise ValueError("--processes must be 0 (one per core) or more")
    if processes == 0:
        processes = 1 if is_sqlite_url(config.database_url) else usable_cpus()
    if processes > 1 and config.metrics_listen:
        raise ValueError(
            "ZUMIK_METRICS_LISTEN serves one process's metrics and cannot be shared by "
            f"{processes} processes: set ZUMIK_PROCESSES=1 (scale with replicas) or export "
            "metrics with OTLP instead"
        )
    return processes


# ------------------------------------------------------------------------------ the port


def reserve_listen(listen: str) -> str:
    """Check that nothing listens on ``listen``'s port, and return ``listen`` with a concrete
    port (port 0 picks a free one).

    The check binds without SO_REUSEPORT, which fails while any socket, sharing or not, listens
    there. It is a check, not a lock: the workers bind a moment later.

    Raises:
        RuntimeError: the port is in use or the address is not one of this host's.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise RuntimeError(f"cannot listen on {listen} (not host:port)")
    name = host.strip("[]") or None
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RuntimeError(f"cannot listen on {listen} ({exc.strerror})") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address[0], port, *address[2:]))
            except OSError as exc:
                raise RuntimeError(
                    f"cannot listen on {listen} ({exc.strerror}: is another server, perhaps "
                    "a stale one, on this port?); no worker was started"
                ) from None
            port = int(probe.getsockname()[1])
    return f"{host}:{port}"


# ------------------------------------------------------------------------------ the worker side


class WorkerLink:
    """A supervised worker's end of its pipe: reports health changes, dies with the supervisor.

    Parsed from the hidden ``--supervised-worker INDEX:FD:PARENT_PID`` option the supervisor
    gives each worker it starts.
    """

    def __init__(self, spec: str) -> None:
        """Parse ``INDEX:FD:PARENT_PID``.

        Raises:
            ValueError: a malformed spec.
        """
        try:
            index, fd, parent = (int(part) for part in spec.split(":"))
        except ValueError:
            raise ValueError(f"{WORKER_OPTION}: expected INDEX:FD:PARENT_PID") from None
        self.index = index
        self.parent = parent
        self._fd = fd
        self._lock = threading.Lock()
        self._last: bool | None = None

    def report(self, serving: bool) -> None:
        """Tell the supervisor this process is (not) serving; repeats are not sent."""
        with self._lock:
            if serving == self._last:
                return
            self._last = serving
            with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
                os.write(self._fd, b"S" if serving else b"N")

    def die_with_parent(self) -> None:
        """Have the kernel SIGKILL this process when the supervisor dies (as a container's
        processes die with it), or poll for it where ``prctl`` is missing."""
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            pr_set_pdeathsig = 1
            if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != self.parent:  # died before prctl took effect
                    os.kill(os.getpid(), signal.SIGKILL)
                return
        threading.Thread(target=self._poll_parent, name="zumik-parent", daemon=True).start()

    def _poll_parent(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ the supervisor


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    status_fd: int = -1
    serving: bool = False
    served_once: bool = False
    restart_at: float | None = None
    exits: deque[float] = field(default_factory=deque)


class Supervisor:
    """Runs N worker processes of ``serve`` on one port (see the module docstring)."""

    def __init__(
        self,
        config: ServerConfig,
        processes: int,
        worker_command: Sequence[str],
        *,
        policy: RestartPolicy | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Check the ports and bind the health listener (start nothing yet).

        Args:
            config: The loaded configuration (the workers load the same one).
            processes: Workers to run (at least 1).
            worker_command: argv that runs ``serve`` in a new process; the supervisor appends
                the worker option.
            policy: Restart policy.
            env: Environment of the workers (default: this process's).

        Raises:
            RuntimeError: the main port is in use, or the health listener cannot bind.
        """
        if processes < 1:
            raise ValueError("a supervisor needs at least one worker")
        self.config = config
        self.listen = reserve_listen(config.listen)
        self.policy = policy or RestartPolicy()
        self._command = list(worker_command)
        self._env = dict(os.environ if env is None else env)
        # Every worker serves the concrete port; the health listener is the supervisor's.
        self._env.update({"ZUMIK_LISTEN": self.listen, "ZUMIK_HEALTH_LISTEN": ""})
        self.workers = [_Worker(i) for i in range(processes)]
        self.health = health.HealthServicer(experimental_non_blocking=True)
        for name in _READY_SERVICES:
            self.health.set(name, _NOT_SERVING)
        self.health.set(LIVENESS_SERVICE, _SERVING)
        self.health_listener = (
            HealthListener(config.health_listen, self.health) if config.health_listen else None
        )
        self._ready = False
        self._selector = selectors.DefaultSelector()
        self._signal: int | None = None
        self._draining = False
        self._drain_deadline = 0.0
        self._failure = ""

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        """Migrate, start the workers, supervise them until a signal or a crash loop.

        Returns:
            0 after a drain in which every worker exited cleanly; 1 when a worker could not
            start, kept crashing, or had to be killed at the drain deadline.
        """
        self._migrate()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        if self.health_listener is not None:
            self.health_listener.start()
        _LOG.info(
            "supervisor started",
            extra={"listen": self.listen, "processes": len(self.workers), "pid": os.getpid()},
        )
        try:
            self._start(self.workers[0])
            while self._loop_once():
                pass
        finally:
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
                self._close_pipe(w)
            if self.health_listener is not None:
                self.health_listener.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._failure:
            _LOG.error("supervisor stopped", extra={"reason": self._failure})
            return 1
        _LOG.info("supervisor stopped")
        return 0

    def _migrate(self) -> None:
        # Once, before any worker: N workers migrating at once would race.
        store = open_store(self.config.database_url)
        try:
            applied = store.migrate()
        finally:
            store.close()
        if applied:
            _LOG.info("migrations applied", extra={"versions": applied})

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum

    def _loop_once(self) -> bool:
        """One turn of the loop; False once every worker has exited after a drain."""
        if self._signal is not None and not self._draining:
            self._begin_drain(f"signal {signal.Signals(self._signal).name}")
        now = time.monotonic()
        if self._draining:
            if all(w.proc is None for w in self.workers):
                return False
            if now >= self._drain_deadline:
                self._kill_stragglers()
                return False
        else:
            self._start_due(now)
        self._pump(0.1)
        self._update_health()
        return True

    def _start_due(self, now: float) -> None:
        first = self.workers[0]
        for w in self.workers:
            if w.proc is not None:
                continue
            if w.restart_at is not None:
                if now >= w.restart_at:
                    self._start(w)
            elif first.served_once:  # the others start once the first serves
                self._start(w)

    def _start(self, w: _Worker) -> None:
        read_fd, write_fd = os.pipe()
        spec = f"{w.index}:{write_fd}:{os.getpid()}"
        try:
            w.proc = subprocess.Popen(  # noqa: S603  # nosec B603 - our own argv, no shell
                [*self._command, WORKER_OPTION, spec], env=self._env, pass_fds=(write_fd,)
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        w.status_fd = read_fd
        w.serving = False
        self._selector.register(read_fd, selectors.EVENT_READ, w)
        restarted = w.restart_at is not None
        w.restart_at = None
        _LOG.log(
            logging.WARNING if restarted else logging.INFO,
            "worker restarted" if restarted else "worker started",
            extra={"worker": w.index, "pid": w.proc.pid, "exits_in_window": len(w.exits)},
        )

    def _pump(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            w: _Worker = key.data
            try:
                data = os.read(w.status_fd, 64)
            except BlockingIOError:
                continue
            if data:
                serving = data[-1:] == b"S"  # the last report is the current one
                if serving and not w.served_once:
                    w.served_once = True
                    _LOG.info("worker serving", extra={"worker": w.index, "pid": self._pid(w)})
                w.serving = serving
            else:
                self._on_exit(w)

    @staticmethod
    def _pid(w: _Worker) -> int:
        return w.proc.pid if w.proc is not None else 0

    def _close_pipe(self, w: _Worker) -> None:
        if w.status_fd >= 0:
            self._selector.unregister(w.status_fd)
            os.close(w.status_fd)
            w.status_fd = -1

    def _on_exit(self, w: _Worker) -> None:
        """The worker's pipe closed: reap it, then restart it, give up, or (draining) let go."""
        self._close_pipe(w)
        proc = w.proc
        if proc is None:
            return
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # closed the pipe yet lives on: not ours to trust
            proc.kill()
            code = proc.wait()
        w.proc = None
        w.serving = False
        exit_info = {
            "worker": w.index,
            "pid": proc.pid,
            "exit_code": code,
            **({"signal": signal.Signals(-code).name} if code < 0 else {}),
        }
        if self._draining:
            level = logging.INFO if code == 0 else logging.WARNING
            _LOG.log(level, "worker exited", extra=exit_info)
            if code != 0 and not self._failure:
                self._failure = f"worker {w.index} exited with {code} while draining"
            return
        if not w.served_once:
            _LOG.error("worker exited before serving", extra=exit_info)
            self._begin_drain(f"worker {w.index} exited ({code}) before serving")
            self._failure = f"worker {w.index} could not start (exit {code}); see its log above"
            return
        now = time.monotonic()
        w.exits.append(now)
        while w.exits and w.exits[0] < now - self.policy.window:
            w.exits.popleft()
        if len(w.exits) > self.policy.max_restarts:
            _LOG.error(
                "worker crash loop: giving up",
                extra={**exit_info, "exits_in_window": len(w.exits)},
            )
            self._begin_drain("crash loop")
            self._failure = (
                f"worker {w.index} exited {len(w.exits)} times within "
                f"{self.policy.window:g} s; see its log above"
            )
            return
        backoff = min(self.policy.max_backoff, self.policy.first_backoff * 2 ** (len(w.exits) - 1))
        w.restart_at = now + backoff
        _LOG.warning(
            "worker exited",
            extra={**exit_info, "restart_in_s": backoff, "exits_in_window": len(w.exits)},
        )

    def _begin_drain(self, reason: str) -> None:
        self._draining = True
        self._drain_deadline = time.monotonic() + self.config.drain_seconds + DRAIN_MARGIN_S
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, for good
        live = [w.proc for w in self.workers if w.proc is not None]
        _LOG.info("draining", extra={"reason": reason, "workers": len(live)})
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _kill_stragglers(self) -> None:
        for w in self.workers:
            if w.proc is not None:
                _LOG.error(
                    "worker killed at the drain deadline",
                    extra={"worker": w.index, "pid": w.proc.pid},
                )
                w.proc.kill()
                w.proc.wait()
                w.proc = None
                self._close_pipe(w)
        self._failure = self._failure or "workers did not drain in time"

    def _update_health(self) -> None:
        if self._draining:
            return
        ready = all(w.serving for w in self.workers)
        if ready != self._ready:
            self._ready = ready
            status = _SERVING if ready else _NOT_SERVING
            for name in _READY_SERVICES:
                self.health.set(name, status)
            _LOG.info(
                "all workers serving" if ready else "not all workers serving",
                extra={"serving": sum(w.serving for w in self.workers)},
            )
