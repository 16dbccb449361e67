"""Records and subjects in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from service.core.errors import InvalidCorpus
from service.core.records import Record


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    unchanged: int


@dataclass(frozen=True)
class Holdings:
    subjects: int
    records: int
    purged: int
    placed: int


def add_records(conn: psycopg.Connection, records: list[Record]) -> IngestResult:
    """Insert records in one transaction. Re-ingesting an identical record is a no-op; the same
    id with other content or other subjects is an error (with its line), and nothing is written."""
    with conn.transaction():
        existing = _existing(conn, [r.id for r in records])
        conflicts = [
            (r.line, f"id: {r.id!r} already stored with different content or subjects")
            for r in records
            if r.id in existing and existing[r.id] != (r.content_hash, r.subject_hashes)
        ]
        if conflicts:
            raise InvalidCorpus(conflicts)
        new = [r for r in records if r.id not in existing]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO subjects (subject_hash) VALUES (%s) ON CONFLICT DO NOTHING",
                [(h,) for h in sorted({h for r in new for h in r.subject_hashes})],
            )
            cur.executemany(
                "INSERT INTO records (id, content_hash, text) VALUES (%s, %s, %s)",
                [(r.id, r.content_hash, r.text) for r in new],
            )
            cur.executemany(
                "INSERT INTO record_subjects (record_id, subject_hash) VALUES (%s, %s)",
                [(r.id, h) for r in new for h in r.subject_hashes],
            )
    return IngestResult(inserted=len(new), unchanged=len(records) - len(new))


def _existing(conn: psycopg.Connection, ids: list[str]) -> dict[str, tuple[bytes, tuple[bytes, ...]]]:
    rows = conn.execute(
        """SELECT r.id, r.content_hash, array_agg(rs.subject_hash ORDER BY rs.subject_hash)
             FROM records r JOIN record_subjects rs ON rs.record_id = r.id
            WHERE r.id = ANY(%s) GROUP BY r.id, r.content_hash""",
        (ids,),
    ).fetchall()
    return {rid: (bytes(ch), tuple(bytes(h) for h in hashes)) for rid, ch, hashes in rows}


def holdings(conn: psycopg.Connection) -> Holdings:
    row = conn.execute(
        """SELECT (SELECT count(*) FROM subjects),
                  count(*), count(*) FILTER (WHERE purged_at IS NOT NULL), count(*) FILTER (WHERE shard IS NOT NULL)
             FROM records"""
    ).fetchone()
    assert row is not None
    return Holdings(*row)
