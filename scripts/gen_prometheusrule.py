"""Write deploy/k8s/monitoring/prometheusrule.yaml from rules/zumik.rules.yaml (`make
monitoring-rules`): the rule file is the source, the PrometheusRule carries the same groups
(indented under ``spec``, comments kept). `make deploy-check` fails if the two differ."""

from __future__ import annotations

import sys
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[1] / "deploy/k8s/monitoring"
SOURCE = MONITORING / "rules/zumik.rules.yaml"
TARGET = MONITORING / "prometheusrule.yaml"

HEADER = """\
# GENERATED from rules/zumik.rules.yaml by `make monitoring-rules` (edit that file, not this):
# the alerting rules for the Prometheus Operator. `make deploy-check` fails if they differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: zumik-secrets
  labels:
    app.kubernetes.io/name: zumik-secrets
spec:
"""


def render(source: str) -> str:
    """The PrometheusRule text for the rule-file text ``source``."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main() -> int:
    """Write the file (or with --check, fail if it is stale)."""
    text = render(SOURCE.read_text(encoding="utf-8"))
    if "--check" in sys.argv[1:]:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run `make monitoring-rules`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
