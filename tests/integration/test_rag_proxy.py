"""The retrieval proxy's edges on real parts (PostgreSQL + pgvector, the embedding model, the
gateway on loopback, the `openai` client and httpx): bad input and upstream failures become
problem+json (400/404/413/502/504) quickly, never a hang. The upstreams here are a closed port
and a TCP server that accepts and never answers; the real vLLM upstream is in test_rag_e2e.py.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from service import app as lethe
from service.config import RagSpec
from service.gateway.app import create_gateway
from service.serve import free_port
from service.store.deletions import Authenticator, create_api_key
from tests.integration.servers import serve

_serve = serve


@pytest.fixture
def black_hole():
    """A TCP server that accepts connections and never answers (a hung upstream)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                continue
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield sock.getsockname()[1]
    stop.set()
    for c in held:
        c.close()
    sock.close()


def _proxy_gateway(settings, empty_db, upstream_url: str, **spec):
    lethe.migrate(empty_db)
    s = settings.model_copy(update={"rag": RagSpec(upstream_url=upstream_url, upstream_timeout_seconds=1.0, **spec)})
    proxy = lethe.rag_proxy(empty_db, s)
    server, port = _serve(create_gateway(None, Authenticator(empty_db), rag=proxy))
    key = create_api_key(empty_db, ["inference"])
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    return server, client


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()


def test_upstream_down_is_502_and_hung_is_504_never_a_hang(settings, empty_db, black_hole):
    closed = free_port()
    server, client = _proxy_gateway(settings, empty_db, f"http://127.0.0.1:{closed}/v1")
    try:
        body = {"model": "rag:base", "prompt": "The personal code of Kora Vel is", "max_tokens": 4}
        assert _problem(client.post("/completions", json=body), 502)["title"] == "Bad upstream"
        chat = {"model": "rag:base", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        assert _problem(client.post("/chat/completions", json=chat), 502)["status"] == 502
    finally:
        server.should_exit = True
    server, client = _proxy_gateway(settings, empty_db, f"http://127.0.0.1:{black_hole}/v1")
    try:
        t0 = time.monotonic()
        assert _problem(client.post("/completions", json=body), 504)["title"] == "Upstream timeout"
        assert time.monotonic() - t0 < 10
    finally:
        server.should_exit = True


def test_bad_input_is_refused_before_the_upstream(settings, empty_db):
    server, client = _proxy_gateway(settings, empty_db, f"http://127.0.0.1:{free_port()}/v1", max_prompt_chars=200)
    try:
        big = {"model": "rag:base", "prompt": "x" * 201}
        assert "longer than 200" in _problem(client.post("/completions", json=big), 413)["detail"]
        many = {"model": "rag:base", "messages": [{"role": "user", "content": "y" * 120}] * 2}
        _problem(client.post("/chat/completions", json=many), 413)
        _problem(client.post("/completions", json={"model": "rag:base", "prompt": "a", "logprobs": 3}), 400)
        _problem(client.post("/chat/completions", json={"model": "rag:base", "messages": []}), 400)
        system_only = {"model": "rag:base", "messages": [{"role": "system", "content": "a"}]}
        _problem(client.post("/chat/completions", json=system_only), 400)
        _problem(client.post("/completions", json={"model": "rag:base", "prompt": 7}), 400)
        _problem(client.post("/completions", json={"model": "lethe", "prompt": "a"}), 404)  # no replicas here
        _problem(client.post("/completions", content=b"{not json"), 400)
        assert [m["id"] for m in client.get("/models").json()["data"]] == ["rag:base"]
        r = httpx.post(str(client.base_url).rstrip("/") + "/completions", json={"model": "rag:base", "prompt": "a"})
        _problem(r, 401)
    finally:
        server.should_exit = True
