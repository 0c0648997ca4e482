"""Fingerprints per second: in-process (app layer) and over gRPC with mutual TLS (not a test).

In-process: :class:`~zumik_secrets.app.fingerprints.Fingerprints` over a real SQLite store and
real wrapped data keys, warm cache, batches of 1, 100 and 1,000 values in one thread.

Over gRPC: the real server in a child process (this script with ``--serve``: threaded grpcio,
dev policy, throwaway PKI and keyring, SQLite in a temp dir), driven from this process with
grpc.aio over several channels at the given concurrency, batches of 1, 100 and 1,000 values
(24-byte values, like e-mail addresses), reporting the server process's CPU per call. A
breakdown then times, without the network, the Python parts of one call: parsing the request,
the servicer (use case and response building) and serializing the response; the rest of the
server's CPU per call is grpcio's core (TLS, HTTP/2, framing, thread hand-offs).

    PYTHONPATH=service:clients/python/src .venv/bin/python bench/fingerprint_rate.py \
        [--batches 1 100 1000] [--concurrency 16] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from zumik.secrets.v1 import fingerprint_service_pb2 as fpb
from zumik.secrets.v1 import fingerprint_service_pb2_grpc as fgrpc

PROJECT = "tenants/bench/projects/p"


def _values(n: int, salt: int = 0) -> list[bytes]:
    return [f"user{salt:04d}-{i:08d}@example.com"[:24].encode() for i in range(n)]


def in_process(batches: list[int], seconds: float) -> None:
    """Measure the app layer alone (no gRPC, no protobuf)."""
    from zumik_secrets.app.audit import LogAuditRecorder
    from zumik_secrets.app.customer_keys import CustomerKeys
    from zumik_secrets.app.data_keys import DataKeys
    from zumik_secrets.app.fingerprints import Fingerprints
    from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
    from zumik_secrets.core.names import ProjectName
    from zumik_secrets.storage.factory import open_store

    with tempfile.TemporaryDirectory(prefix="zumik-bench-") as tmp:
        store = open_store(f"sqlite:///{tmp}/z.db")
        store.migrate()
        try:
            audit = LogAuditRecorder()
            keyring = MasterKeyring.from_text(generate_keyring())
            customer = CustomerKeys(store.customer_keys, store.data_keys, keyring, audit)
            fps = Fingerprints(
                DataKeys(store.data_keys, customer), store.fingerprint_schedule, audit
            )
            parent = ProjectName("bench", "p")
            for batch in batches:
                values = _values(batch)
                fps.fingerprint(parent, "email", values)  # warm
                done, began, cpu = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - began < seconds:
                    fps.fingerprint(parent, "email", values)
                    done += batch
                rate = done / (time.process_time() - cpu)
                print(
                    f"app    batch={batch:<5} {rate:10.0f} fingerprints per CPU-second (1 thread)",
                    flush=True,
                )
        finally:
            store.close()


def serve(workdir: Path) -> None:
    """Child: run the server, write its port and claim to ``workdir/ready.json``, block."""
    from zumik_secrets.cli.dev_pki import generate_dev_pki
    from zumik_secrets.core.keyring import generate_keyring
    from zumik_secrets.server.config import ServerConfig, dev_policy_path
    from zumik_secrets.server.grpc_server import ZumikServer
    from zumik_secrets.server.runtime import Runtime

    pki = generate_dev_pki(workdir / "pki")
    keyring = workdir / "keyring.json"
    keyring.write_text(generate_keyring())
    env = {
        "ZUMIK_LISTEN": "127.0.0.1:0",
        "ZUMIK_DATABASE_URL": f"sqlite:///{workdir}/zumik.db",
        "ZUMIK_TLS_CERT": str(pki.server.cert),
        "ZUMIK_TLS_KEY": str(pki.server.key),
        "ZUMIK_TLS_CLIENT_CA": str(pki.ca_cert),
        "ZUMIK_POLICY_FILE": str(dev_policy_path()),
        "ZUMIK_MASTER_KEYRING_FILE": str(keyring),
        "ZUMIK_LOG_LEVEL": "WARNING",
        "ZUMIK_WORKERS": os.environ.get("ZUMIK_WORKERS", "16"),
    }
    config = ServerConfig.load(env)
    runtime = Runtime.open(config)
    server = ZumikServer(runtime)
    server.start()
    signer = runtime.claim_keys.signer
    claim, _ = signer.mint(
        "bench",
        "p",
        "bench",
        ("fingerprints.compute",),
        int(time.time()),
        300,
        credential_id="key_bench",
    )
    ready = {
        "port": server.port,
        "claim": claim,
        "workers": config.workers,
        "pid": os.getpid(),
        "ca": str(pki.ca_cert),
        "executor": [str(pki.client("executor").cert), str(pki.client("executor").key)],
    }
    (workdir / "ready.tmp").write_text(json.dumps(ready))
    (workdir / "ready.tmp").rename(workdir / "ready.json")
    server.wait()


def _channel(ready: dict[str, Any], index: int) -> grpc.aio.Channel:
    cert, key = ready["executor"]
    creds = grpc.ssl_channel_credentials(
        Path(ready["ca"]).read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes()
    )
    claim = ready["claim"]
    call_creds = grpc.metadata_call_credentials(
        lambda _ctx, cb: cb((("zumik-claim", claim),), None)
    )
    return grpc.aio.secure_channel(
        f"localhost:{ready['port']}",
        grpc.composite_channel_credentials(creds, call_creds),
        options=[("grpc.channel_id", index)],
    )


async def _drive(
    stubs: list[Any], request: fpb.FingerprintRequest, concurrency: int, seconds: float
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while time.perf_counter() < stop:
            started = time.perf_counter()
            answer = await stub.Fingerprint(request, timeout=30)
            assert len(answer.fingerprints) == len(request.values)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return len(latencies) / (time.perf_counter() - began), latencies


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def breakdown(batch: int, rounds: int = 2000) -> None:
    """Where the server's Python time goes for one call, without the network: parse the request
    bytes, run the servicer (use case + response building), serialize the response."""
    from zumik_secrets.api.call_context import CallContext, set_call
    from zumik_secrets.api.servicers.fingerprints import FingerprintServicer
    from zumik_secrets.app.audit import LogAuditRecorder
    from zumik_secrets.app.customer_keys import CustomerKeys
    from zumik_secrets.app.data_keys import DataKeys
    from zumik_secrets.app.fingerprints import Fingerprints
    from zumik_secrets.app.handles import Handles
    from zumik_secrets.core.keyring import MasterKeyring, generate_keyring
    from zumik_secrets.storage.factory import open_store

    with tempfile.TemporaryDirectory(prefix="zumik-bench-") as tmp:
        store = open_store(f"sqlite:///{tmp}/z.db")
        store.migrate()
        try:
            audit = LogAuditRecorder()
            keyring = MasterKeyring.from_text(generate_keyring())
            customer = CustomerKeys(store.customer_keys, store.data_keys, keyring, audit)
            fps = Fingerprints(
                DataKeys(store.data_keys, customer), store.fingerprint_schedule, audit
            )
            servicer = FingerprintServicer(fps, Handles(store.handles, audit))
            set_call(CallContext("/m", "spiffe://x", None, "bench", "p", False, ""))
            wire = fpb.FingerprintRequest(
                parent=PROJECT, namespace="email", values=_values(batch)
            ).SerializeToString()
            request = fpb.FingerprintRequest.FromString(wire)
            answer = servicer.Fingerprint(request, None)  # type: ignore[arg-type]
            parts = {
                "parse request": lambda: fpb.FingerprintRequest.FromString(wire),
                "servicer (HMAC, base64, response)": lambda: servicer.Fingerprint(request, None),  # type: ignore[arg-type]
                "serialize response": answer.SerializeToString,
            }
            for name, fn in parts.items():
                began = time.process_time()
                for _ in range(rounds):
                    fn()
                took = (time.process_time() - began) / rounds
                print(f"breakdown batch={batch:<5} {name:<36} {took * 1e6:8.1f} us CPU/call")
        finally:
            store.close()


async def over_grpc(ready: dict[str, Any], args: argparse.Namespace) -> None:
    stubs = [fgrpc.FingerprintServiceStub(_channel(ready, i)) for i in range(4)]
    print(
        f"server: threaded grpcio, {ready['workers']} workers, 1 process, SQLite; "
        f"client: grpc.aio, 4 channels, concurrency {args.concurrency};"
        f" {args.seconds:.0f} s per run"
    )
    for batch in args.batches:
        request = fpb.FingerprintRequest(parent=PROJECT, namespace="email", values=_values(batch))
        await _drive(stubs, request, args.concurrency, 1.0)  # warm-up
        cpu_before = _cpu_seconds(ready["pid"])
        rate, latencies = await _drive(stubs, request, args.concurrency, args.seconds)
        cpu = (_cpu_seconds(ready["pid"]) - cpu_before) / max(1, len(latencies))
        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(
            f"grpc   batch={batch:<5} {rate * batch:10.0f} fingerprints/s  ({rate:7.0f} calls/s,"
            f" p50 {statistics.median(ms):6.2f} ms, p99 {p99:6.2f} ms,"
            f" server CPU {cpu * 1e6:6.0f} us/call)",
            flush=True,
        )


def run_grpc(args: argparse.Namespace) -> None:
    """Start the server child, drive it, stop it."""
    with tempfile.TemporaryDirectory(prefix="zumik-bench-") as tmp:
        workdir = Path(tmp)
        child = subprocess.Popen(  # this very script, fixed arguments
            [sys.executable, __file__, "--serve", str(workdir)],
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (workdir / "ready.json").exists():
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.1)
            ready = json.loads((workdir / "ready.json").read_text())
            asyncio.run(over_grpc(ready, args))
        finally:
            child.terminate()
            child.wait(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-app", action="store_true", help="skip the in-process run")
    parser.add_argument("--skip-grpc", action="store_true", help="skip the gRPC run")
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return 0
    if not args.skip_app:
        in_process(args.batches, min(args.seconds, 3.0))
    if not args.skip_grpc:
        run_grpc(args)
    for batch in args.batches:
        breakdown(batch, rounds=max(20, 20000 // batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
