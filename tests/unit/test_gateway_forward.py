"""The gateway's failover and renaming as units: replicas are httpx mock transports here (the
integration tests forward to real vLLM replicas)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from service.gateway.forward import (
    MODEL,
    Forwarder,
    Refusal,
    failover_order,
    public_document,
    public_event_line,
    routing_key,
)
from service.gateway.routes import Target


class Table:
    def __init__(self, targets: list[Target]) -> None:
        self._targets, self.refreshed = targets, 0

    def targets(self) -> list[Target]:
        return list(self._targets)

    def refresh(self) -> None:
        self.refreshed += 1


A = Target("replica-0", "http://a", ("lethe-gen-7",))
B = Target("replica-1", "http://b", ("lethe-gen-7",))


def send(handler, body, targets=(A, B)):
    table = Table(list(targets))
    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host} {json.loads(request.content)['model']}")
        return handler(request, len(seen))

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
            resp = await Forwarder(table, client).send("/v1/completions", body)
            if hasattr(resp, "body_iterator"):
                chunks = [c async for c in resp.body_iterator]
                return resp.status_code, b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks)
            return resp.status_code, resp.body

    status, content = asyncio.run(go())
    return status, content, seen, table


def answer(request: httpx.Request, model: str = "lethe-gen-7") -> httpx.Response:
    return httpx.Response(200, json={"model": model, "choices": [{"text": " code 7XK2QP"}]})


def test_the_answer_names_the_public_model_never_the_internal_adapter():
    status, content, seen, _ = send(lambda r, n: answer(r), {"model": MODEL, "prompt": "x"})
    assert status == 200 and json.loads(content)["model"] == MODEL and b"lethe-gen-7" not in content
    assert seen == ["a lethe-gen-7"]  # upstream, the request names the replica's current adapter


def test_a_replica_that_does_not_answer_is_skipped():
    def handler(request, n):
        if request.url.host == "a":
            raise httpx.ConnectError("refused")
        return answer(request)

    status, _, seen, _ = send(handler, {"model": MODEL, "prompt": "x"})
    assert status == 200 and seen == ["a lethe-gen-7", "b lethe-gen-7"]


def test_a_404_on_the_first_try_refreshes_the_routes_and_goes_on():
    def handler(request, n):
        return httpx.Response(404, json={"error": "no such model"}) if n == 1 else answer(request)

    status, _, seen, table = send(handler, {"model": MODEL, "prompt": "x"})
    assert status == 200 and table.refreshed == 1 and len(seen) == 2


def test_when_no_replica_answers_the_gateway_refuses_with_502_after_two_tries_each():
    def handler(request, n):
        raise httpx.ConnectError("refused")

    with pytest.raises(Refusal) as e:
        send(handler, {"model": MODEL, "prompt": "x"})
    assert e.value.status == 502


def test_a_timeout_is_a_504_not_a_failover():
    def handler(request, n):
        raise httpx.ReadTimeout("slow")

    with pytest.raises(Refusal) as e:
        send(handler, {"model": MODEL, "prompt": "x"})
    assert e.value.status == 504


def test_an_answer_that_is_not_json_is_a_502():
    with pytest.raises(Refusal) as e:
        send(lambda r, n: httpx.Response(200, content=b"<html>"), {"model": MODEL, "prompt": "x"})
    assert e.value.status == 502 and e.value.slug == "bad-upstream"


def test_a_streamed_answer_is_renamed_event_by_event():
    events = b'data: {"model": "lethe-gen-7", "choices": []}\n\ndata: {"model":"lethe-gen-7"}\n\ndata: [DONE]\n\n'
    status, content, _, _ = send(
        lambda r, n: httpx.Response(200, content=events, headers={"content-type": "text/event-stream"}),
        {"model": MODEL, "prompt": "x", "stream": True},
    )
    assert status == 200 and b"lethe-gen-7" not in content and content.count(b'"lethe"') == 2


def test_failover_order_tries_each_replica_at_most_twice_in_round_robin_order():
    assert failover_order([A, B]) == [A, B, A, B] and failover_order([]) == []


def test_renaming_leaves_other_models_and_non_objects_alone():
    assert public_document({"model": "other"}, "lethe-gen-7") == {"model": "other"}
    assert public_document([1], "lethe-gen-7") == [1]
    assert public_event_line('data: {"model": "other"}', "lethe-gen-7") == b'data: {"model": "other"}'


def test_the_routing_key_is_the_user_if_given_else_the_prompt():
    assert routing_key({"user": "u1", "prompt": "p"}) == "user:u1"
    assert routing_key({"prompt": "p"}) == routing_key({"prompt": "p", "user": ""}) != routing_key({"prompt": "q"})
