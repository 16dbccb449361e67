"""The Kubernetes manifests (deploy/k8s) and the images (deploy/docker), checked offline.

There is no cluster and no Docker engine on this machine or in CI: the images are not built here.
Each overlay is rendered with ``kubectl kustomize``; every built-in object is validated against the
OpenAPI schema of one Kubernetes version (kubernetes-validate, strict), every custom resource
against the hand-written subset of its CRD in ``schemas/``. Then what the manifests must do:
locked-down containers, probes, GPU placement, who may reach vLLM's port (a small NetworkPolicy
evaluator), the KEDA target, references that resolve, the ``lethe`` commands the pods run. checkov
lints the rendered overlays and the Dockerfiles; its findings must be waived in
``deploy/checkov-waivers.yaml`` with a reason.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ["dev-cpu", "gpu"]
SCHEMAS = Path(__file__).with_name("schemas")
# The Kubernetes version the manifests target (kubernetes-validate bundles its schemas).
K8S_VERSION = "1.33.0"
NAMESPACE = "lethe"
UID = 10001
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}
LETHE_IMAGE = "ghcr.io/lethe/lethe"
# Secrets the gpu overlay expects the operator to create (deploy/README.md), absent from its render.
OPERATOR_SECRETS = {"dev-cpu": set(), "gpu": {"lethe-secrets"}}

Doc = dict[str, Any]


# ── rendering ────────────────────────────────────────────────────────────────────────────────


@functools.cache
def _rendered_text(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: scripts/tools.sh installs it"
    proc = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(overlay: str) -> list[Doc]:
    """The overlay's objects, parsed afresh (tests may not share mutable state)."""
    docs = [d for d in yaml.safe_load_all(_rendered_text(overlay)) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)
    return docs


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> list[Doc]:
    return render(overlay)


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@dataclass
class Workload:
    obj: Doc

    @property
    def name(self) -> str:
        return f"{self.obj['kind']}/{self.obj['metadata']['name']}"

    @property
    def template(self) -> Doc:
        return self.obj["spec"]["template"]

    @property
    def pod(self) -> Doc:
        return self.template["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return self.template["metadata"].get("labels", {})

    @property
    def component(self) -> str:
        return self.labels.get("app.kubernetes.io/component", "")

    def containers(self, init: bool = True) -> list[Doc]:
        return (self.pod.get("initContainers", []) if init else []) + self.pod["containers"]

    def container(self, name: str) -> Doc:
        (c,) = [c for c in self.pod["containers"] if c["name"] == name]
        return c

    def ports(self) -> dict[str, int]:
        ports = [p for c in self.pod["containers"] for p in c.get("ports", [])]
        return {p["name"]: p["containerPort"] for p in ports if "name" in p}


def workloads(docs: list[Doc]) -> list[Workload]:
    return [Workload(d) for d in docs if d["kind"] in WORKLOAD_KINDS]


def by_component(docs: list[Doc], component: str) -> Workload:
    (w,) = [w for w in workloads(docs) if w.component == component]
    return w


def config(docs: list[Doc]) -> dict[str, str]:
    (cm,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("lethe-config")]
    return cm["data"]


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict (``--flag`` alone maps to "")."""
    out = {}
    for a in args:
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v
    return out


# ── schemas ──────────────────────────────────────────────────────────────────────────────────


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) → the vendored schema, keyed by the constants the schema itself holds."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        props = schema["properties"]
        out[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return out


def test_every_object_validates_against_its_schema(docs: list[Doc]) -> None:
    errors = []
    for d in docs:
        what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        schema = crd_schemas().get((d.get("apiVersion", ""), d.get("kind", "")))
        try:
            if schema is not None:
                jsonschema.Draft202012Validator(schema).validate(d)
            else:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{what} ({d.get('apiVersion')}): neither a Kubernetes {K8S_VERSION} kind nor in schemas/")
        except jsonschema.ValidationError as e:
            errors.append(f"{what}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The validator itself: a typo in a security context is an error, not an ignored field."""
    w = by_component(render("dev-cpu"), "api")
    c = w.container("api")
    c["securityContext"]["readOnlyRootFileSystem"] = c["securityContext"].pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(w.obj, K8S_VERSION, strict=True)
    so = one(render("dev-cpu"), "ScaledObject", "training-worker")
    so["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 1  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")])


