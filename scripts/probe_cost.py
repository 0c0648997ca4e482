"""CPU per health probe, before and after the health-only listener (`make probe-cost`).

Starts a dev server (``dev-setup``, ``serve`` with ``ZUMIK_HEALTH_LISTEN``) on loopback, then:

* exec probe (what the Deployment ran before): ``zumik-secrets health --server-name
  zumik-secrets`` as a new process per probe, mTLS to the main port. Cost = the process's CPU
  (user + system, from ``RUSAGE_CHILDREN``) + the server's CPU for the call and handshake;
* native gRPC probe (what it runs now): a new plaintext connection per probe to the
  health-only listener and one ``Health/Check``, as the kubelet does. Cost charged to the pod
  = the server's CPU only (the kubelet's own CPU is the node's, not the pod's); the client
  side of this loop is printed too, for comparison.

Server CPU comes from ``/proc/<pid>/stat`` (utime + stime) over the whole run, with the idle
CPU of the same duration subtracted. Prints per-probe figures and the millicores at the
Deployment's cadence (readiness every 5 s, liveness every 15 s).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "service"), str(REPO / "clients/python/src")]
PROBES_PER_SECOND = 1 / 5 + 1 / 15  # readiness + liveness periods of the Deployment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def _check(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _idle_rate(pid: int, seconds: float = 3.0) -> float:
    start = _cpu_seconds(pid)
    time.sleep(seconds)
    return (_cpu_seconds(pid) - start) / seconds


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--exec-probes", type=int, default=20)
    parser.add_argument("--grpc-probes", type=int, default=300)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zumik-probe-cost-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZUMIK_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")])
    env["GRPC_VERBOSITY"] = "ERROR"
    cli = [sys.executable, "-m", "zumik_secrets.cli.main"]
    subprocess.run([*cli, "dev-setup"], cwd=work, env=env, check=True, capture_output=True)
    port, health = _free_port(), _free_port()
    pki = work / "var/dev/pki"
    server_env = dict(
        env,
        ZUMIK_DEV="1",
        ZUMIK_LISTEN=f"127.0.0.1:{port}",
        ZUMIK_HEALTH_LISTEN=f"127.0.0.1:{health}",
        ZUMIK_ACCESS_LOG_LEVEL="OFF",
    )
    server = subprocess.Popen([*cli, "serve"], cwd=work, env=server_env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _check(f"127.0.0.1:{health}"):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
            if time.monotonic() > deadline:
                print("server did not come up", file=sys.stderr)
                return 1
            time.sleep(0.3)
        time.sleep(2)  # let start-up work settle
        idle = _idle_rate(server.pid)
        exe = shutil.which("zumik-secrets", path=str(Path(sys.executable).parent))
        probe = [exe] if exe else cli
        probe_env = dict(
            env,
            ZUMIK_LISTEN=f"127.0.0.1:{port}",
            # The dev PKI's server certificate has no client-auth usage (the Deployment's has);
            # a client certificate of the same kind costs the same.
            ZUMIK_TLS_CERT=str(pki / "console.crt"),
            ZUMIK_TLS_KEY=str(pki / "console.key"),
            ZUMIK_TLS_CLIENT_CA=str(pki / "ca.crt"),
        )
        # Before: a process per probe.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_start, started = _cpu_seconds(server.pid), time.monotonic()
        for _ in range(args.exec_probes):
            subprocess.run(
                [*probe, "health", "--server-name", "localhost"],
                env=probe_env,
                check=True,
                capture_output=True,
            )
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        exec_process = (
            after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime
        ) / args.exec_probes
        exec_server = max(
            0.0, (_cpu_seconds(server.pid) - server_start - idle * wall) / args.exec_probes
        )
        # After: the kubelet's way, a new plaintext connection and one Check per probe.
        own = time.process_time()
        server_start, started = _cpu_seconds(server.pid), time.monotonic()
        for _ in range(args.grpc_probes):
            if not _check(f"127.0.0.1:{health}"):
                print("a probe did not answer SERVING", file=sys.stderr)
                return 1
        wall = time.monotonic() - started
        grpc_client = (time.process_time() - own) / args.grpc_probes
        grpc_server = max(
            0.0, (_cpu_seconds(server.pid) - server_start - idle * wall) / args.grpc_probes
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    before = exec_process + exec_server
    print(f"server idle CPU: {idle * 1000:.1f} ms/s (subtracted)")
    print(
        f"exec probe (`zumik-secrets health`, {args.exec_probes} probes): "
        f"{exec_process * 1000:.1f} ms probe process + {exec_server * 1000:.2f} ms server = "
        f"{before * 1000:.1f} ms CPU per probe, "
        f"{before * PROBES_PER_SECOND * 1000:.1f} millicores at the Deployment's cadence"
    )
    print(
        f"native grpc probe (health-only listener, {args.grpc_probes} probes): "
        f"{grpc_server * 1000:.2f} ms server CPU per probe "
        f"({grpc_server * PROBES_PER_SECOND * 1000:.2f} millicores); "
        f"the probing client (kubelet's role, not charged to the pod): "
        f"{grpc_client * 1000:.2f} ms"
    )
    if grpc_server > 0:
        print(f"ratio: {before / grpc_server:.0f}x less CPU charged to the pod per probe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
