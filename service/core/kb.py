"""The knowledge base of the closed-model path: documents, their chunks, and the one core that
the CLI, REST and gRPC all call to add, list, read and delete them.

Documents name their data subjects like training records do (``type:value`` identities, kept
only as keyed hashes). An operator's delete here is plain housekeeping; a data subject's erasure
goes through a deletion request, which also leaves a forget entry (service.core.forget).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from service.core import errors, validation
from service.core.deletions import Principal, Scope
from service.core.identity import content_hash, subject_hash
from service.core.records import MAX_SUBJECTS_PER_RECORD, parse_line
from service.tracing import tracer

MAX_DOCUMENTS_PER_CALL = 500
MAX_METADATA_BYTES = 4096
DOCUMENT_ID = f"^{validation.IDENTIFIER}$"
MAX_ID_LENGTH = validation.DOCUMENT_ID.max_chars
CHUNK_CHARS = 600  # all-MiniLM-L6-v2 reads 256 word pieces; ~600 characters stay inside that
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Document:
    id: str
    subject_hashes: tuple[bytes, ...]
    text: str
    source: str
    metadata: dict[str, Any]
    content_hash: bytes
    line: int = 0


@dataclass(frozen=True)
class Chunk:
    document_id: str
    ord: int
    text: str
    embedding: Sequence[float]


@dataclass(frozen=True)
class DocumentInfo:
    """What listing shows: no text (that is what ``get`` is for)."""

    id: str
    source: str
    metadata: dict[str, Any]
    chunks: int
    content_sha256: str
    created_at: datetime
    suppressed: bool = False
    text: str | None = None


@dataclass(frozen=True)
class AddResult:
    inserted: int
    unchanged: int


@dataclass(frozen=True)
class DocumentPage:
    items: list[DocumentInfo]
    next_cursor: str | None


@dataclass(frozen=True)
class NewDocument:
    """A document as a client sends it (already shape-checked by its transport)."""

    id: str
    subject_ids: Sequence[str]
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


class _DocumentLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=DOCUMENT_ID)
    subject_ids: list[str] = Field(min_length=1, max_length=MAX_SUBJECTS_PER_RECORD)
    text: str = Field(min_length=1)
    source: str = Field(min_length=1, max_length=512)
    metadata: dict[str, Any] = Field(default_factory=dict)


def parse_documents(items: Iterable[tuple[int, object]], key: bytes, max_text_bytes: int) -> list[Document]:
    """Validate every item (line number, parsed JSON or a JSON string); on any error raise
    :class:`errors.InvalidCorpus` listing them all by line number: nothing is written."""
    problems: list[tuple[int, str]] = []
    docs: list[Document] = []
    seen: dict[str, int] = {}
    for n, raw in items:
        line = parse_line(_DocumentLine, raw)
        if isinstance(line, str):
            problems.append((n, line))
            continue
        if len(line.text.encode()) > max_text_bytes:
            problems.append((n, f"text: longer than {max_text_bytes} bytes"))
            continue
        if deep := validation.json_depth_problem(line.metadata):
            problems.append((n, f"metadata: {deep}"))
            continue
        try:  # what PostgreSQL refuses: NUL and lone surrogates in text, NaN/Infinity in jsonb
            meta = json.dumps(line.metadata, allow_nan=False, ensure_ascii=False)
        except ValueError:
            problems.append((n, "metadata: NaN and Infinity are not JSON"))
            continue
        meta_bad = validation.storable_json(meta)
        bad = (
            validation.problem(validation.TEXT, line.text)
            or validation.problem(validation.SOURCE, line.source)
            or (meta_bad and f"metadata: {meta_bad}")
        )
        if bad:
            problems.append((n, bad))
            continue
        if len(meta.encode()) > MAX_METADATA_BYTES:
            problems.append((n, f"metadata: longer than {MAX_METADATA_BYTES} bytes as JSON"))
            continue
        if line.id in seen:
            problems.append((n, f"id: {line.id!r} already used on line {seen[line.id]}"))
            continue
        try:
            hashes = tuple(sorted({subject_hash(key, s) for s in line.subject_ids}))
        except errors.InvalidIdentity as e:
            problems.append((n, f"subject_ids: {e}"))
            continue
        seen[line.id] = n
        docs.append(Document(line.id, hashes, line.text, line.source, line.metadata, content_hash(line.text), n))
    if problems:
        raise errors.InvalidCorpus(problems)
    return docs


def parse_jsonl(lines: Iterable[str], key: bytes, max_text_bytes: int) -> list[Document]:
    return parse_documents(((n, raw) for n, raw in enumerate(lines, start=1) if raw.strip()), key, max_text_bytes)


def chunk_text(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Sentences packed into chunks of at most ``max_chars`` (a longer sentence is split hard)."""
    chunks: list[str] = []
    cur = ""
    for sentence in _SENTENCE_END.split(text.strip()):
        while len(sentence) > max_chars:
            if cur:
                chunks.append(cur)
                cur = ""
            chunks.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if cur and len(cur) + 1 + len(sentence) > max_chars:
            chunks.append(cur)
            cur = ""
        cur = f"{cur} {sentence}" if cur else sentence
    if cur:
        chunks.append(cur)
    return chunks


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class DocumentStore(Protocol):
    """Storage port; ``add`` is one transaction (all or nothing)."""

    def add(self, documents: Sequence[Document], chunks: Sequence[Chunk]) -> AddResult: ...
    def list(self, after: str | None, limit: int) -> list[DocumentInfo]: ...
    def get(self, document_id: str) -> DocumentInfo | None: ...
    def delete(self, document_id: str) -> bool: ...


