"""The reconciler sidecar's own HTTP port (a vLLM pod's probes and metrics).

vLLM's port carries its adapter-admin endpoints, so only the gateway may reach it (network
policy); Prometheus scrapes this port instead, which relays vLLM's ``/metrics`` from localhost.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool

from service.serving.reconciler import Reconciler


def create_sidecar_app(reconciler: Reconciler) -> FastAPI:
    app = FastAPI(title="Lethe reconciler", docs_url=None, redoc_url=None, openapi_url=None)
    client = httpx.AsyncClient(base_url=reconciler.url, timeout=5.0)

    @app.get("/healthz")
    async def healthz() -> Response:
        alive = reconciler.thread is not None and reconciler.thread.is_alive()
        return Response(status_code=200 if alive else 503)

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready only when this replica serves the current adapter generation."""
        ok = await run_in_threadpool(reconciler.serving_current)
        return Response(status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            r = await client.get("/metrics")
        except httpx.HTTPError:
            return Response(status_code=503)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))

    return app
