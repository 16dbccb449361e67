"""Who is calling: the bearer token checked by the API-key authenticator, as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from service.core.deletions import Principal


class Authenticate(Protocol):
    """Token → principal (raises Unauthenticated); ``cached`` answers without I/O or returns None."""

    def __call__(self, token: str | None) -> Principal: ...
    def cached(self, token: str | None) -> Principal | None: ...


async def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """On the event loop when the key was checked recently; a lookup goes to a worker thread."""
    token = authorization.removeprefix("Bearer ").strip() if authorization else None
    authenticate: Authenticate = request.app.state.authenticate
    hit = authenticate.cached(token)
    return hit if hit is not None else await run_in_threadpool(authenticate, token)


Auth = Annotated[Principal, Depends(principal)]
