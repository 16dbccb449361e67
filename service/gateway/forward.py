"""Forwarding one completion request to the model replicas.

Failover: the routable replicas in round-robin order, each tried at most twice; a replica that
does not answer (down, restarting) is skipped, its reconciler takes it out of routing. A 404 on the
first try means its adapter was swapped a moment ago: the routes are refreshed and the request
goes on. Renaming: the upstream's internal adapter name never reaches the client; answers, streamed
or not, name the public model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import httpx
from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse

from service.gateway.routes import Target

MODEL = "lethe"  # the public model name


class RouteTable(Protocol):
    """The routable replicas (service.gateway.routes.Routes)."""

    def targets(self) -> list[Target]: ...
    def refresh(self) -> None: ...


class Refusal(Exception):
    """No upstream answer to give: the gateway answers with this problem instead (``slug``: the
    problem type's last path segment)."""

    def __init__(self, status: int, title: str, detail: str, slug: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.slug = status, title, detail, slug


def failover_order(targets: Sequence[Target]) -> list[Target]:
    """Each routable replica at most twice, in the round-robin order ``targets`` has."""
    return [*targets, *targets]


def routing_key(body: dict[str, Any]) -> str:
    """What picks a routing table's shard: the caller's ``user`` if given (one user, one shard),
    else the prompt or the messages (the same request always meets the same adapter)."""
    if isinstance(body.get("user"), str) and body["user"]:
        return "user:" + str(body["user"])
    return json.dumps(body.get("prompt", body.get("messages")), sort_keys=True, default=str)


def public_document(doc: Any, internal: str) -> Any:
    """The upstream's answer with the internal adapter name replaced by the public model name."""
    if isinstance(doc, dict) and doc.get("model") == internal:
        return {**doc, "model": MODEL}
    return doc


def public_event_line(line: str, internal: str) -> bytes:
    """One server-sent-event line of a streamed answer, renamed as ``public_document`` does."""
    needle, repl = json.dumps(internal).encode(), json.dumps(MODEL).encode()
    raw = line.encode()
    return raw.replace(b'"model":' + needle, b'"model":' + repl).replace(b'"model": ' + needle, b'"model": ' + repl)


class Forwarder:
    def __init__(self, routes: RouteTable, client: httpx.AsyncClient) -> None:
        self.routes, self.client = routes, client

    async def send(self, path: str, body: dict[str, Any]) -> Response:
        """The first answer of a routable replica, renamed; ``Refusal`` if none answered."""
        targets = self.routes.targets()
        key = routing_key(body) if any(len(t.models) > 1 for t in targets) else ""  # only a routing table needs it
        for attempt, target in enumerate(failover_order(targets)):
            model = target.model(key)
            try:
                req = self.client.build_request("POST", f"{target.url}{path}", json={**body, "model": model})
                resp = await self.client.send(req, stream=bool(body.get("stream")))
            except httpx.TimeoutException:
                raise Refusal(504, "Upstream timeout", "the model did not answer in time", "upstream-timeout") from None
            except httpx.TransportError:
                continue  # replica down: the next one
            if resp.status_code == 404 and attempt == 0:  # its adapter was swapped a moment ago
                await resp.aclose()
                self.routes.refresh()
                continue
            return await _answer(resp, model, stream=bool(body.get("stream")))
        raise Refusal(502, "No replica", "no routable model replica answered", "no-replica")


async def _answer(resp: httpx.Response, model: str, *, stream: bool) -> Response:
    if stream:
        media = resp.headers.get("content-type")
        return StreamingResponse(_renamed_stream(resp, model), status_code=resp.status_code, media_type=media)
    await resp.aread()
    try:
        doc = resp.json()
    except ValueError:
        raise Refusal(502, "Bad upstream answer", "the model's answer was not JSON", "bad-upstream") from None
    return JSONResponse(public_document(doc, model), status_code=resp.status_code)


async def _renamed_stream(resp: httpx.Response, internal: str) -> AsyncIterator[bytes]:
    try:
        async for line in resp.aiter_lines():
            yield public_event_line(line, internal) + b"\n"
    finally:
        await resp.aclose()