def test_objects_live_in_the_lethe_namespace_with_the_standard_labels(docs: list[Doc]) -> None:
    for d in docs:
        meta = d["metadata"]
        if d["kind"] == "Namespace":
            assert meta["name"] == NAMESPACE
            continue
        assert meta.get("namespace") == NAMESPACE, d["kind"] + "/" + meta["name"]
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "lethe", d["kind"] + "/" + meta["name"]
    components = {w.component for w in workloads(docs)}
    assert {"api", "gateway", "worker", "training-worker", "vllm"} <= components
    for w in workloads(docs):
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= w.labels.keys(), w.name
        assert w.labels.get("app.kubernetes.io/part-of") == "lethe", w.name


# ── containers ───────────────────────────────────────────────────────────────────────────────


def test_every_container_runs_locked_down(docs: list[Doc]) -> None:
    for w in workloads(docs):
        pod_sc = w.pod.get("securityContext", {})
        assert w.pod.get("automountServiceAccountToken") is False, w.name
        assert not any(w.pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), w.name
        for c in w.containers():
            where = f"{w.name} container {c['name']}"
            sc = c.get("securityContext", {})
            eff = {**pod_sc, **sc}
            assert eff.get("runAsNonRoot") is True, where
            assert eff.get("runAsUser") == UID, where
            assert eff.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") in (None, False), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= res.get("requests", {}).keys(), where
            assert {"cpu", "memory"} <= res.get("limits", {}).keys(), where
            image = c["image"]
            assert re.fullmatch(r"[^:@\s]+:[\w][\w.-]*", image) and not image.endswith(":latest"), where + ": " + image
            assert c.get("imagePullPolicy") == "Always", where


def test_processes_have_writable_tmp_and_home_on_a_read_only_root(docs: list[Doc]) -> None:
    for w in workloads(docs):
        empty_dirs = {v["name"] for v in w.pod.get("volumes", []) if "emptyDir" in v}
        for c in w.containers(init=False):
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for path in ("/tmp", "/home/lethe"):
                assert path in mounts and mounts[path]["name"] in empty_dirs, f"{w.name} {c['name']}: {path}"
                assert not mounts[path].get("readOnly"), f"{w.name} {c['name']}: {path}"


def _resolve_port(w: Workload, c: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}[port]


def test_containers_serving_http_have_probes(docs: list[Doc]) -> None:
    for w in workloads(docs):
        for c in w.containers(init=False):
            ports = {p["containerPort"] for p in c.get("ports", [])}
            if not ports:
                continue
            for probe in ("livenessProbe", "readinessProbe"):
                get = c.get(probe, {}).get("httpGet")
                assert get, f"{w.name} {c['name']}: no HTTP {probe}"
                assert _resolve_port(w, c, get["port"]) in ports, f"{w.name} {c['name']}: {probe} port"
    for component in ("api", "gateway"):
        c = by_component(docs, component).container(component)
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_vllm_pods_readiness_is_the_sidecars_readyz(docs: list[Doc]) -> None:
    vllm = by_component(docs, "vllm")
    side = vllm.container("reconciler")
    get = side["readinessProbe"]["httpGet"]
    assert get["path"] == "/readyz" and _resolve_port(vllm, side, get["port"]) == 9090
    assert side["livenessProbe"]["httpGet"]["path"] == "/healthz"
    server = vllm.container("vllm")
    assert server["startupProbe"]["httpGet"]["path"] == "/health"
    assert _resolve_port(vllm, server, server["livenessProbe"]["httpGet"]["port"]) == 8001


