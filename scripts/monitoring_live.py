"""A real Prometheus scrapes a real Zumik Secrets server and evaluates the alerting rules
(`make monitoring-live`).

Steps, all on loopback in a scratch directory:

1. ``zumik-secrets dev-setup``, then ``serve`` with ``ZUMIK_METRICS_LISTEN`` and
   ``ZUMIK_HEALTH_LISTEN`` on free ports; wait for SERVING on the health-only listener.
2. A mix of calls over mTLS (verifications, refused calls).
3. ``prometheus`` (Debian package ``prometheus``) with a 1 s scrape and evaluation interval,
   job ``zumik-secrets``, and ``deploy/k8s/monitoring/rules/zumik.rules.yaml``.
4. Checks: the target is up; the call counts Prometheus scraped equal the calls made; every
   rule group evaluated with health ``ok`` and no alert fires on a healthy server; every query
   of the Grafana dashboard is valid PromQL there; then the server is stopped and
   ``ZumikScrapeDown`` turns pending (the rules run on what Prometheus scraped).

Exit status 0 when every check passed. Prints what it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "service"), str(REPO / "clients/python/src")]
RULES = REPO / "deploy/k8s/monitoring/rules/zumik.rules.yaml"
DASHBOARD = REPO / "deploy/k8s/monitoring/grafana-dashboard.json"
CALLS = 7
DENIED = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise SystemExit(f"FAIL timed out waiting for {what} (last: {last!r})")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        return json.loads(response.read())


def _query(prom: str, expr: str) -> Any:
    return _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def _drive(target: str, pki: Path) -> None:
    """CALLS verifications as the gateway, DENIED seals without a claim."""
    import grpc
    from zumik.secrets.v1 import (
        key_service_pb2,
        key_service_pb2_grpc,
        seal_service_pb2,
        seal_service_pb2_grpc,
    )

    from zumik_secrets.server.tls import channel_credentials

    def channel(role: str) -> grpc.Channel:
        creds = channel_credentials(pki / "ca.crt", pki / f"{role}.crt", pki / f"{role}.key")
        return grpc.secure_channel(target, creds)

    with channel("gateway") as ch:
        stub = key_service_pb2_grpc.KeyServiceStub(ch)
        for _ in range(CALLS):
            stub.VerifyApiKey(key_service_pb2.VerifyApiKeyRequest(key="zk_nope"), timeout=5)
    with channel("gateway") as ch:
        seal = seal_service_pb2_grpc.SealServiceStub(ch)
        for _ in range(DENIED):
            try:
                seal.Seal(
                    seal_service_pb2.SealRequest(parent="tenants/t/projects/p", plaintext=b"x"),
                    timeout=5,
                )
            except grpc.RpcError:
                pass
            else:
                raise SystemExit("FAIL a Seal without a claim was not refused")


def _server_ready(health: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(health) as ch:
            answer = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def run(work: Path, prometheus: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZUMIK_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "clients/python/src")])
    env["GRPC_VERBOSITY"] = "ERROR"
    cli = [sys.executable, "-m", "zumik_secrets.cli.main"]
    subprocess.run([*cli, "dev-setup"], cwd=work, env=env, check=True, capture_output=True)
    port, metrics, health, prom_port = (_free_port() for _ in range(4))
    server_env = dict(
        env,
        ZUMIK_DEV="1",
        ZUMIK_LISTEN=f"127.0.0.1:{port}",
        ZUMIK_METRICS_LISTEN=f"127.0.0.1:{metrics}",
        ZUMIK_HEALTH_LISTEN=f"127.0.0.1:{health}",
        ZUMIK_ACCESS_LOG_LEVEL="OFF",
    )
    server = subprocess.Popen([*cli, "serve"], cwd=work, env=server_env, stderr=subprocess.DEVNULL)
    config = work / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "zumik-secrets",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics}"]}],
                    }
                ],
            }
        )
    )
    prom_proc: subprocess.Popen[bytes] | None = None
    try:
        _wait("the server to be SERVING", lambda: _server_ready(f"127.0.0.1:{health}"))
        print(f"server up: grpc 127.0.0.1:{port}, metrics :{metrics}, health :{health}")
        _drive(f"127.0.0.1:{port}", work / "var/dev/pki")
        prom_proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            cwd=work,
            stderr=subprocess.DEVNULL,
        )
        prom = f"http://127.0.0.1:{prom_port}"
        targets = _wait(
            "the scrape target to be up",
            lambda: [
                t
                for t in _get(f"{prom}/api/v1/targets")["data"]["activeTargets"]
                if t["health"] == "up"
            ],
        )
        print(f"PASS target up: {targets[0]['scrapeUrl']}")
        calls_expr = (
            'sum(rpc_server_call_duration_seconds_count{job="zumik-secrets",'
            'rpc_method="zumik.secrets.v1.KeyService/VerifyApiKey"})'
        )
        result = _wait(
            "the calls in Prometheus", lambda: _query(prom, calls_expr)["data"]["result"]
        )
        seen = float(result[0]["value"][1])
        denials = _query(prom, 'sum(zumik_authz_denials_total{job="zumik-secrets"})')
        denied = float(denials["data"]["result"][0]["value"][1])
        if seen != CALLS or denied != DENIED:
            print(f"FAIL scraped {seen} verifications and {denied} denials")
            return 1
        print(f"PASS scraped counts: {seen:.0f} VerifyApiKey calls, {denied:.0f} denials")

        def evaluated() -> list[Any]:
            groups = _get(f"{prom}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            done = all(r.get("lastEvaluation", "").startswith("2") for r in rules)
            return rules if rules and done and all(r["health"] == "ok" for r in rules) else []

        rules = _wait("every rule evaluated with health ok", evaluated)
        time.sleep(3)  # a few evaluations over the scraped series
        firing = [a for a in _get(f"{prom}/api/v1/alerts")["data"]["alerts"]]
        if firing:
            print(f"FAIL alerts on a healthy server: {[a['labels']['alertname'] for a in firing]}")
            return 1
        print(f"PASS {len(rules)} rules evaluated (health ok), no alert on a healthy server")
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        bad = []
        for expr in exprs:
            answer = _query(prom, expr.replace("$__rate_interval", "1m"))
            if answer.get("status") != "success":
                bad.append((expr, answer.get("error")))
        if bad:
            print(f"FAIL dashboard queries Prometheus refuses: {bad}")
            return 1
        print(f"PASS {len(exprs)} dashboard queries accepted")
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

        def scrape_down() -> list[Any]:
            alerts = _get(f"{prom}/api/v1/alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "ZumikScrapeDown"]

        down = _wait("ZumikScrapeDown after the server stopped", scrape_down, timeout=30)
        print(f"PASS server stopped: ZumikScrapeDown is {down[0]['state']}")
        print("monitoring-live: OK")
        return 0
    finally:
        for proc in (prom_proc, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main(argv: list[str] | None = None) -> int:
    """Run the check in a scratch directory (kept with --keep)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prometheus", default=os.environ.get("PROMETHEUS", "prometheus"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    prometheus = shutil.which(args.prometheus)
    if prometheus is None:
        print(f"FAIL {args.prometheus} not found: apt-get install prometheus", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="zumik-monitoring-"))
    try:
        return run(work, prometheus)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
