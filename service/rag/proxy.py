"""The retrieval proxy: OpenAI-compatible completions for the model ``rag:<upstream model>``.

embed the query → search the knowledge base (pgvector) → build the prompt (retrieved chunks, and
the confidentiality constraint when the query names a forgotten subject) → call the upstream →
leakage gate on the answer (streamed answers are gated as they flow: text is held back until no
forgotten term can still be forming). The gate and the constraint match keyed hashes of
n-grams (service.core.forget); neither needs the forgotten text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import httpx

from service.config import RagSpec
from service.core import errors
from service.core.forget import Gate, StreamGate, term_key, text_hashes
from service.core.kb import Embedder
from service.rag import metrics
from service.store import kb
from service.store.database import DatabaseInfo
from service.store.keystore import DataKeys
from service.tracing import tracer

ROUTE_PREFIX = "rag:"
REFUSAL = "[withheld: this answer would disclose information erased at a data subject's request]"
# Short on purpose: it shares a small model's context with the retrieved chunks.
CONSTRAINT = "Erased at the subject's request: say nothing about this person."
# Requests that would expose token alternatives (which can spell a forgotten fact) are refused.
_REFUSED_FIELDS = ("logprobs", "top_logprobs", "prompt_logprobs", "echo")


@dataclass(frozen=True)
class Retrieved:
    hits: list[kb.Hit]
    constrained: bool  # the query names a forgotten subject: the constraint goes into the prompt


@dataclass(frozen=True)
class Answer:
    """What the edge sends back: a JSON document, or a stream of server-sent-event lines."""

    status: int
    document: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


class RagProxy:
    def __init__(
        self, db: DatabaseInfo, keys: DataKeys, embedder: Embedder, server_key: bytes, spec: RagSpec, upstream_url: str
    ) -> None:
        self.db, self.keys, self.embedder, self.spec = db, keys, embedder, spec
        self.key = term_key(server_key)
        self.upstream_url = upstream_url.rstrip("/")
        self.route = ROUTE_PREFIX + spec.upstream_model
        self._gate = Gate(self.key)
        self._gate_state = -1
        self._headers = {"Authorization": f"Bearer {k}"} if (k := spec.api_key()) else {}
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """One client per event loop (the worker's probes run their own loop, the gateway its own)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.spec.upstream_timeout_seconds, connect=5.0), headers=self._headers
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None

    # -- retrieval (sync: run it in a thread from async code) -------------------------------
    def retrieve(self, query: str) -> Retrieved:
        t0 = time.perf_counter()
        with tracer.start_as_current_span("rag.embed"):
            vec = self.embedder.embed([query])[0]
        with tracer.start_as_current_span("rag.search"), self.db.connect() as conn:
            hits = kb.search(conn, self.keys, vec, self.spec.top_k, self.spec.min_similarity)
            constrained, state = kb.forget_match(conn, text_hashes(self.key, query))
            self._sync_gate(conn, state)
        metrics.RETRIEVAL_SECONDS.observe(time.perf_counter() - t0)
        return Retrieved(hits, constrained)

    def refresh_gate(self) -> Gate:
        with self.db.connect() as conn:
            self._sync_gate(conn, kb.forget_state(conn))
        return self._gate

    def _sync_gate(self, conn: Any, state: int) -> None:
        """A new forget entry since the gate was built (``state``: the newest entry's id): reload it."""
        if state != self._gate_state:
            self._gate, self._gate_state = Gate(self.key, kb.forget_hashes(conn)), state

    def prompt_prefix(self, r: Retrieved) -> str:
        """The constraint (if the query names a forgotten subject), then the chunks, nearest first,
        as many as fit ``max_context_chars``."""
        parts, used = ([CONSTRAINT] if r.constrained else []), 0
        for h in r.hits:
            used += len(h.text)
            if used > self.spec.max_context_chars:
                break
            parts.append(h.text)
        return "\n".join(parts)

    # -- the OpenAI-compatible request ------------------------------------------------------
    async def complete(self, path: str, body: dict[str, Any]) -> Answer:
        """``path``: /v1/completions or /v1/chat/completions; ``body`` the client's JSON object."""
        chat = path.endswith("chat/completions")
        query = self._query(body, chat)
        for name in _REFUSED_FIELDS:
            if body.get(name):
                raise errors.InvalidInput(f"{name!r} is not served on the retrieval route")
        retrieved = await anyio.to_thread.run_sync(self.retrieve, query)
        prefix = self.prompt_prefix(retrieved)
        upstream = {**body, "model": self.spec.upstream_model}
        if chat:
            upstream["messages"] = (
                [{"role": "system", "content": prefix}, *body["messages"]] if prefix else body["messages"]
            )
        else:
            upstream["prompt"] = f"{prefix}\n{body['prompt']}" if prefix else body["prompt"]
        stream = bool(body.get("stream"))
        t0 = time.perf_counter()
        with tracer.start_as_current_span("rag.upstream", attributes={"lethe.rag.chunks": len(retrieved.hits)}):
            try:
                client = self.client
                req = client.build_request("POST", self.upstream_url + path.removeprefix("/v1"), json=upstream)
                resp = await client.send(req, stream=stream)
            except httpx.TimeoutException as e:
                metrics.REQUESTS.labels("upstream_timeout").inc()
                raise errors.UpstreamTimeout() from e
            except httpx.TransportError as e:
                metrics.REQUESTS.labels("upstream_error").inc()
                raise errors.UpstreamError(f"the upstream could not be reached ({type(e).__name__})") from e
        if resp.status_code >= 500:
            await resp.aclose()
            metrics.REQUESTS.labels("upstream_error").inc()
            raise errors.UpstreamError(f"the upstream answered HTTP {resp.status_code}")
        if stream and resp.status_code == 200:
            return Answer(200, stream=self._gated_stream(resp, chat, t0))
        try:
            await resp.aread()
            doc = resp.json()
        except (ValueError, httpx.HTTPError) as e:
            metrics.REQUESTS.labels("upstream_error").inc()
            raise errors.UpstreamError("the upstream's answer was not JSON") from e
        finally:
            await resp.aclose()
        metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - t0)
        if resp.status_code != 200 or not isinstance(doc, dict):
            metrics.REQUESTS.labels("upstream_rejected").inc()
            return Answer(resp.status_code, document=doc if isinstance(doc, dict) else {"error": doc})
        blocked = self._gate_document(doc, chat)
        metrics.REQUESTS.labels("blocked" if blocked else "answered").inc()
        return Answer(200, document=doc)

    def _query(self, body: dict[str, Any], chat: bool) -> str:
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise errors.InvalidInput("messages must be a non-empty list of objects")
            texts = [_content_text(m.get("content")) for m in msgs]
            users = [t for m, t in zip(msgs, texts, strict=True) if m.get("role") == "user"]
            if not users:
                raise errors.InvalidInput("messages need at least one user message")
            total, query = sum(map(len, texts)), users[-1]
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise errors.InvalidInput("prompt must be a non-empty string")
            total, query = len(prompt), prompt
        if total > self.spec.max_prompt_chars:
            raise errors.PayloadTooLarge(f"the prompt is longer than {self.spec.max_prompt_chars} characters")
        return query

    def _gate_document(self, doc: dict[str, Any], chat: bool) -> bool:
        """Replace every choice whose text leaks a forgotten term; True if any was."""
        blocked = False
        with tracer.start_as_current_span("rag.gate"):
            for choice in doc.get("choices") or []:
                text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
                if isinstance(text, str) and self._gate.leaks(text):
                    blocked = True
                    metrics.GATE_BLOCKS.inc()
                    if chat:
                        choice["message"] = {"role": "assistant", "content": REFUSAL}
                    else:
                        choice["text"] = REFUSAL
                    choice["finish_reason"] = "content_filter"
                    choice.pop("logprobs", None)
        doc["model"] = self.route
        return blocked

    async def _gated_stream(self, resp: httpx.Response, chat: bool, t0: float) -> AsyncIterator[bytes]:
        gates: dict[int, StreamGate] = {}
        blocked_any = False

        def tails() -> Iterator[bytes]:  # text still held back when the upstream ends without a finish_reason
            for index, sg in gates.items():
                if (rest := sg.finish()) and not sg.blocked:
                    yield f"data: {json.dumps(_tail_chunk(index, rest, chat, self.route))}\n\n".encode()

        try:
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    for tail in tails():
                        yield tail
                if not line.startswith("data: ") or line == "data: [DONE]":
                    yield (line + "\n").encode()
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    continue  # never pass through what the gate cannot read
                chunk["model"] = self.route
                choices = chunk.get("choices") or []
                out = []
                for choice in choices:
                    sg = gates.setdefault(int(choice.get("index", 0)), StreamGate(self._gate))
                    if sg.blocked:
                        continue  # already ended with content_filter
                    text = ((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or ""
                    released = sg.feed(text)
                    if choice.get("finish_reason") is not None and not sg.blocked:
                        released += sg.finish()
                    if sg.blocked:
                        blocked_any = True
                        metrics.GATE_BLOCKS.inc()
                        released, choice["finish_reason"] = REFUSAL, "content_filter"
                    _set_text(choice, released, chat)
                    out.append(choice)
                if choices and not out:
                    continue
                chunk["choices"] = out
                yield f"data: {json.dumps(chunk)}\n".encode()
        finally:
            await resp.aclose()
            metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - t0)
            metrics.REQUESTS.labels("blocked" if blocked_any else "answered").inc()


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _set_text(choice: dict[str, Any], text: str, chat: bool) -> None:
    if chat:
        delta = choice.get("delta") or {}
        delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text
    choice.pop("logprobs", None)


def _tail_chunk(index: int, text: str, chat: bool, model: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": None}
    _set_text(choice, text, chat)
    return {"object": "chat.completion.chunk" if chat else "text_completion", "model": model, "choices": [choice]}
