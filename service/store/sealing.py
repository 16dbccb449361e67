"""Seal text stored in clear before migration 0011 (crypto-shredding): run by ``lethe migrate``
and every command that migrates. Copies of the clear text written before it (dead tuples, WAL,
backups) are not reached from here: docs/operations.md says what to do with them."""

from __future__ import annotations

import psycopg

from service.core import forget
from service.store.database import DatabaseInfo
from service.store.kb import chunk_aad, document_aad
from service.store.keystore import DataKeys, seal_with
from service.store.records import record_aad

BATCH = 500


def pending(db: DatabaseInfo) -> bool:
    """Is any text still held in clear?"""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM records WHERE text IS NOT NULL)"
            " OR EXISTS (SELECT 1 FROM kb_documents WHERE text IS NOT NULL)"
            " OR EXISTS (SELECT 1 FROM kb_chunks WHERE text IS NOT NULL)"
        ).fetchone()
    return bool(row and row[0])


def seal_legacy(db: DatabaseInfo, keys: DataKeys, index_key: bytes | None = None) -> int:
    """Seal every record and knowledge-base document still held in clear; returns how many.
    ``index_key`` (forget.index_key): rebuild the documents' word index as keyed hashes."""
    sealed = 0
    with db.connect() as conn:
        while n := _records(conn, keys):
            sealed += n
        while n := _documents(conn, keys, index_key):
            sealed += n
    return sealed


def _records(conn: psycopg.Connection, keys: DataKeys) -> int:
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, text FROM records WHERE text IS NOT NULL AND sealed IS NULL LIMIT %s FOR UPDATE", (BATCH,)
        ).fetchall()
        for rid, text in rows:
            key_id, blob = keys.seal(text, record_aad(rid))
            conn.execute("UPDATE records SET text = NULL, sealed = %s, key_id = %s WHERE id = %s", (blob, key_id, rid))
    return len(rows)


def _documents(conn: psycopg.Connection, keys: DataKeys, index_key: bytes | None) -> int:
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, text FROM kb_documents WHERE text IS NOT NULL AND sealed IS NULL LIMIT %s FOR UPDATE",
            (BATCH,),
        ).fetchall()
        for doc, text in rows:
            key_id, key = keys.create()
            terms = forget.index_words(index_key, forget.words(text)) if index_key else ""
            conn.execute(
                "UPDATE kb_documents SET text = NULL, sealed = %s, key_id = %s, terms = to_tsvector('simple', %s)"
                " WHERE id = %s",
                (seal_with(key, text, document_aad(doc)), key_id, terms, doc),
            )
            for ord, chunk in conn.execute(
                "SELECT ord, text FROM kb_chunks WHERE document_id = %s AND text IS NOT NULL", (doc,)
            ).fetchall():
                conn.execute(
                    "UPDATE kb_chunks SET text = NULL, sealed = %s WHERE document_id = %s AND ord = %s",
                    (seal_with(key, chunk, chunk_aad(doc, ord)), doc, ord),
                )
    return len(rows)
