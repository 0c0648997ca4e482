"""The load generator's HTTP/1.1 client (the OpenBao peers' driver) against a local TLS server.

It checks what the peer rows depend on: a KV put names a new path on every call (``{n}``), a KV
get cycles the prepared paths (``{k}``), and each caller (one keep-alive connection) presents its
own token. No OpenBao here: a small asyncio server records what arrives.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import Job, Tls, run_job
from zumik_secrets.cli.dev_pki import generate_dev_pki


class Recorder:
    """A TLS HTTP/1.1 keep-alive server on 127.0.0.1 in its own thread: records path and token."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.calls: list[tuple[int, str, str]] = []  # (connection, path, token)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = id(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("ascii").split("\r\n")
                path = lines[0].split(" ")[1]
                fields = dict(x.split(": ", 1) for x in lines[1:] if ": " in x)
                await reader.readexactly(int(fields.get("Content-Length", "0")))
                self.calls.append((conn, path, fields.get("X-Vault-Token", "")))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[Recorder, Tls]]:
    pki = generate_dev_pki(tmp_path / "pki")
    rec = Recorder(pki.server.cert, pki.server.key)
    try:
        yield rec, Tls(pki.ca_cert.read_bytes())
    finally:
        rec.stop()


def _job(rec: Recorder, tls: Tls, method: str, requests: tuple[bytes, ...], **kw: object) -> Job:
    return Job(
        kind="http",
        target=f"127.0.0.1:{rec.port}",
        tls=tls,
        method=method,
        requests=requests,
        concurrency=3,
        channels=3,
        start_at=time.time() + 0.3,
        warmup=0.1,
        duration=0.4,
        **kw,  # type: ignore[arg-type]
    )


def test_puts_name_a_new_path_per_call_and_callers_keep_their_token(
    recorder: tuple[Recorder, Tls],
) -> None:
    rec, tls = recorder
    tokens = tuple((("X-Vault-Token", f"token-{i}"),) for i in range(3))
    share = run_job(
        _job(rec, tls, "POST /v1/kv/data/put-{n}", (b'{"a":1}', b'{"b":2}'), caller_metadata=tokens)
    )
    assert share.failure == "" and not share.errors and share.latencies
    paths = [p for _, p, _ in rec.calls]
    assert len(paths) > 10 and len(set(paths)) == len(paths)  # a new secret each time
    assert all(p.startswith("/v1/kv/data/put-") and "{" not in p for p in paths)
    per_connection: dict[int, set[str]] = defaultdict(set)
    for conn, _, token in rec.calls:
        per_connection[conn].add(token)
    assert sorted(t for seen in per_connection.values() for t in seen) == [
        "token-0",
        "token-1",
        "token-2",
    ]  # one token per caller, each caller its own


def test_gets_cycle_the_prepared_paths(recorder: tuple[Recorder, Tls]) -> None:
    rec, tls = recorder
    share = run_job(
        _job(
            rec,
            tls,
            "GET /v1/kv/data/bench-{k}",
            (b"",) * 4,
            metadata=(("X-Vault-Token", "shared"),),
        )
    )
    assert share.failure == "" and not share.errors
    assert {p for _, p, _ in rec.calls} == {f"/v1/kv/data/bench-{i}" for i in range(4)}
    assert {t for _, _, t in rec.calls} == {"shared"}
