"""The knowledge base and its forget entries in PostgreSQL + pgvector."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from service.core import errors, forget
from service.core.kb import AddResult, Chunk, Document, DocumentInfo
from service.store.database import DatabaseInfo
from service.store.keystore import DataKeys, seal_with

EMBEDDING_DIM = 384


def vector(values: Sequence[float]) -> str:
    """pgvector's text form (cast with ``::vector``): no per-connection type registration needed."""
    return "[" + ",".join(f"{v:.7g}" for v in values) + "]"


@dataclass(frozen=True)
class Hit:
    document_id: str
    ord: int
    text: str
    similarity: float


def document_aad(document_id: str) -> str:
    return f"kb-document:{document_id}"


def chunk_aad(document_id: str, ord: int) -> str:
    return f"kb-chunk:{document_id}:{ord}"


class PgDocumentStore:
    """Documents and their chunks sealed under one data key per document (``keys``); the word
    index holds keyed hashes under ``index_key`` (forget.index_words)."""

    def __init__(self, db: DatabaseInfo, keys: DataKeys, index_key: bytes) -> None:
        self.db = db
        self.keys = keys
        self.index_key = index_key

    def add(self, documents: Sequence[Document], chunks: Sequence[Chunk]) -> AddResult:
        """All in one transaction. An identical document again is a no-op; the same id with other
        content, subjects or source is an error naming its line, and nothing is written (nor any
        key kept)."""
        if any(len(c.embedding) != EMBEDDING_DIM for c in chunks):
            raise errors.InvalidInput(f"embeddings must have {EMBEDDING_DIM} dimensions")
        created: list[uuid.UUID] = []
        try:
            return self._add(documents, chunks, created)
        except BaseException:
            self.keys.destroy(created)
            raise

    def _add(self, documents: Sequence[Document], chunks: Sequence[Chunk], created: list[uuid.UUID]) -> AddResult:
        with self.db.connect() as conn, conn.transaction():
            existing = _stored(conn, [d.id for d in documents])
            conflicts = [
                (d.line, f"id: {d.id!r} already stored with different content, source or subjects")
                for d in documents
                if d.id in existing and existing[d.id] != (d.content_hash, d.source, d.subject_hashes)
            ]
            if conflicts:
                raise errors.InvalidCorpus(conflicts)
            new = [d for d in documents if d.id not in existing]
            keys = {d.id: self.keys.create() for d in new}
            created += [k for k, _ in keys.values()]
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO kb_documents (id, source, metadata, sealed, key_id, terms, content_hash)"
                    " VALUES (%s, %s, %s::jsonb, %s, %s, to_tsvector('simple', %s), %s)",
                    [self._document_row(d, keys[d.id]) for d in new],
                )
                cur.executemany(
                    "INSERT INTO kb_document_subjects (document_id, subject_hash) VALUES (%s, %s)",
                    [(d.id, h) for d in new for h in d.subject_hashes],
                )
                cur.executemany(
                    "INSERT INTO kb_chunks (document_id, ord, sealed, embedding) VALUES (%s, %s, %s, %s::vector)",
                    [_chunk_row(c, keys[c.document_id][1]) for c in chunks if c.document_id in keys],
                )
        return AddResult(len(new), len(documents) - len(new))

    def _document_row(self, d: Document, key: tuple[uuid.UUID, bytes]) -> tuple[object, ...]:
        """A new document's row: its text sealed under its own key, its words as keyed hashes."""
        key_id, secret = key
        terms = forget.index_words(self.index_key, forget.words(d.text))
        sealed = seal_with(secret, d.text, document_aad(d.id))
        return (d.id, d.source, _json(d.metadata), sealed, key_id, terms, d.content_hash)

    def list(self, after: str | None, limit: int) -> list[DocumentInfo]:
        with self.db.connect() as conn:
            rows = conn.execute(
                f"{_INFO} WHERE %s::text IS NULL OR d.id > %s ORDER BY d.id LIMIT %s", (after, after, limit)
            ).fetchall()
        return [_info(r) for r in rows]

    def get(self, document_id: str) -> DocumentInfo | None:
        with self.db.connect() as conn:
            row = conn.execute(f"{_INFO_TEXT} WHERE d.id = %s", (document_id,)).fetchone()
        if row is None:
            return None
        *info, sealed, key_id, legacy = row
        return _info(info, text=legacy if sealed is None else self.keys.open(key_id, sealed, document_aad(document_id)))

    def delete(self, document_id: str) -> bool:
        """Delete the document and its chunks, and shred them (their key destroyed)."""
        with self.db.connect() as conn, conn.transaction():
            rows = conn.execute("DELETE FROM kb_documents WHERE id = %s RETURNING key_id", (document_id,)).fetchall()
            self.keys.destroy(r[0] for r in rows)
        return bool(rows)


