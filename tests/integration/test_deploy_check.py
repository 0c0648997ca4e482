"""`make deploy-check` (scripts/deploy_check.py) passes on deploy/ and catches injected errors.

The checkers are installed by the Makefile (`make deploy-tools`; `make test` depends on it):
kubectl, kubernetes-validate, yamllint and hadolint in the dev venv, checkov in its own venv
(``.venv-checkov`` or ``$CHECKOV``). Without them the test skips locally and fails under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/deploy_check.py"
BIN = Path(sys.executable).parent
CHECKOV = os.environ.get("CHECKOV", str(REPO / ".venv-checkov/bin/checkov"))
TOOLS = ("kubectl", "kubernetes-validate", "yamllint", "hadolint")


@pytest.fixture(scope="module", autouse=True)
def _tools_installed() -> None:
    missing = [t for t in TOOLS if not (BIN / t).exists()]
    if not Path(CHECKOV).exists():
        missing.append(CHECKOV)
    if not shutil.which("promtool"):
        missing.append("promtool (Debian package prometheus)")
    if missing:
        message = f"deploy checkers missing ({', '.join(missing)}): run `make deploy-tools`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _deploy_check(deploy_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--deploy-dir",
            str(deploy_dir),
            "--out",
            str(out),
            "--bin-dir",
            str(BIN),
            "--checkov",
            CHECKOV,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# checkov alone takes about a minute; under a loaded machine the default 120 s is too short.
@pytest.mark.timeout(600)
def test_deploy_check_passes_on_the_real_manifests(tmp_path: Path) -> None:
    result = _deploy_check(REPO / "deploy", tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy-check: OK" in result.stdout
    assert "FAIL" not in result.stdout
    for step in (
        "kustomize build dev",
        "kustomize build prod",
        "kubernetes-validate --strict prod @ 1.30.0",
        "custom resources prod",
        "zumik consistency prod",
        "custom resources prod: 3 objects",
        "custom resources restore: 1 objects",
        "restore manifests: 1 objects",
        "checkov --framework kubernetes: ",
        "yamllint --strict deploy/",
        "hadolint deploy/Dockerfile",
        "kustomize build monitoring",
        "custom resources monitoring",
        "monitoring consistency",
        "promtool check rules",
        "promtool test rules",
    ):
        assert f"PASS {step}" in result.stdout, step
    # Every checkov skip is a reasoned annotation; nothing else is skipped.
    assert "skipped CKV_K8S_35 (" in result.stdout
    assert "skipped CKV_K8S_43 (" in result.stdout
    assert (tmp_path / "out/all/prod.yaml").exists()


@pytest.mark.timeout(600)
def test_deploy_check_fails_on_injected_errors(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", deploy)
    k8s = deploy / "k8s"
    # checkov: a writable root filesystem (CKV_K8S_22).
    _replace(
        k8s / "base/deployment.yaml",
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
    )
    # kubernetes-validate --strict: a misspelt field.
    _replace(k8s / "overlays/dev/deployment-patch.yaml", "  replicas: 1\n", "  replica: 1\n")
    # Custom resource schema: CloudNativePG wants parameters as strings.
    _replace(
        k8s / "overlays/prod/postgres-cluster.yaml",
        'max_connections: "300"',
        "max_connections: 300",
    )
    # Zumik consistency: the certificate's SPIFFE ID is not the server's in the policy's domain.
    _replace(
        k8s / "overlays/prod/certificate-patch.yaml",
        "spiffe://prod.zumik.internal/svc/zumik-secrets",
        "spiffe://prod.zumik.internal/svc/other",
    )
    # Backups: no retention policy, a five-field cron (CloudNativePG wants six), and a
    # certificate that lacks the fully qualified name of the headless Service.
    _replace(k8s / "overlays/prod/postgres-cluster.yaml", "    retentionPolicy: 30d\n", "")
    _replace(k8s / "overlays/prod/postgres-scheduledbackup.yaml", '"0 0 2 * * *"', '"0 2 * * *"')
    _replace(
        k8s / "overlays/prod/certificate-patch.yaml",
        "    - zumik-secrets-headless.zumik-secrets.svc.cluster.local\n",
        "",
    )
    # hadolint: an unpinned apt-get install.
    _replace(
        deploy / "Dockerfile",
        "USER 10001:10001",
        "USER root\nRUN apt-get install -y curl\nUSER 10001:10001",
    )
    # yamllint: trailing spaces.
    _replace(k8s / "overlays/prod/namespace.yaml", "kind: Namespace", "kind: Namespace   ")
    # Zumik consistency: back to a process per probe.
    _replace(
        k8s / "base/deployment.yaml",
        "          readinessProbe:\n            grpc:\n              port: 8081\n",
        "          readinessProbe:\n            exec:\n"
        '              command: ["zumik-secrets", "health"]\n',
    )
    # Monitoring: the PrometheusRule edited by hand (no longer the rule file), and a promtool
    # fixture expecting an alert the rules do not raise.
    _replace(k8s / "monitoring/prometheusrule.yaml", "for: 5m", "for: 50m")
    _replace(
        k8s / "monitoring/rules/zumik.rules.test.yaml",
        "      - eval_time: 3m\n        alertname: ZumikHighErrorRatio\n        exp_alerts: []",
        "      - eval_time: 3m\n        alertname: ZumikHighErrorRatio\n"
        "        exp_alerts:\n          - exp_labels: {severity: critical}",
    )

    result = _deploy_check(deploy, tmp_path / "out")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "deploy-check: FAILED" in out
    expected_failures = {
        "FAIL kubernetes-validate --strict dev @ 1.30.0": "replica",
        "FAIL custom resources prod": "max_connections",
        "FAIL zumik consistency prod": "Certificate uris",
        "FAIL checkov --framework kubernetes": "CKV_K8S_22",
        "FAIL yamllint --strict deploy/": "trailing-spaces",
        "FAIL hadolint deploy/Dockerfile": "DL3008",
        "FAIL zumik consistency dev": "readinessProbe is not a native grpc probe",
        "FAIL monitoring consistency": "differs from rules/zumik.rules.yaml",
        "FAIL promtool test rules": "ZumikHighErrorRatio",
    }
    for step, detail in expected_failures.items():
        assert step in out, f"{step} missing from:\n{out}"
        section = out.split(step, 1)[1].split("\nPASS ", 1)[0].split("\nFAIL ", 1)[0]
        assert detail in section, f"{step}: {detail!r} not in {section!r}"
    prod_consistency = out.split("FAIL zumik consistency prod", 1)[1].split("\nPASS ", 1)[0]
    assert "no backup.retentionPolicy" in prod_consistency
    assert "lack zumik-secrets-headless.zumik-secrets.svc.cluster.local" in prod_consistency
    custom = out.split("FAIL custom resources prod", 1)[1].split("\nPASS ", 1)[0]
    assert "ScheduledBackup/zumik-pg-nightly: spec.schedule" in custom, custom
    # What was not broken still passes.
    assert "PASS kustomize build prod" in out
    assert "PASS custom resources dev" in out
    assert "PASS promtool check rules" in out