class KnowledgeBase:
    def __init__(self, store: DocumentStore, embedder: Embedder, hmac_key: bytes, max_text_bytes: int) -> None:
        self.store, self.embedder, self.key, self.max_text_bytes = store, embedder, hmac_key, max_text_bytes

    def add(self, documents: Sequence[NewDocument], principal: Principal) -> AddResult:
        principal.require(Scope.KB_WRITE)
        if not 1 <= len(documents) <= MAX_DOCUMENTS_PER_CALL:
            raise errors.InvalidInput(f"give 1..{MAX_DOCUMENTS_PER_CALL} documents")
        items = [
            (
                n,
                {
                    "id": d.id,
                    "subject_ids": list(d.subject_ids),
                    "text": d.text,
                    "source": d.source,
                    "metadata": d.metadata,
                },
            )
            for n, d in enumerate(documents, start=1)
        ]
        return self.add_parsed(parse_documents(items, self.key, self.max_text_bytes))

    def add_parsed(self, docs: Sequence[Document], progress: bool = False) -> AddResult:
        """Chunk and embed validated documents, then store them all in one transaction."""
        pieces = [(d.id, i, t) for d in docs for i, t in enumerate(chunk_text(d.text))]
        with tracer.start_as_current_span("kb.embed", attributes={"lethe.chunks": len(pieces)}):
            vectors = _embed_batched(self.embedder, [t for _, _, t in pieces], progress)
        chunks = [Chunk(doc, i, t, v) for (doc, i, t), v in zip(pieces, vectors, strict=True)]
        return self.store.add(docs, chunks)

    def list(self, principal: Principal, cursor: str | None = None, limit: int = 50) -> DocumentPage:
        principal.require(Scope.KB_READ)
        validation.page_size(limit, 500)
        items = self.store.list(_document_id(cursor) if cursor else None, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return DocumentPage(items, items[-1].id if more and items else None)

    def get(self, document_id: str, principal: Principal) -> DocumentInfo:
        principal.require(Scope.KB_READ)
        found = self.store.get(_document_id(document_id))
        if found is None:
            raise errors.NotFound(f"no knowledge-base document {document_id!r}")
        return found

    def delete(self, document_id: str, principal: Principal) -> None:
        principal.require(Scope.KB_WRITE)
        if not self.store.delete(_document_id(document_id)):
            raise errors.NotFound(f"no knowledge-base document {document_id!r}")


def _document_id(text: str) -> str:
    return validation.DOCUMENT_ID.check(text)


def _embed_batched(embedder: Embedder, texts: list[str], progress: bool, batch: int = 256) -> list[list[float]]:
    from tqdm.auto import tqdm

    out: list[list[float]] = []
    for i in tqdm(range(0, len(texts), batch), desc="embedding chunks", disable=not progress, unit="batch"):
        out.extend(embedder.embed(texts[i : i + batch]))
    return out
