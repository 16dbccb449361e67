"""A deletion's report over REST: the HTML page (or its JSON twin, ``?format=json``)."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

from service.api.rest.auth import Auth
from service.core.reports import Reports
from service.report import page


def reports_router(reports: Reports) -> APIRouter:
    router = APIRouter(tags=["deletions"])

    # a plain ``def``: the evidence's queries and the plots run on a worker thread
    @router.get(
        "/v1/deletions/{subject_request_id}/report",
        response_class=HTMLResponse,
        responses={200: {"content": {"text/html": {}, "application/json": {}}}},
    )
    def report(subject_request_id: uuid.UUID, who: Auth, format: Literal["html", "json"] = "html") -> Response:
        """What the deletion did and the evidence that it holds, as one self-contained page: no
        identity, record or record id on it."""
        doc = reports.get(subject_request_id, who)
        if format == "json":
            return JSONResponse(doc)
        return HTMLResponse(page.render(doc), headers={"Content-Security-Policy": page.CSP})

    return router
