"""The REST edge: FastAPI routes that convert, call the core, convert back. Nothing else."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from typing import Annotated

import prometheus_client
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as ASGIScope

from service import tracing
from service.api import errors as error_table
from service.api.rest.auth import Auth, Authenticate
from service.api.rest.kb_routes import kb_router
from service.api.rest.models import (
    CheckpointOut,
    ConsistencyOut,
    DeletionIn,
    DeletionList,
    DeletionOut,
    Problem,
    PublicKeyOut,
    ReceiptOut,
)
from service.api.rest.report_routes import reports_router
from service.core import errors
from service.core.deletions import Deletions, Scope, Status
from service.core.kb import KnowledgeBase
from service.core.reports import Reports
from service.ledger.log import Ledger

MAX_BODY = 1 << 20  # 1 MiB
PROBLEM = "application/problem+json"
PROBLEMS = {code: {"model": Problem, "content": {PROBLEM: {}}} for code in (400, 401, 403, 404, 409, 413, 422)}


def problem(status: int, title: str, detail: str, type_: str) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


class BodyLimit:
    """Reject bodies over ``limit`` bytes with 413 before the route reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            resp = problem(
                413,
                "Payload too large",
                f"the body exceeds {self.limit} bytes",
                error_table.problem_type(error_table.lookup(errors.PayloadTooLarge())),
            )
            return await resp(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise errors.PayloadTooLarge(f"the body exceeds {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class ServerSpan:
    """A server span per HTTP request, named by method and route template (never the raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with tracing.tracer.start_as_current_span(f"http {scope['method']}", kind=SpanKind.SERVER) as span:
            await self.app(scope, receive, send)
            route = scope.get("route")
            span.set_attribute("http.route", getattr(route, "path_format", "unmatched"))


def install_error_handlers(app: FastAPI) -> None:
    """problem+json for domain errors, Starlette's HTTP errors and request validation."""

    @app.exception_handler(errors.LetheError)
    async def _lethe_error(_: Request, exc: errors.LetheError) -> JSONResponse:
        m = error_table.lookup(exc)
        resp = problem(m.http, m.title, str(exc), error_table.problem_type(m))
        if m.http == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {400: "Invalid input", 404: "Not found", 405: "Method not allowed"}
        title = titles.get(exc.status_code, "HTTP error")
        return problem(
            exc.status_code, title, str(exc.detail), f"https://lethe.dev/problems/{title.lower().replace(' ', '-')}"
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return problem(422, "Invalid input", detail, "https://lethe.dev/problems/invalid-input")


def create_app(
    deletions: Deletions,
    ledger: Ledger,
    authenticate: Authenticate,
    ready: Callable[[], bool],
    registry: prometheus_client.CollectorRegistry | None = None,
    kb: KnowledgeBase | None = None,
    reports: Reports | None = None,
) -> FastAPI:
    """``kb``: the knowledge-base core; without it the /v1/kb routes are not mounted (nor the
    deletion report's route without ``reports``)."""
    app = FastAPI(title="Lethe", version="1", description="Provable deletion for deployed LLMs.", responses=PROBLEMS)  # type: ignore[arg-type]
    app.state.authenticate = authenticate
    install_error_handlers(app)
    app.include_router(deletions_router(deletions))
    app.include_router(ledger_router(ledger))
    if kb is not None:
        app.include_router(kb_router(kb))
    if reports is not None:
        app.include_router(reports_router(reports))
    app.include_router(ops_router(ready, registry))
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(ServerSpan)
    return app


def deletions_router(deletions: Deletions) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/deletions", status_code=201, response_model=DeletionOut, tags=["deletions"])
    async def submit(
        body: DeletionIn,
        who: Auth,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> DeletionOut:
        # awaits the group commit without holding a thread: the accept path never leaves the event loop
        d, created = await asyncio.wrap_future(deletions.accept(body.to_core(), who, idempotency_key))
        if not created:
            response.status_code = 200
        return DeletionOut.from_core(d)

    @router.get("/v1/deletions", response_model=DeletionList, tags=["deletions"])
    def list_(
        who: Auth,
        status: Status | None = None,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> DeletionList:
        return DeletionList.from_core(deletions.list(who, status, cursor, limit))

    @router.get("/v1/deletions/{subject_request_id}", response_model=DeletionOut, tags=["deletions"])
    def get(subject_request_id: uuid.UUID, who: Auth) -> DeletionOut:
        return DeletionOut.from_core(deletions.get(subject_request_id, who))

    @router.post("/v1/deletions/{subject_request_id}/cancel", response_model=DeletionOut, tags=["deletions"])
    def cancel(subject_request_id: uuid.UUID, who: Auth) -> DeletionOut:
        return DeletionOut.from_core(deletions.cancel(subject_request_id, who))

    return router


def ledger_router(ledger: Ledger) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/ledger/entries/{seq}/receipt", response_model=ReceiptOut, tags=["ledger"])
    def receipt(seq: Annotated[int, Path(ge=1, le=2**62)], who: Auth) -> ReceiptOut:
        who.require(Scope.LEDGER_READ)
        doc = ledger.receipt(seq).to_dict()
        return ReceiptOut(**doc.pop("entry"), **doc)

    @router.get("/v1/ledger/proofs/consistency", response_model=ConsistencyOut, tags=["ledger"])
    def consistency(
        old_size: Annotated[int, Query(ge=1, le=2**62)], new_size: Annotated[int, Query(ge=1, le=2**62)], who: Auth
    ) -> ConsistencyOut:
        who.require(Scope.LEDGER_READ)
        hashes = ledger.consistency_proof(old_size, new_size)
        return ConsistencyOut(
            old_size=old_size, new_size=new_size, hashes=[base64.b64encode(h).decode() for h in hashes]
        )

    @router.get("/v1/ledger/checkpoint", response_model=CheckpointOut, tags=["ledger"])
    def checkpoint(who: Auth) -> CheckpointOut:
        who.require(Scope.LEDGER_READ)
        size, root, note = ledger.latest_checkpoint()
        return CheckpointOut(size=size, root=base64.b64encode(root).decode(), note=note)

    @router.get("/v1/ledger/public-key", response_model=PublicKeyOut, tags=["ledger"])
    def public_key(who: Auth) -> PublicKeyOut:
        who.require(Scope.LEDGER_READ)
        return PublicKeyOut(pem=ledger.public_key_pem, key_name=ledger.key_name, origin=ledger.origin)

    return router


def ops_router(ready: Callable[[], bool], registry: prometheus_client.CollectorRegistry | None) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["ops"], responses={503: {"model": Problem}})
    def readyz() -> Response:
        if ready():
            return JSONResponse({"status": "ready"})
        return problem(503, "Not ready", "a dependency is not ready", "https://lethe.dev/problems/not-ready")

    @router.get("/metrics", tags=["ops"], include_in_schema=False)
    def metrics() -> Response:
        data = prometheus_client.generate_latest(registry or prometheus_client.REGISTRY)
        return Response(data, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    return router