_INFO = (
    "SELECT d.id, d.source, d.metadata, (SELECT count(*) FROM kb_chunks c WHERE c.document_id = d.id),"
    " encode(d.content_hash, 'hex'), d.created_at, d.suppressed_by IS NOT NULL FROM kb_documents d"
)
_INFO_TEXT = _INFO.replace(" FROM kb_documents d", ", d.sealed, d.key_id, d.text FROM kb_documents d")


def _stored(conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, tuple[bytes, str, tuple[bytes, ...]]]:
    """id → (content hash, source, subject hashes) of these documents already stored."""
    rows = conn.execute(
        "SELECT d.id, d.content_hash, d.source, array_agg(s.subject_hash ORDER BY s.subject_hash)"
        " FROM kb_documents d JOIN kb_document_subjects s ON s.document_id = d.id"
        " WHERE d.id = ANY(%s) GROUP BY d.id",
        (list(ids),),
    ).fetchall()
    return {r[0]: (bytes(r[1]), r[2], tuple(bytes(h) for h in r[3])) for r in rows}


def _chunk_row(c: Chunk, secret: bytes) -> tuple[object, ...]:
    return (c.document_id, c.ord, seal_with(secret, c.text, chunk_aad(c.document_id, c.ord)), vector(c.embedding))


def _info(row: Sequence[Any], text: str | None = None) -> DocumentInfo:
    doc_id, source, metadata, chunks, sha, created, suppressed = row
    return DocumentInfo(doc_id, source, metadata, chunks, sha, created, suppressed, text)


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True)


# -- retrieval -------------------------------------------------------------------------------
def search(
    conn: psycopg.Connection, keys: DataKeys, embedding: Sequence[float], k: int, min_similarity: float
) -> list[Hit]:
    """The ``k`` chunks nearest to ``embedding`` (cosine, HNSW) with similarity ≥ ``min_similarity``,
    from documents not taken out of retrieval, opened with their document's key. The inner query
    is the index scan; suppressed documents are filtered after it, so it asks for a few more than
    ``k``."""
    q = vector(embedding)
    rows = conn.execute(
        """SELECT c.document_id, c.ord, c.sealed, d.key_id, c.text, 1 - c.dist FROM (
               SELECT document_id, ord, sealed, text, embedding <=> %s::vector AS dist FROM kb_chunks
               ORDER BY embedding <=> %s::vector LIMIT %s) c
           JOIN kb_documents d ON d.id = c.document_id AND d.suppressed_by IS NULL
           WHERE 1 - c.dist >= %s ORDER BY c.dist LIMIT %s""",
        (q, q, 4 * k, min_similarity, k),
    ).fetchall()
    hits = []
    for doc, ord, sealed, key_id, legacy, similarity in rows:
        text = legacy if sealed is None else keys.open(key_id, sealed, chunk_aad(doc, ord))
        if text is not None:  # None: shredded by a deletion still committing
            hits.append(Hit(doc, ord, text, similarity))
    return hits


# -- erasure ---------------------------------------------------------------------------------
def documents_of_subjects(conn: psycopg.Connection, subject_hashes: Sequence[bytes], ids: Sequence[str]) -> list[str]:
    """Documents naming any of the subjects, plus the listed ids that are documents."""
    rows = conn.execute(
        "SELECT document_id FROM kb_document_subjects WHERE subject_hash = ANY(%s)"
        " UNION SELECT id FROM kb_documents WHERE id = ANY(%s) ORDER BY 1",
        (list(subject_hashes), list(ids)),
    ).fetchall()
    return [r[0] for r in rows]


def suppressed_texts(conn: psycopg.Connection, keys: DataKeys, request_id: uuid.UUID) -> dict[str, str]:
    rows = conn.execute("SELECT id FROM kb_documents WHERE suppressed_by = %s ORDER BY id", (request_id,)).fetchall()
    return document_texts(conn, keys, [r[0] for r in rows])


