"""Load generators: separate processes that drive the server and measure each call.

The parent sends a :class:`Job` to every generator over a pipe; each generator runs its share of
the concurrency until the job's end time and answers with a :class:`Share` (latencies of the calls
started inside the measurement window, error counts, its own CPU time in that window). Requests are
pre-serialised bytes, so the generators spend nothing on protobuf.

Kinds:

* ``aio``: grpc.aio, one coroutine per concurrent caller, spread over several channels (port
  sharing balances connections, not requests). The leanest per call (see bench/README.md).
* ``threads``: the sync grpc client, one thread per concurrent caller.
* ``http``: a minimal HTTP/1.1 keep-alive client on asyncio streams over TLS, one connection per
  caller (the OpenBao peer run).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import ssl
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tls:
    """PEM bytes for an mTLS client (``cert``/``key`` empty for server-only TLS)."""

    ca: bytes
    cert: bytes = b""
    key: bytes = b""


@dataclass(frozen=True)
class Job:
    """One measured run for one generator.

    Attributes:
        kind: ``aio``, ``threads`` or ``http``.
        target: ``host:port``.
        tls: Credentials.
        method: gRPC method path, or ``"<HTTP method> <path>"`` for http (in the path ``{n}``
            becomes a name unique to each call, ``{k}`` the index of the request body).
        requests: Request bodies, used round-robin (each caller starts at its own offset).
        metadata: gRPC metadata (or HTTP headers) sent with every call.
        caller_metadata: HTTP only: caller ``i`` also sends ``caller_metadata[(offset + i) %
            len]`` (a credential per caller, as separate clients hold their own).
        concurrency: Callers in this generator.
        channels: Channels (connections) to spread the callers over (grpc kinds).
        start_at: Wall-clock time the callers start.
        warmup: Seconds after ``start_at`` before measuring.
        duration: Seconds measured.
        distinct: Each request is used at most once (cold runs): callers stop when they run out.
        offset: Where this generator starts in ``requests`` (so generators use disjoint parts).
    """

    kind: str
    target: str
    tls: Tls
    method: str
    requests: tuple[bytes, ...]
    metadata: tuple[tuple[str, str], ...] = ()
    caller_metadata: tuple[tuple[tuple[str, str], ...], ...] = ()
    concurrency: int = 1
    channels: int = 1
    start_at: float = 0.0
    warmup: float = 1.0
    duration: float = 5.0
    distinct: bool = False
    offset: int = 0


@dataclass
class Share:
    """What one generator measured."""

    latencies: bytes = b""  # array('d') of seconds
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    exhausted: bool = False
    active_seconds: float = 0.0  # measured time until the last call (distinct runs end early)
    failure: str = ""


class _Window:
    """Measurement window in perf_counter time, and the generator's CPU time inside it."""

    def __init__(self, job: Job) -> None:
        now_wall, now_perf = time.time(), time.perf_counter()
        self.start = job.start_at - now_wall + now_perf
        self.measure = self.start + job.warmup
        self.end = self.measure + job.duration
        self.cpu0 = 0.0
        self.cpu1 = 0.0


def _record(
    win: _Window, lat: array[float], errors: Counter[str], t0: float, t1: float, code: str
) -> bool:
    """Record one call; returns False once the window has ended."""
    if win.measure <= t0 < win.end:
        if code:
            errors[code] += 1
        else:
            lat.append(t1 - t0)
    return t1 < win.end


# -- grpc.aio ---------------------------------------------------------------------------------