def test_vllm_serves_the_base_model_with_runtime_lora_and_the_sidecar_feeds_it(docs: list[Doc]) -> None:
    vllm = by_component(docs, "vllm")
    server, side = vllm.container("vllm"), vllm.container("reconciler")
    cfg = config(docs)

    assert server["command"][-1] == "serve" and server["args"][0] == cfg["LETHE_BASE_MODEL"]
    f = flags(server["args"])
    assert f["port"] == "8001" and f["host"] == "0.0.0.0" and "enable-lora" in f
    assert f["max-lora-rank"] == "32" and f["max-loras"] == cfg["LETHE_SERVING__MAX_LORAS"] == "2"
    assert {e["name"]: e.get("value") for e in server["env"]}["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"

    s = flags(side["args"])
    assert side["args"][0] == "reconciler"
    assert s["vllm-url"] == "http://127.0.0.1:8001" and s["port"] == "9090"
    assert s["replica-id"] == "$(POD_NAME)" and s["advertise-url"] == "http://$(POD_IP):8001"
    env = {e["name"]: e for e in side["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"

    # Adapters: the sidecar writes them into an emptyDir that vLLM reads at the same path.
    volumes = {v["name"]: v for v in vllm.pod["volumes"]}
    side_mounts = {m["mountPath"]: m for m in side["volumeMounts"]}
    server_mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    adapters = s["adapters-dir"]
    assert "emptyDir" in volumes[side_mounts[adapters]["name"]]
    assert side_mounts[adapters]["name"] == server_mounts[adapters]["name"]
    assert not side_mounts[adapters].get("readOnly") and server_mounts[adapters]["readOnly"] is True
    # ...from the workers' shared volume, which the sidecar only reads.
    data = side_mounts[cfg["LETHE_VAR_DIR"]]
    assert data["readOnly"] is True and volumes[data["name"]]["persistentVolumeClaim"]["claimName"] == "lethe-data"
    for component in ("worker", "training-worker"):
        w = by_component(docs, component)
        (mount,) = [m for m in w.containers(init=False)[0]["volumeMounts"] if m["mountPath"] == cfg["LETHE_VAR_DIR"]]
        vols = {v["name"]: v for v in w.pod["volumes"]}
        assert vols[mount["name"]]["persistentVolumeClaim"]["claimName"] == "lethe-data" and not mount.get("readOnly")
    # The base model directory is read-only everywhere it is mounted by a server or worker.
    models = cfg["LETHE_BASE_MODEL"].rsplit("/", 1)[0]
    assert server_mounts[models]["readOnly"] is True


def _gpu(c: Doc) -> str | None:
    return c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")


def _nvidia_toleration(pod: Doc) -> bool:
    return any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_gpu_overlay_places_vllm_and_training_on_gpu_nodes() -> None:
    docs = render("gpu")
    for component, container in (("vllm", "vllm"), ("training-worker", "training-worker")):
        w = by_component(docs, component)
        c = w.container(container)
        assert _gpu(c) == "1" and c["resources"]["requests"].get("nvidia.com/gpu") == "1", component
        assert _nvidia_toleration(w.pod), component
        assert w.pod.get("nodeSelector"), component
    assert by_component(docs, "vllm").container("vllm")["image"].startswith("ghcr.io/lethe/vllm-gpu:")
    # Nothing else asks for a GPU (the sidecar, the API, the gateway, the deletions worker).
    others = [(w.name, c["name"]) for w in workloads(docs) for c in w.containers() if _gpu(c)]
    assert sorted(others) == [("Deployment/training-worker", "training-worker"), ("StatefulSet/vllm", "vllm")]


def test_dev_cpu_overlay_uses_no_gpu() -> None:
    for w in workloads(render("dev-cpu")):
        assert not any(_gpu(c) for c in w.containers()), w.name
        assert not _nvidia_toleration(w.pod) and not w.pod.get("nodeSelector"), w.name
        assert not any(c["image"].startswith("ghcr.io/lethe/vllm-gpu") for c in w.containers()), w.name


# ── network policies ─────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Pod:
    labels: Mapping[str, str]
    namespace: str = NAMESPACE
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports


def selects(selector: Doc | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: {} (or absent) selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, values, present = e["key"], e.get("values") or [], e["key"] in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]
        if not ok:
            return False
    return True


def _peer_matches(peer: Doc, src: Pod, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        return True  # pod IPs may fall in a CIDR: count it as reachable (the safe side for "denied")
    ns_sel = peer.get("namespaceSelector")
    ns_ok = src.namespace == policy_ns
    if ns_sel is not None:
        ns_ok = selects(ns_sel, {"kubernetes.io/metadata.name": src.namespace})
    return ns_ok and ("podSelector" not in peer or selects(peer["podSelector"], src.labels))


def _port_matches(rule_ports: list[Doc] | None, dst: Pod, port: int) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in p:
            return True
        n = dst.ports.get(p["port"]) if isinstance(p["port"], str) else p["port"]
        if n is not None and n <= port <= p.get("endPort", n):
            return True
    return False


def can_reach(policies: list[Doc], src: Pod, dst: Pod, port: int) -> bool:
    """Whether NetworkPolicy ingress rules let ``src`` open a TCP connection to ``dst:port``."""
    isolating = []
    for pol in policies:
        spec = pol["spec"]
        types = spec.get("policyTypes") or ["Ingress"] + (["Egress"] if "egress" in spec else [])
        if (
            pol["metadata"]["namespace"] == dst.namespace
            and "Ingress" in types
            and selects(spec["podSelector"], dst.labels)
        ):
            isolating.append(pol)
    if not isolating:
        return True
    for pol in isolating:
        for rule in pol["spec"].get("ingress") or []:
            peers = rule.get("from")
            if _port_matches(rule.get("ports"), dst, port) and (
                not peers or any(_peer_matches(p, src, pol["metadata"]["namespace"]) for p in peers)
            ):
                return True
    return False


def test_the_evaluator_on_known_cases() -> None:
    deny = {"metadata": {"namespace": "n"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    allow_web = {
        "metadata": {"namespace": "n"},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "fe"}}}], "ports": [{"port": "http"}]}],
        },
    }
    web, fe = Pod({"app": "web"}, "n", {"http": 80}), Pod({"role": "fe"}, "n")
    assert can_reach([], fe, web, 80)  # no policy: open
    assert not can_reach([deny], fe, web, 80)
    assert can_reach([deny, allow_web], fe, web, 80)
    assert not can_reach([deny, allow_web], fe, web, 81)
    assert not can_reach([deny, allow_web], Pod({"role": "fe"}, "other"), web, 80)  # podSelector: same namespace only
    assert not can_reach([deny, allow_web], Pod({}, "n"), web, 80)


