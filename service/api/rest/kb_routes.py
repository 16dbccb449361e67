"""The knowledge base over REST: convert, call service.core.kb, convert back. Errors are the
app's problem+json handlers' (a batch with bad documents: 400 listing each by position)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from service.api.rest.auth import Auth
from service.api.rest.models import DOCUMENT_ID, AddOut, DocumentList, DocumentsIn, DocumentWithText
from service.core.kb import MAX_DOCUMENTS_PER_CALL, KnowledgeBase

DocumentId = Annotated[str, Path(min_length=1, max_length=256, pattern=DOCUMENT_ID)]


def kb_router(kb: KnowledgeBase) -> APIRouter:
    router = APIRouter(prefix="/v1/kb", tags=["knowledge base"])

    # Plain ``def`` routes: chunking, embedding and SQL run on a worker thread, off the event loop.
    @router.post("/documents", status_code=201, response_model=AddOut)
    def add(body: DocumentsIn, who: Auth) -> AddOut:
        r = kb.add([d.to_core() for d in body.documents], who)
        return AddOut(inserted=r.inserted, unchanged=r.unchanged)

    @router.get("/documents", response_model=DocumentList)
    def list_(
        who: Auth,
        cursor: Annotated[str | None, Query(max_length=256, pattern=DOCUMENT_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_DOCUMENTS_PER_CALL)] = 50,
    ) -> DocumentList:
        return DocumentList.from_core(kb.list(who, cursor, limit))

    @router.get("/documents/{document_id}", response_model=DocumentWithText)
    def get(document_id: DocumentId, who: Auth) -> DocumentWithText:
        return DocumentWithText.from_core(kb.get(document_id, who))

    @router.delete("/documents/{document_id}", status_code=204, response_class=Response)
    def delete(document_id: DocumentId, who: Auth) -> Response:
        kb.delete(document_id, who)
        return Response(status_code=204)

    return router
