"""OpenAI-compatible gateway: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` for the
model ``lethe``, forwarded to a routable replica under the adapter name it currently serves, and
for ``rag:<upstream model>``, answered by the retrieval proxy (service.rag.proxy).

Only these routes exist, so vLLM's adapter-admin endpoints are never reachable through it.
Requests for prompt log-probabilities are refused: they hand a client a membership attack on the
fine-tuning data, and vLLM's CUDA image has no fix for their LoRA bug (docs/architecture.md); the
probes ask the replicas directly. The upstream's internal adapter
names never reach the client: responses name the model ``lethe``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import prometheus_client
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.rest.app import MAX_BODY, Authenticate, BodyLimit, install_error_handlers, principal, problem
from service.core.deletions import Principal, Scope
from service.gateway.routes import Routes
from service.rag import metrics as rag_metrics
from service.rag.proxy import RagProxy

MODEL = "lethe"
_P = "https://lethe.dev/problems/"


def create_gateway(
    routes: Routes | None, authenticate: Authenticate, upstream_timeout: float = 120.0, rag: RagProxy | None = None
) -> FastAPI:
    """``routes``: the replicas serving ``lethe`` (None: only the retrieval route is served)."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(upstream_timeout, connect=2.0))
    served = ([MODEL] if routes is not None else []) + ([rag.route] if rag is not None else [])

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()
        if rag is not None:
            await rag.aclose()

    app = FastAPI(title="Lethe gateway", version="1", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.authenticate = authenticate
    install_error_handlers(app)

    async def who(principal: Principal = Depends(principal)) -> Principal:  # noqa: B008
        principal.require(Scope.INFERENCE)
        return principal

    @app.get("/v1/models")
    async def models(_: Principal = Depends(who)) -> dict[str, Any]:  # noqa: B008
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "lethe"} for m in served]
        return {"object": "list", "data": data}

    async def forward(path: str, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return problem(400, "Invalid input", "the body is not JSON", _P + "invalid-input")
        if not isinstance(body, dict):
            return problem(400, "Invalid input", "the body must be a JSON object", _P + "invalid-input")
        if rag is not None and body.get("model") == rag.route:
            return await _rag_answer(rag, path, body)
        if body.get("model") != MODEL or routes is None:
            return problem(
                404, "Not found", f"unknown model {body.get('model')!r}; this gateway serves {served}", _P + "not-found"
            )
        if body.get("prompt_logprobs") is not None or (body.get("echo") and body.get("logprobs") is not None):
            return problem(400, "Invalid input", "prompt log-probabilities are not served", _P + "invalid-input")
        targets = routes.targets()
        key = routing_key(body) if any(len(t.models) > 1 for t in targets) else ""  # only a routing table needs it
        for attempt, target in enumerate(targets * 2):  # each replica at most twice
            model = target.model(key)
            upstream = {**body, "model": model}
            try:
                req = client.build_request("POST", f"{target.url}{path}", json=upstream)
                resp = await client.send(req, stream=bool(body.get("stream")))
            except httpx.TimeoutException:
                return problem(504, "Upstream timeout", "the model did not answer in time", _P + "upstream-timeout")
            except httpx.TransportError:
                continue  # replica down: the next one (its reconciler takes it out of routing)
            if resp.status_code == 404 and attempt == 0:  # its adapter was swapped a moment ago
                await resp.aclose()
                routes.refresh()
                continue
            if body.get("stream"):
                return StreamingResponse(
                    _renamed_stream(resp, model),
                    status_code=resp.status_code,
                    media_type=resp.headers.get("content-type"),
                )
            await resp.aread()
            try:
                doc = resp.json()
            except ValueError:
                return problem(502, "Bad upstream answer", "the model's answer was not JSON", _P + "bad-upstream")
            if isinstance(doc, dict) and doc.get("model") == model:
                doc["model"] = MODEL
            return JSONResponse(doc, status_code=resp.status_code)
        return problem(502, "No replica", "no routable model replica answered", _P + "no-replica")

    @app.post("/v1/completions")
    async def completions(request: Request, _: Principal = Depends(who)) -> Response:  # noqa: B008
        return await forward("/v1/completions", request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, _: Principal = Depends(who)) -> Response:  # noqa: B008
        return await forward("/v1/chat/completions", request)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if routes is None or routes.targets():
            return JSONResponse({"status": "ready"})
        return problem(503, "Not ready", "no routable replica", _P + "not-ready")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            prometheus_client.generate_latest(rag_metrics.REGISTRY), media_type=prometheus_client.CONTENT_TYPE_LATEST
        )

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app


def routing_key(body: dict[str, Any]) -> str:
    """What picks a routing table's shard: the caller's ``user`` if given (one user, one shard),
    else the prompt or the messages (the same request always meets the same adapter)."""
    if isinstance(body.get("user"), str) and body["user"]:
        return "user:" + body["user"]
    return json.dumps(body.get("prompt", body.get("messages")), sort_keys=True, default=str)


async def _rag_answer(rag: RagProxy, path: str, body: dict[str, Any]) -> Response:
    answer = await rag.complete(path, body)  # domain errors become problems (install_error_handlers)
    if answer.stream is not None:
        return StreamingResponse(answer.stream, media_type="text/event-stream")
    return JSONResponse(answer.document, status_code=answer.status)


async def _renamed_stream(resp: httpx.Response, internal: str) -> AsyncIterator[bytes]:
    """Pass server-sent events through, naming the model ``lethe`` instead of the internal adapter."""
    needle, repl = json.dumps(internal).encode(), json.dumps(MODEL).encode()
    try:
        async for line in resp.aiter_lines():
            yield (
                line.encode()
                .replace(b'"model":' + needle, b'"model":' + repl)
                .replace(b'"model": ' + needle, b'"model": ' + repl)
                + b"\n"
            )
    finally:
        await resp.aclose()