def _pods(docs: list[Doc]) -> dict[str, Pod]:
    return {w.component: Pod(w.labels, w.obj["metadata"]["namespace"], w.ports()) for w in workloads(docs)}


def test_only_the_gateway_and_the_deletions_worker_reach_vllms_port(docs: list[Doc]) -> None:
    policies = find(docs, "NetworkPolicy")
    pods = _pods(docs)
    vllm = pods["vllm"]
    stranger = Pod({"app": "anything"}, "elsewhere")
    monitoring = Pod({"app.kubernetes.io/name": "prometheus"}, "monitoring")

    assert can_reach(policies, pods["gateway"], vllm, 8001)
    assert can_reach(policies, pods["worker"], vllm, 8001)
    for src in ("api", "training-worker", "vllm"):
        assert not can_reach(policies, pods[src], vllm, 8001), src
    assert not can_reach(policies, stranger, vllm, 8001)
    assert not can_reach(policies, Pod(pods["gateway"].labels, "elsewhere"), vllm, 8001)  # same labels, other namespace
    assert not can_reach(policies, monitoring, vllm, 8001)
    assert not can_reach(policies, pods["gateway"], vllm, 9090)

    assert can_reach(policies, monitoring, vllm, 9090)
    assert not can_reach(policies, stranger, vllm, 9090)

    # The public edges are open on their own ports only; workers take no connections at all.
    assert can_reach(policies, stranger, pods["gateway"], 8000)
    assert can_reach(policies, stranger, pods["api"], 8080) and can_reach(policies, stranger, pods["api"], 50051)
    assert not can_reach(policies, stranger, pods["api"], 9090)
    for worker in ("worker", "training-worker"):
        assert not can_reach(policies, pods["gateway"], pods[worker], 8080), worker