def document_texts(conn: psycopg.Connection, keys: DataKeys, ids: Sequence[str]) -> dict[str, str]:
    """id → text of these documents that are still readable."""
    rows = conn.execute(
        "SELECT id, sealed, key_id, text FROM kb_documents WHERE id = ANY(%s) ORDER BY id", (list(ids),)
    ).fetchall()
    out = {}
    for doc, sealed, key_id, legacy in rows:
        text = legacy if sealed is None else keys.open(key_id, sealed, document_aad(doc))
        if text is not None:
            out[doc] = text
    return out


def count_documents(conn: psycopg.Connection, ids: Sequence[str]) -> int:
    """How many of these documents exist (suppressed or not)."""
    row = conn.execute("SELECT count(*) FROM kb_documents WHERE id = ANY(%s)", (list(ids),)).fetchone()
    return int(row[0]) if row else 0


def content_hashes(conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, bytes]:
    """id → content sha256 of these documents, in id order."""
    rows = conn.execute(
        "SELECT id, content_hash FROM kb_documents WHERE id = ANY(%s) ORDER BY id", (list(ids),)
    ).fetchall()
    return {r[0]: bytes(r[1]) for r in rows}


def known_elsewhere(
    conn: psycopg.Connection, index_key: bytes, terms: Sequence[str], excluded: Sequence[str]
) -> set[str]:
    """Which of ``terms`` (space-separated lower-case words) some other, live document states:
    a phrase query over the hashed-word index."""
    hashed = {forget.index_words(index_key, t.split(" ")): t for t in terms}
    rows = conn.execute(
        """SELECT t FROM unnest(%s::text[]) t WHERE EXISTS (
               SELECT 1 FROM kb_documents d WHERE d.id <> ALL(%s) AND d.suppressed_by IS NULL
               AND d.terms @@ phraseto_tsquery('simple', t))""",
        (list(hashed), list(excluded)),
    ).fetchall()
    return {hashed[r[0]] for r in rows}


def suppress(
    conn: psycopg.Connection, request_id: uuid.UUID, document_ids: Sequence[str], term_hashes: Sequence[bytes]
) -> tuple[int, bool]:
    """Take the documents out of retrieval and store the forget entry, in the caller's transaction.
    Idempotent per request: returns (documents, created)."""
    row = conn.execute("SELECT documents FROM kb_forget WHERE request_id = %s", (request_id,)).fetchone()
    if row is not None:
        return int(row[0]), False
    conn.execute(
        "UPDATE kb_documents SET suppressed_by = %s WHERE id = ANY(%s) AND suppressed_by IS NULL",
        (request_id, list(document_ids)),
    )
    fid = conn.execute(
        "INSERT INTO kb_forget (request_id, documents, terms) VALUES (%s, %s, %s) RETURNING id",
        (request_id, len(document_ids), len(term_hashes)),
    ).fetchone()
    assert fid is not None
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO kb_forget_terms (term_hash, forget_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(h, fid[0]) for h in sorted(set(term_hashes))],
        )
    conn.execute("NOTIFY lethe_kb_forget")
    return len(document_ids), True


def purge(conn: psycopg.Connection, keys: DataKeys, request_id: uuid.UUID) -> int:
    """Hard-delete what the request suppressed (chunks and subject links cascade) and shred it:
    its keys destroyed in the caller's transaction."""
    rows = conn.execute("DELETE FROM kb_documents WHERE suppressed_by = %s RETURNING key_id", (request_id,)).fetchall()
    keys.destroy(r[0] for r in rows)
    return len(rows)


def forget_match(conn: psycopg.Connection, hashes: Iterable[bytes]) -> tuple[bool, int]:
    """Does any of ``hashes`` belong to a forget entry; and the forget set's version, in one round trip."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM kb_forget_terms WHERE term_hash = ANY(%s)),"
        " (SELECT coalesce(max(id), 0) FROM kb_forget)",
        (list(hashes),),
    ).fetchone()
    assert row is not None
    return bool(row[0]), int(row[1])


def forget_state(conn: psycopg.Connection) -> int:
    """A version of the forget set: the newest entry's id (0 when empty)."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM kb_forget").fetchone()
    return int(row[0]) if row else 0


def forget_hashes(conn: psycopg.Connection) -> set[bytes]:
    return {bytes(r[0]) for r in conn.execute("SELECT DISTINCT term_hash FROM kb_forget_terms")}