async def _aio_job(job: Job) -> Share:
    import grpc

    creds = grpc.ssl_channel_credentials(job.tls.ca, job.tls.key or None, job.tls.cert or None)
    n_channels = max(1, min(job.channels, job.concurrency))
    channels = [grpc.aio.secure_channel(job.target, creds) for _ in range(n_channels)]
    for ch in channels:
        await ch.channel_ready()
    calls = [ch.unary_unary(job.method) for ch in channels]  # type: ignore[call-arg]
    win = _Window(job)
    lat: array[float] = array("d")
    errors: Counter[str] = Counter()
    reqs = job.requests
    md = job.metadata or None
    state: dict[str, Any] = {"next": job.offset, "exhausted": False, "last": win.measure}

    async def caller(i: int) -> None:
        call = calls[i % n_channels]
        pos = job.offset + i
        await asyncio.sleep(max(0.0, win.start - time.perf_counter()))
        perf = time.perf_counter
        while True:
            if job.distinct:
                pos = state["next"]
                if pos >= len(reqs):
                    state["exhausted"] = True
                    return
                state["next"] = pos + 1
            req = reqs[pos % len(reqs)]
            pos += job.concurrency
            t0 = perf()
            code = ""
            try:
                await call(req, metadata=md, timeout=30)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            t1 = perf()
            state["last"] = max(state["last"], min(t1, win.end))
            if not _record(win, lat, errors, t0, t1, code):
                return

    async def cpu_meter() -> None:
        await asyncio.sleep(max(0.0, win.measure - time.perf_counter()))
        win.cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, win.end - time.perf_counter()))
        win.cpu1 = time.process_time()

    meter = asyncio.ensure_future(cpu_meter())
    await asyncio.gather(*(caller(i) for i in range(job.concurrency)))
    if not meter.done():  # distinct requests ran out early
        meter.cancel()
        win.cpu1 = time.process_time()
    for ch in channels:
        await ch.close()  # type: ignore[call-arg]
    return Share(
        latencies=lat.tobytes(),
        ok=len(lat),
        errors=dict(errors),
        cpu_seconds=win.cpu1 - win.cpu0,
        exhausted=bool(state["exhausted"]),
        active_seconds=max(0.0, state["last"] - win.measure),
    )


# -- sync grpc, one thread per caller ---------------------------------------------------------


def _threads_job(job: Job) -> Share:
    import grpc

    creds = grpc.ssl_channel_credentials(job.tls.ca, job.tls.key or None, job.tls.cert or None)
    n_channels = max(1, min(job.channels, job.concurrency))
    channels = [grpc.secure_channel(job.target, creds) for _ in range(n_channels)]
    for ch in channels:
        grpc.channel_ready_future(ch).result(timeout=10)
    calls = [ch.unary_unary(job.method) for ch in channels]  # type: ignore[call-arg]
    win = _Window(job)
    lats = [array("d") for _ in range(job.concurrency)]
    errs: list[Counter[str]] = [Counter() for _ in range(job.concurrency)]
    md = job.metadata or None
    reqs = job.requests

    def caller(i: int) -> None:
        call = calls[i % n_channels]
        pos = job.offset + i
        time.sleep(max(0.0, win.start - time.perf_counter()))
        while True:
            req = reqs[pos % len(reqs)]
            pos += job.concurrency
            t0 = time.perf_counter()
            code = ""
            try:
                call(req, metadata=md, timeout=30)
            except grpc.RpcError as exc:
                code = exc.code().name
            if not _record(win, lats[i], errs[i], t0, time.perf_counter(), code):
                return

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(job.concurrency)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, win.measure - time.perf_counter()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, win.end - time.perf_counter()))
    cpu1 = time.process_time()
    for t in threads:
        t.join()
    for ch in channels:
        ch.close()
    lat = array("d")
    errors: Counter[str] = Counter()
    for a, e in zip(lats, errs, strict=True):
        lat.extend(a)
        errors.update(e)
    return Share(lat.tobytes(), len(lat), dict(errors), cpu1 - cpu0)


# -- HTTP/1.1 keep-alive over TLS -------------------------------------------------------------


def http_path(path: str, index: int, unique: str) -> str:
    """The path of one HTTP call: ``{k}`` is the request body's index, ``{n}`` a unique name."""
    return path.replace("{k}", str(index)).replace("{n}", unique)