def test_in_cluster_postgresql_is_reachable_from_lethe_and_keda_only() -> None:
    docs = render("dev-cpu")
    policies, pods = find(docs, "NetworkPolicy"), _pods(docs)
    (cluster,) = find(docs, "Cluster")
    pg = Pod({"cnpg.io/cluster": cluster["metadata"]["name"]})
    for src in ("api", "gateway", "worker", "training-worker", "vllm"):
        assert can_reach(policies, pods[src], pg, 5432), src
    assert can_reach(policies, Pod({"app": "keda-operator"}, "keda"), pg, 5432)
    assert can_reach(policies, Pod({"app": "cloudnative-pg"}, "cnpg-system"), pg, 8000)
    assert not can_reach(policies, Pod({"app": "anything"}, "elsewhere"), pg, 5432)


def test_prometheus_may_scrape_every_servicemonitor_endpoint(docs: list[Doc]) -> None:
    """Each ServiceMonitor endpoint → its Service → the pods' port, reachable from `monitoring`."""
    policies, monitoring = find(docs, "NetworkPolicy"), Pod({}, "monitoring")
    monitors = find(docs, "ServiceMonitor")
    assert monitors
    for sm in monitors:
        services = [s for s in find(docs, "Service") if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
        assert services, sm["metadata"]["name"]
        for svc in services:
            for ep in sm["spec"].get("endpoints", []):
                (sp,) = [p for p in svc["spec"]["ports"] if p.get("name") == ep["port"]]
                for w in workloads(docs):
                    if selects({"matchLabels": svc["spec"]["selector"]}, w.labels):
                        target = sp.get("targetPort", sp["port"])
                        port = w.ports()[target] if isinstance(target, str) else target
                        dst = Pod(w.labels, NAMESPACE, w.ports())
                        assert can_reach(policies, monitoring, dst, port), (
                            f"ServiceMonitor {sm['metadata']['name']} scrapes {w.name} on {ep['port']} ({port}), "
                            "which the NetworkPolicies close to the monitoring namespace"
                        )


# ── wiring ───────────────────────────────────────────────────────────────────────────────────


def _secret_files(w: Workload, c: Doc) -> dict[str, tuple[str, str]]:
    """Path → (Secret, key) of every Secret key mounted as a file into container ``c`` (a whole
    volume or one item by subPath). Each such mount is read-only, readable by owner and group only,
    and names its items (a new key in the Secret does not appear in the pods by itself)."""
    vols, files = {v["name"]: v for v in w.pod.get("volumes", [])}, {}
    for m in c.get("volumeMounts", []):
        secret = vols[m["name"]].get("secret")
        if secret is None:
            continue
        where = f"{w.name} {c['name']} {m['mountPath']}"
        assert m.get("readOnly") is True and secret["defaultMode"] & 0o077 == 0o040, where
        assert secret.get("items"), where
        items = {i["path"]: i["key"] for i in secret["items"]}
        if "subPath" in m:
            files[m["mountPath"]] = (secret["secretName"], items[m["subPath"]])
        else:
            files |= {f"{m['mountPath']}/{path}": (secret["secretName"], key) for path, key in items.items()}
    return files


def _reads_lethe_config(c: Doc) -> bool:
    return any(src.get("configMapRef", {}).get("name", "").startswith("lethe-config") for src in c.get("envFrom", []))


def test_keda_scales_the_training_worker_on_its_queue(docs: list[Doc]) -> None:
    (so,) = find(docs, "ScaledObject")
    target = so["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    deployment = one(docs, "Deployment", target["name"])
    w = Workload(deployment)
    assert w.component == "training-worker"
    (c,) = w.containers(init=False)
    assert c["args"][:2] == ["worker", "--queue"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    query = trigger["metadata"]["query"]
    assert "procrastinate_jobs" in query and re.search(r"queue_name\s*=\s*'(\w+)'", query)[1] == c["args"][2]
    assert "'todo'" in query and "'doing'" in query  # a running job keeps its pod
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (conn,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "connection"]
    # KEDA's operator reads the same Secret key the worker's Settings read (LETHE_DATABASE_URL_FILE).
    assert _secret_files(w, c)[config(docs)["LETHE_DATABASE_URL_FILE"]] == (conn["name"], conn["key"])


def _references(docs: list[Doc]) -> Iterator[tuple[str, str, str | None, str]]:
    """(kind, name, key or None, where) for every object another one names."""
    for w in workloads(docs):
        yield "ServiceAccount", w.pod.get("serviceAccountName", "default"), None, w.name
        for v in w.pod.get("volumes", []):
            if "secret" in v:
                for item in v["secret"].get("items", [{"key": None}]):
                    yield "Secret", v["secret"]["secretName"], item["key"], w.name
            if "configMap" in v:
                yield "ConfigMap", v["configMap"]["name"], None, w.name
            if "persistentVolumeClaim" in v:
                yield "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], None, w.name
        for c in w.containers():
            for src in c.get("envFrom", []):
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref in src:
                        yield kind, src[ref]["name"], None, w.name
            for e in c.get("env", []):
                for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if ref in e.get("valueFrom", {}):
                        yield kind, e["valueFrom"][ref]["name"], e["valueFrom"][ref]["key"], w.name
    for auth in find(docs, "TriggerAuthentication"):
        for r in auth["spec"].get("secretTargetRef", []):
            yield "Secret", r["name"], r["key"], "TriggerAuthentication/" + auth["metadata"]["name"]
    for cluster in find(docs, "Cluster"):
        secret = cluster["spec"].get("bootstrap", {}).get("initdb", {}).get("secret")
        if secret:
            yield "Secret", secret["name"], "password", "Cluster/" + cluster["metadata"]["name"]
    for obj in find(docs, "HorizontalPodAutoscaler") + find(docs, "ScaledObject"):
        ref = obj["spec"]["scaleTargetRef"]
        yield ref.get("kind", "Deployment"), ref["name"], None, f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_reference_resolves(overlay: str, docs: list[Doc]) -> None:
    present = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    missing, operator_keys = [], set()
    for kind, name, key, where in _references(docs):
        if kind == "Secret" and name in OPERATOR_SECRETS[overlay]:
            operator_keys.add(key)
            continue
        obj = present.get((kind, name))
        if obj is None:
            missing.append(f"{where} → {kind}/{name}")
        elif key is not None and key not in {**obj.get("data", {}), **obj.get("stringData", {})}:
            missing.append(f"{where} → {kind}/{name} key {key}")
    assert not missing, "\n".join(missing)
    # The Secret the operator creates: deploy/README.md must list every key the pods read.
    readme = (DEPLOY / "README.md").read_text()
    assert all(f"`{k}`" in readme for k in operator_keys - {None}), operator_keys
    # Services and PodDisruptionBudgets select pods that exist, on ports the pods declare.
    for svc in find(docs, "Service"):
        targets = [w for w in workloads(docs) if selects({"matchLabels": svc["spec"]["selector"]}, w.labels)]
        assert targets, "Service/" + svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            for w in targets:
                declared = w.ports() if isinstance(target, str) else set(w.ports().values())
                assert target in declared, f"Service/{svc['metadata']['name']} port {target} on {w.name}"
    # An autoscaler owns its target's replica count: a count in the manifest would reset it on every apply.
    for obj in find(docs, "HorizontalPodAutoscaler") + find(docs, "ScaledObject"):
        target = present[("Deployment", obj["spec"]["scaleTargetRef"]["name"])]
        assert "replicas" not in target["spec"], f"{obj['kind']}/{obj['metadata']['name']}"
    for pdb in find(docs, "PodDisruptionBudget"):
        assert any(selects(pdb["spec"]["selector"], w.labels) for w in workloads(docs)), pdb["metadata"]["name"]


def test_key_files_are_mounted_where_the_settings_look(docs: list[Doc]) -> None:
    """Each Lethe process gets the key files it reads, and no other, read-only at the paths config.env
    gives; every one that reads config.env talks to the database and so gets its URL file."""
    cfg = config(docs)
    db, hmac, ledger, rag = (
        cfg[f"LETHE_{k}_FILE"] for k in ("DATABASE_URL", "HMAC_KEY", "LEDGER_KEY", "RAG__UPSTREAM_API_KEY")
    )
    wanted = {
        ("api", "migrate"): {db},  # the init container: `lethe db migrate`
        ("api", "api"): {db, hmac, ledger},
        ("gateway", "gateway"): {db, hmac, rag},
        ("worker", "worker"): {db, hmac, ledger, rag},
        ("training-worker", "training-worker"): {db, hmac, ledger},
        ("vllm", "reconciler"): {db},
    }
    lethe = {
        (w.component, c["name"]): (w, c) for w in workloads(docs) for c in w.containers() if _reads_lethe_config(c)
    }
    assert lethe.keys() == wanted.keys()
    for where, files in wanted.items():
        mounted = _secret_files(*lethe[where])
        assert mounted.keys() == files, where
        assert mounted[db] == ("lethe-secrets", "database-url"), where
    # The vLLM server itself reads no Lethe setting and gets no key.
    vllm = by_component(docs, "vllm")
    assert _secret_files(vllm, vllm.container("vllm")) == {}


def test_no_secret_reaches_a_container_as_an_environment_variable(docs: list[Doc]) -> None:
    """Secrets are files (above), never environment variables, which every child process inherits
    and which end up in process dumps and debug output (checkov CKV_K8S_35, not waived)."""
    for w in workloads(docs):
        for c in w.containers():
            where = f"{w.name} {c['name']}"
            assert not [src for src in c.get("envFrom", []) if "secretRef" in src], where
            assert not [e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})], where
            assert not {"DATABASE_URL", "LETHE_DATABASE_URL"} & {e["name"] for e in c.get("env", [])}, where


@functools.cache
def _cli() -> Any:
    import typer.main

    from service.cli import app

    return typer.main.get_command(app)


def test_pods_run_existing_lethe_commands_with_valid_options(docs: list[Doc]) -> None:
    """Every Lethe container's arguments parse with the `lethe` CLI (a renamed option fails here)."""
    checked = 0
    for w in workloads(docs):
        for c in w.containers():
            if not c["image"].startswith(LETHE_IMAGE + ":") or "command" in c:
                continue  # its own command (vllm serve, sh -c): not the lethe entrypoint
            args, cmd, path = list(c["args"]), _cli(), ["lethe"]
            while getattr(cmd, "commands", None) is not None:  # a group: descend by the next word
                path.append(args.pop(0))
                assert path[-1] in cmd.commands, f"{w.name} {c['name']}: no command `{' '.join(path)}`"
                cmd = cmd.commands[path[-1]]
            try:
                cmd.make_context(" ".join(path), list(args))
            except Exception as e:  # typer bundles its own click: its errors are not the click package's
                pytest.fail(f"{w.name} {c['name']}: `{' '.join(path + args)}`: {e}")
            checked += 1
    assert checked >= 6


# ── images ───────────────────────────────────────────────────────────────────────────────────


def test_image_versions_follow_the_project_pins() -> None:
    """The images are not built here (no Docker engine on this machine or in CI); their pins are."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = project["project"]["version"]
    (vllm_pin,) = [d for d in project["project"]["optional-dependencies"]["gpu"] if d.startswith("vllm==")]
    vllm_version = vllm_pin.split("==")[1]
    lock_torch = re.search(r"^torch==([\d.]+)", (ROOT / "requirements" / "lock.txt").read_text(), re.M)
    assert lock_torch

    lethe = (DEPLOY / "docker" / "lethe.Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", lethe, re.M) == ["python:3.11-slim-bookworm"] * 2
    assert f'"torch=={lock_torch[1]}"' in lethe and "https://download.pytorch.org/whl/cpu" in lethe
    assert re.search(r"^USER 10001$", lethe, re.M) and 'ENTRYPOINT ["lethe"]' in lethe
    gpu = (DEPLOY / "docker" / "vllm-gpu.Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", gpu, re.M) == [f"vllm/vllm-openai:v{vllm_version}"]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in gpu and re.search(r"^USER 10001$", gpu, re.M)

    for overlay in OVERLAYS:
        for w in workloads(render(overlay)):
            for c in w.containers():
                repo, tag = c["image"].rsplit(":", 1)
                expected = {LETHE_IMAGE: (version, f"{version}-cuda"), "ghcr.io/lethe/vllm-gpu": (vllm_version,)}
                assert tag in expected[repo], f"{overlay} {w.name} {c['name']}: {c['image']}"


# ── checkov ──────────────────────────────────────────────────────────────────────────────────


def test_checkov_finds_nothing_unwaived(tmp_path: Path) -> None:
    checkov = Path(sys.prefix) / "tools" / "checkov" / "bin" / "checkov"  # scripts/tools.sh puts it there
    assert checkov.exists(), f"{checkov} is missing: run scripts/tools.sh"
    files = []
    for overlay in OVERLAYS:
        out = tmp_path / f"{overlay}.yaml"
        out.write_text(_rendered_text(overlay))
        files.append(out)
    files += sorted((DEPLOY / "docker").glob("*.Dockerfile"))
    proc = subprocess.run(
        [
            str(checkov),
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
            "--framework",
            "kubernetes",
            "dockerfile",
            *(a for f in files for a in ("-f", str(f))),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert sorted(r["check_type"] for r in reports) == ["dockerfile", "kubernetes"], proc.stdout[:2000]
    for r in reports:
        assert r["summary"]["parsing_errors"] == 0 and r["summary"]["passed"] > 0, r["summary"]

    waivers = yaml.safe_load((DEPLOY / "checkov-waivers.yaml").read_text())["waivers"]
    for wv in waivers:
        assert {"check", "resource", "reason"} <= wv.keys() and len(wv["reason"].split()) >= 8, wv
    used: set[int] = set()
    unwaived = []
    for r in reports:
        for f in r["results"]["failed_checks"]:
            hits = [
                i
                for i, wv in enumerate(waivers)
                if wv["check"] == f["check_id"] and fnmatch.fnmatchcase(f["resource"], wv["resource"])
            ]
            used.update(hits)
            if not hits:
                unwaived.append(f"{f['check_id']} {f['resource']} ({Path(f['file_path']).name}): {f['check_name']}")
    assert not unwaived, "checkov findings without a waiver in deploy/checkov-waivers.yaml:\n" + "\n".join(unwaived)
    stale = [f"{wv['check']} {wv['resource']}" for i, wv in enumerate(waivers) if i not in used]
    assert not stale, f"waivers that match no finding any more (remove them): {stale}"
