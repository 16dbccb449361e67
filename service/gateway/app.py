"""OpenAI-compatible gateway: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` for the
model ``lethe``, forwarded to a routable replica under the adapter name it currently serves
(service.gateway.forward), and for ``rag:<upstream model>``, answered by the retrieval proxy
(service.rag.proxy).

Only these routes exist, so vLLM's adapter-admin endpoints are never reachable through it.
Requests for prompt log-probabilities are refused: they hand a client a membership attack on the
fine-tuning data, and vLLM's CUDA image has no fix for their LoRA bug (docs/architecture.md); the
probes ask the replicas directly. The upstream's internal adapter names never reach the client:
responses name the model ``lethe``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import prometheus_client
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.rest.app import MAX_BODY, BodyLimit, install_error_handlers, problem
from service.api.rest.auth import Authenticate, principal
from service.core.deletions import Principal, Scope
from service.gateway.forward import MODEL, Forwarder, Refusal
from service.gateway.routes import Routes
from service.rag import metrics as rag_metrics
from service.rag.proxy import RagProxy

_P = "https://lethe.dev/problems/"


def create_gateway(
    routes: Routes | None, authenticate: Authenticate, upstream_timeout: float = 120.0, rag: RagProxy | None = None
) -> FastAPI:
    """``routes``: the replicas serving ``lethe`` (None: only the retrieval route is served)."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(upstream_timeout, connect=2.0))
    forwarder = Forwarder(routes, client) if routes is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()
        if rag is not None:
            await rag.aclose()

    app = FastAPI(title="Lethe gateway", version="1", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.authenticate = authenticate
    install_error_handlers(app)
    app.include_router(inference_router(forwarder, rag))
    app.include_router(ops_router(lambda: routes is None or bool(routes.targets())))
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app


async def inference_caller(who: Principal = Depends(principal)) -> Principal:  # noqa: B008
    who.require(Scope.INFERENCE)
    return who


def inference_router(forwarder: Forwarder | None, rag: RagProxy | None) -> APIRouter:
    """The OpenAI routes: each reads the body, picks the retrieval proxy or the replicas, forwards."""
    router = APIRouter(dependencies=[Depends(inference_caller)])
    served = ([MODEL] if forwarder is not None else []) + ([rag.route] if rag is not None else [])

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "lethe"} for m in served]
        return {"object": "list", "data": data}

    async def route(path: str, request: Request) -> Response:
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        if rag is not None and body.get("model") == rag.route:
            return await _rag_answer(rag, path, body)
        if body.get("model") != MODEL or forwarder is None:
            detail = f"unknown model {body.get('model')!r}; this gateway serves {served}"
            return problem(404, "Not found", detail, _P + "not-found")
        if asks_prompt_logprobs(body):
            return problem(400, "Invalid input", "prompt log-probabilities are not served", _P + "invalid-input")
        try:
            return await forwarder.send(path, body)
        except Refusal as r:
            return problem(r.status, r.title, r.detail, _P + r.slug)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await route("/v1/completions", request)

    @router.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await route("/v1/chat/completions", request)

    return router


def ops_router(ready: Callable[[], bool]) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> Response:
        if ready():
            return JSONResponse({"status": "ready"})
        return problem(503, "Not ready", "no routable replica", _P + "not-ready")

    @router.get("/metrics")
    async def metrics() -> Response:
        data = prometheus_client.generate_latest(rag_metrics.REGISTRY)
        return Response(data, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    return router


def asks_prompt_logprobs(body: dict[str, Any]) -> bool:
    """Prompt log-probabilities, asked directly or as echoed log-probabilities."""
    return body.get("prompt_logprobs") is not None or bool(body.get("echo") and body.get("logprobs") is not None)


async def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return problem(400, "Invalid input", "the body is not JSON", _P + "invalid-input")
    if not isinstance(body, dict):
        return problem(400, "Invalid input", "the body must be a JSON object", _P + "invalid-input")
    return body


async def _rag_answer(rag: RagProxy, path: str, body: dict[str, Any]) -> Response:
    answer = await rag.complete(path, body)  # domain errors become problems (install_error_handlers)
    if answer.stream is not None:
        return StreamingResponse(answer.stream, media_type="text/event-stream")
    return JSONResponse(answer.document, status_code=answer.status)
