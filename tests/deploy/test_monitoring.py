"""Monitoring as code: the PrometheusRule's alerts pass `promtool check rules` and their unit tests
(`promtool test rules`, a firing and a quiet case for every alert), each alert has a runbook in
docs/operations.md, the ServiceMonitors scrape what the Services expose, and the Grafana
dashboard is valid JSON whose every PromQL expression parses (as a recording rule, by promtool).
The same expressions are evaluated against a live Prometheus in tests/integration/test_prometheus_e2e.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "k8s" / "base" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "lethe-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lethe.json"
OPERATIONS = ROOT / "docs" / "operations.md"
ALERTS = {
    "LetheDeletionDeadlineAtRisk",
    "LetheDeletionPendingTooLong",
    "LetheReplicaNotAcknowledging",
    "LetheLedgerCheckpointStale",
    "LetheDeletionCapacityLow",
    "LetheVerificationFailed",
    "LetheRagGateBlockingSpike",
    "LetheRolloutWaiting",
}
# Grafana's interval variables, given concrete values wherever an expression is evaluated outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}


def rule_groups() -> list[dict[str, Any]]:
    """spec.groups of the PrometheusRule: the single source of the rules."""
    doc = yaml.safe_load(RULE.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    return doc["spec"]["groups"]


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def write_rules(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard, Grafana's variables replaced by concrete values."""
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value).replace("${" + var[1:] + "}", value)
            out.append(expr)
    return out


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: scripts/tools.sh installs it (Debian's prometheus package)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_rules_pass_promtool_check(tmp_path):
    out = promtool("check", "rules", str(write_rules(tmp_path / "lethe-rules.yml")))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_rule_unit_tests_pass(tmp_path):
    test_doc = yaml.safe_load(RULE_TESTS.read_text())
    assert test_doc["rule_files"] == ["lethe-rules.yml"]
    write_rules(tmp_path / "lethe-rules.yml")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    out = promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_tested_firing_and_quiet_and_has_a_runbook():
    found = {a["alert"] for a in alerts()}
    assert found == ALERTS
    cases: dict[str, dict[str, int]] = {name: {"firing": 0, "quiet": 0} for name in found}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]]["firing" if case.get("exp_alerts") else "quiet"] += 1
    assert all(c["firing"] and c["quiet"] for c in cases.values()), cases
    docs = OPERATIONS.read_text()
    runbooks = docs.split("\n## Runbooks\n", 1)[1]
    headings = set(re.findall(r"^### (\S+)$", runbooks, flags=re.M))
    for a in alerts():
        name = a["alert"]
        assert a["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook_url"} <= set(a["annotations"]), name
        assert a["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        assert name in headings, f"docs/operations.md has no '### {name}' under '## Runbooks'"


def test_service_monitors_scrape_the_services_metrics_ports():
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {"servicemonitor.yaml", "prometheusrule.yaml"}
    monitors = {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: m
        for m in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text())
    }
    assert set(monitors) == {"api", "gateway", "vllm"}
    for component, port in (("api", "http"), ("gateway", "http"), ("vllm", "metrics")):
        m = monitors[component]
        assert m["apiVersion"] == "monitoring.coreos.com/v1" and m["kind"] == "ServiceMonitor"
        assert m["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/part-of": "lethe",
            "app.kubernetes.io/component": component,
        }
        assert [(e["port"], e["path"]) for e in m["spec"]["endpoints"]] == [(port, "/metrics")]


def test_monitoring_kustomization_renders():
    assert shutil.which("kubectl"), "kubectl is missing: scripts/tools.sh installs it"
    out = subprocess.run(["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout))
    assert kinds == ["PrometheusRule", "ServiceMonitor", "ServiceMonitor", "ServiceMonitor"]


def test_dashboard_is_valid_and_its_expressions_parse(tmp_path):
    d = json.loads(DASHBOARD.read_text())
    assert d["schemaVersion"] >= 39 and d["uid"] and d["title"]
    (var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] and t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
    exprs = dashboard_exprs()
    text = "\n".join(exprs)
    for metric in (
        "lethe_deletion_requests_total",
        "lethe_time_to_forget_seconds_bucket",
        "lethe_deletion_open_requests",
        "lethe_deletion_oldest_pending_age_seconds",
        "lethe_shard_depth",
        "lethe_replica_acknowledged_generation",
        "lethe_ledger_checkpoint_age_seconds",
        "lethe_rag_gate_blocks_total",
        "vllm:num_requests_running",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:lora_requests_info",
    ):
        assert metric in text, metric
    assert "$" not in text  # every variable has a concrete value outside Grafana
    # promtool has no expression check of its own: each expression becomes a recording rule
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