async def _http_job(job: Job) -> Share:
    host, port = job.target.rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=job.tls.ca.decode("ascii"))
    verb, path = job.method.split(" ", 1)
    # A path holding "{n}" gets a name no other call of the run uses (a KV put of a new secret,
    # as Seal stores a new one): "<run>-<generator>-<caller>-<count>". "{k}" is the index of the
    # request body sent with it (a GET over 64 paths: 64 empty bodies).
    templated = "{n}" in path

    def build(extra: tuple[tuple[str, str], ...]) -> tuple[list[bytes], list[bytes]]:
        headers = "".join(f"{k}: {v}\r\n" for k, v in (*job.metadata, *extra))
        tails = [
            (
                f" HTTP/1.1\r\nHost: {job.target}\r\n{headers}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("ascii")
            + body
            for body in job.requests
        ]
        heads = [
            f"{verb} {http_path(path, j, '')}".encode("ascii") + t for j, t in enumerate(tails)
        ]
        return tails, heads

    shared = build(())
    run = f"{int(job.start_at * 1000) % 10**9}-{job.offset}"
    win = _Window(job)
    lat: array[float] = array("d")
    errors: Counter[str] = Counter()

    async def caller(i: int) -> None:
        per_caller = job.caller_metadata
        tails, heads = (
            build(per_caller[(job.offset + i) % len(per_caller)]) if per_caller else shared
        )
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
        pos = job.offset + i
        await asyncio.sleep(max(0.0, win.start - time.perf_counter()))
        perf = time.perf_counter
        try:
            count = 0
            while True:
                if templated:
                    count += 1
                    j = pos % len(tails)
                    name = http_path(path, j, f"{run}-{i}-{count}")
                    req = f"{verb} {name}".encode("ascii") + tails[j]
                else:
                    req = heads[pos % len(heads)]
                pos += job.concurrency
                t0 = perf()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head[9:12].decode("ascii")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                code = "" if status == "200" or status == "204" else f"HTTP_{status}"
                if not _record(win, lat, errors, t0, perf(), code):
                    return
        finally:
            writer.close()

    async def cpu_meter() -> None:
        await asyncio.sleep(max(0.0, win.measure - time.perf_counter()))
        win.cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, win.end - time.perf_counter()))
        win.cpu1 = time.process_time()

    await asyncio.gather(cpu_meter(), *(caller(i) for i in range(job.concurrency)))
    return Share(lat.tobytes(), len(lat), dict(errors), win.cpu1 - win.cpu0)


def run_job(job: Job) -> Share:
    """Run one job in this process (used by the generator loop and by tests)."""
    try:
        if job.kind == "aio":
            return asyncio.run(_aio_job(job))
        if job.kind == "http":
            return asyncio.run(_http_job(job))
        if job.kind == "threads":
            return _threads_job(job)
        return Share(failure=f"unknown generator kind {job.kind!r}")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        return Share(failure=f"{type(exc).__name__}: {exc}")


def _generator_loop(conn: multiprocessing.connection.Connection) -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(run_job(job))


class Generators:
    """A pool of long-lived generator processes (spawned once, reused for every run)."""

    def __init__(self, count: int) -> None:
        """Spawn ``count`` generator processes."""
        ctx = multiprocessing.get_context("spawn")
        self._procs: list[Any] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_generator_loop, args=(child,), daemon=True)
            proc.start()
            self._procs.append(proc)
            self._conns.append(parent)

    @property
    def count(self) -> int:
        """Number of generator processes."""
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        """Their process ids."""
        return [p.pid for p in self._procs]

    def run(self, jobs: list[Job]) -> list[Share]:
        """Send one job per generator (at most ``count``) and wait for every share."""
        for conn, job in zip(self._conns, jobs, strict=False):
            conn.send(job)
        return [conn.recv() for conn in self._conns[: len(jobs)]]

    def close(self) -> None:
        """Stop every generator."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def split_concurrency(total: int, generators: int) -> list[int]:
    """Spread ``total`` callers over at most ``generators`` processes, none empty."""
    n = max(1, min(total, generators))
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]
