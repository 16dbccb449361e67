"""Monitoring end to end: a real Prometheus server scraping the session's `lethe serve` stack (REST
/metrics, the gateway's /metrics, both vLLM replicas' /metrics) with the PrometheusRule's alerts
loaded. A deletion shows up in the scraped counters; every PromQL expression of the Grafana
dashboard and of the alerts evaluates on the server; `promtool check metrics` finds nothing to
lint in the REST API's and the gateway's real expositions.

The deletion names a holdout person: never ingested, so it completes (nothing to cut, nothing
served changes) without touching the slices the other end-to-end tests delete and assert on.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service import training
from service.serve import free_port
from tests.deploy.test_monitoring import alerts, dashboard_exprs, write_rules
from tests.integration.conftest import Env
from tests.integration.test_serving_e2e import complete, gateway, submit_rest, wait_final

pytestmark = pytest.mark.slow
RULES = "lethe-rules.yml"


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The value of a one-series result (None: no series)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait(self, what: str, check, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{what}: not within {timeout} s; log: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def env(serving_env) -> Env:
    return serving_env


@pytest.fixture(scope="module")
def prometheus(env, tmp_path_factory) -> Iterator[Prometheus]:
    exe = shutil.which("prometheus")
    assert exe, "prometheus is missing: scripts/tools.sh installs it (Debian's prometheus package)"
    d = tmp_path_factory.mktemp("prometheus")
    write_rules(d / RULES)
    port = free_port()
    replicas = [f"127.0.0.1:{p.port}" for p in env.stack.replicas.values()]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES],
        "scrape_configs": [
            {"job_name": "lethe-api", "static_configs": [{"targets": [f"127.0.0.1:{env.stack.api_port}"]}]},
            {"job_name": "lethe-gateway", "static_configs": [{"targets": [f"127.0.0.1:{env.stack.gateway_port}"]}]},
            {"job_name": "vllm", "static_configs": [{"targets": replicas}]},
        ],
    }
    (d / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = d / "prometheus.log"
    with log.open("wb") as out:
        args = [
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        proc = subprocess.Popen([exe, *args], stdout=out, stderr=subprocess.STDOUT)
    p = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        p.wait("Prometheus ready", lambda: _ok(f"{p.url}/-/ready"))
        targets = 2 + len(replicas)
        p.wait("every target scraped and up", lambda: p.value("sum(up)") == targets and p.value("count(up)") == targets)
        yield p
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_promtool_finds_nothing_to_lint_in_the_served_metrics(env):
    exe = shutil.which("promtool")
    assert exe
    for port in (env.stack.api_port, env.stack.gateway_port):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        assert "lethe_" in text
        out = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stdout + out.stderr) == (0, ""), text


def test_a_deletion_reaches_prometheus_and_every_dashboard_and_alert_expression_evaluates(env, prometheus):
    e, p = env, prometheus
    completed = 'max(lethe_deletion_requests_total{status="completed"})'
    forgotten = "max(lethe_time_to_forget_seconds_count)"
    before = (p.value(completed), p.value(forgotten))
    assert None not in before
    complete(gateway(e), e.corpus.trained[0].probe()[0])  # a LoRA request: samples for vLLM's latency and LoRA series
    rid = str(uuid.uuid4())
    r = submit_rest(e, rid, e.corpus.holdout[-1])
    assert r.status_code == 201, r.text
    d = wait_final(e, rid)
    assert d["request_status"] == "completed", d["result"]
    p.wait(
        "the deletion in the scraped counters",
        lambda: p.value(completed) > before[0] and p.value(forgotten) > before[1],
    )
    # the serving and capacity figures agree with the database
    reps = {s["metric"]["replica"]: float(s["value"][1]) for s in p.query("max by (replica) (lethe_replica_routable)")}
    assert reps == {"replica-0": 1.0, "replica-1": 1.0}
    lag = p.query(
        "max(lethe_served_generation) - on () group_right () max by (replica) (lethe_replica_acknowledged_generation)"
    )
    assert {s["metric"]["replica"]: float(s["value"][1]) for s in lag} == {"replica-0": 0.0, "replica-1": 0.0}
    plan = training.plan_for(e.db, [])
    depth = {s["metric"]["shard"]: float(s["value"][1]) for s in p.query("max by (shard) (lethe_shard_depth)")}
    assert depth == {str(k): float(s.prefix) for k, s in plan.shards.items()}
    assert p.value("max(lethe_shard_slices)") == e.settings.s3t.slices
    assert p.value('sum(max by (deadline_window) (lethe_deletion_open_requests{deadline_window="overdue"}))') == 0
    # vLLM's own series, from both replicas
    for name, replicas in (
        ("vllm:num_requests_running", 2),
        ("vllm:e2e_request_latency_seconds_bucket", 2),
        ("vllm:lora_requests_info", 1),
    ):
        p.wait(f"{name} scraped", lambda n=name, k=replicas: len(p.query(f"count by (instance) ({n})")) >= k)
    # every expression of the dashboard and of the alerts evaluates (status success, checked in query)
    exprs = dashboard_exprs() + [a["expr"] for a in alerts()]
    empty = [x for x in exprs if not p.query(x)]
    print(f"\n{len(exprs)} expressions evaluated; {len(empty)} with no series now (no data of that kind yet): {empty}")
    assert len(p.query("histogram_quantile(0.5, max by (le) (increase(lethe_time_to_forget_seconds_bucket[1h])))")) == 1

    # the rules loaded in the server evaluate without error
    def evaluated() -> bool:
        rules = [r for g in httpx.get(f"{p.url}/api/v1/rules", timeout=30).json()["data"]["groups"] for r in g["rules"]]
        return len(rules) == len(alerts()) and all(r.get("lastEvaluation", "").startswith("2") for r in rules)

    p.wait("every alert rule evaluated", evaluated)
    groups = httpx.get(f"{p.url}/api/v1/rules", timeout=30).json()["data"]["groups"]
    assert {(r["name"], r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]} == {
        (a["alert"], "ok", "") for a in alerts()
    }
