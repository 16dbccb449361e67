"""Records and subjects in PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg

from service.core.errors import InvalidCorpus, InvalidInput
from service.core.records import Record
from service.store.keystore import DataKeys
from shards import placement
from shards.placement import Layout


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


def add_records(conn: psycopg.Connection, keys: DataKeys, records: list[Record], layout: Layout) -> IngestResult:
    """Insert and place records in one transaction, each text sealed under a data key of its own.
    Re-ingesting an identical record is a no-op; the same id with other content or other subjects
    is an error (with its line), and nothing is written (nor any key kept). Each new data subject
    is placed into a (shard, slice) once, for good."""
    sealed: dict[str, tuple[uuid.UUID, bytes]] = {}
    try:
        return _add(conn, keys, records, layout, sealed)
    except BaseException:
        keys.destroy(k for k, _ in sealed.values())  # the ciphertext may sit in WAL: no key for it
        raise


def _add(
    conn: psycopg.Connection,
    keys: DataKeys,
    records: list[Record],
    layout: Layout,
    sealed: dict[str, tuple[uuid.UUID, bytes]],
) -> IngestResult:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('lethe.placement'))")
        _check_layout(conn, layout)
        existing = _existing(conn, [r.id for r in records])
        conflicts = [
            (r.line, f"id: {r.id!r} already stored with different content or subjects")
            for r in records
            if r.id in existing and existing[r.id] != (r.content_hash, r.subject_hashes)
        ]
        if conflicts:
            raise InvalidCorpus(conflicts)
        new = [r for r in records if r.id not in existing]
        for r in new:
            sealed[r.id] = keys.seal(r.text, record_aad(r.id))
        cells = _place(conn, [placement.group_key(r.subject_hashes) for r in new], layout)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO subjects (subject_hash) VALUES (%s) ON CONFLICT DO NOTHING",
                [(h,) for h in sorted({h for r in new for h in r.subject_hashes})],
            )
            cur.executemany(
                "INSERT INTO records (id, content_hash, sealed, key_id, group_hash, shard, slice, text_key)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (r.id, r.content_hash, sealed[r.id][1], sealed[r.id][0], g, *cells[g], r.text_key)
                    for r in new
                    for g in [placement.group_key(r.subject_hashes)]
                ],
            )
            cur.executemany(
                "INSERT INTO record_subjects (record_id, subject_hash) VALUES (%s, %s)",
                [(r.id, h) for r in new for h in r.subject_hashes],
            )
    return IngestResult(inserted=len(new), unchanged=len(records) - len(new))


def record_aad(record_id: str) -> str:
    """What a record's ciphertext is bound to: its row."""
    return f"record:{record_id}"


def _check_layout(conn: psycopg.Connection, layout: Layout) -> None:
    conn.execute(
        "INSERT INTO s3t_layout (shards, slices) VALUES (%s, %s) ON CONFLICT DO NOTHING", (layout.shards, layout.slices)
    )
    row = conn.execute("SELECT shards, slices FROM s3t_layout").fetchone()
    assert row is not None
    if tuple(row) != (layout.shards, layout.slices):
        raise InvalidInput(
            f"the S3T layout is fixed at first ingest ({row[0]} shards × {row[1]} slices); "
            f"settings ask for {layout.shards} × {layout.slices}"
        )


def _place(conn: psycopg.Connection, groups: list[bytes], layout: Layout) -> dict[bytes, tuple[int, int]]:
    """Cells of the given groups: those already placed keep theirs; new ones are dealt after them."""
    wanted = sorted(set(groups))
    rows = conn.execute(
        "SELECT group_hash, shard, slice FROM placement_groups WHERE group_hash = ANY(%s)", (wanted,)
    ).fetchall()
    cells = {bytes(g): (k, s) for g, k, s in rows}
    row = conn.execute("SELECT count(*) FROM placement_groups").fetchone()
    start = row[0] if row else 0
    new = placement.place_groups([g for g in wanted if g not in cells], start, layout)
    with conn.cursor() as cur:  # place_groups deals in sorted order: index = start + rank
        cur.executemany(
            "INSERT INTO placement_groups (group_hash, placed_index, shard, slice) VALUES (%s, %s, %s, %s)",
            [(g, start + i, *new[g]) for i, g in enumerate(sorted(new))],
        )
    return {**cells, **new}


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
