"""S3T state in PostgreSQL: units, stage artifacts and their lineage, placement, deleted records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from service.store.keystore import DataKeys
from service.store.records import record_aad
from shards.lineage import UnitLineage


@dataclass(frozen=True)
class LiveUnit:
    shard: int
    sequence: int
    order: tuple[int, ...]
    version: int | None  # None: never trained
    depth: int  # live stages of that version
    excluded: frozenset[str]
    path: str | None  # directory of the version's last live stage
    next_version: int  # versions are never reused, destroyed ones included


def layout(conn: psycopg.Connection) -> tuple[int, int] | None:
    row = conn.execute("SELECT shards, slices FROM s3t_layout").fetchone()
    return (row[0], row[1]) if row else None


def placement(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    return {rid: (k, s) for rid, k, s in conn.execute("SELECT id, shard, slice FROM records WHERE shard IS NOT NULL")}


def records_by_cell(
    conn: psycopg.Connection, keys: DataKeys, shard: int | None = None
) -> dict[tuple[int, int], list[tuple[str, str, bytes]]]:
    """Training data: (id, text, content hash) of every placed record no deletion has cut or
    purged, by (shard, slice). A record whose key is already destroyed (a deletion between its
    purge and its commit) is being deleted: it is left out."""
    out: dict[tuple[int, int], list[tuple[str, str, bytes]]] = {}
    rows = conn.execute(
        "SELECT shard, slice, id, sealed, key_id, text, content_hash FROM records WHERE shard IS NOT NULL"
        " AND purged_at IS NULL AND cut_at IS NULL AND (%s::int IS NULL OR shard = %s) ORDER BY id",
        (shard, shard),
    )
    for k, s, rid, sealed, key_id, legacy, ch in rows:
        text = legacy if sealed is None else keys.open(key_id, sealed, record_aad(rid))
        if text is not None:
            out.setdefault((k, s), []).append((rid, text, bytes(ch)))
    return out


def record_texts(conn: psycopg.Connection, keys: DataKeys, ids: Iterable[str]) -> list[str]:
    """The readable texts of these records (none once purged or shredded)."""
    rows = conn.execute(
        "SELECT id, sealed, key_id, text FROM records WHERE id = ANY(%s) AND purged_at IS NULL ORDER BY id",
        (list(ids),),
    )
    texts = (
        legacy if sealed is None else keys.open(key_id, sealed, record_aad(rid)) for rid, sealed, key_id, legacy in rows
    )
    return [t for t in texts if t is not None]


def shards_of(conn: psycopg.Connection, record_ids: list[str]) -> list[int]:
    """The shards holding these records that S3T has trained (artifacts, destroyed ones included)."""
    rows = conn.execute(
        "SELECT DISTINCT r.shard FROM records r WHERE r.id = ANY(%s) AND r.shard IS NOT NULL"
        " AND EXISTS (SELECT 1 FROM s3t_artifacts a WHERE a.shard = r.shard) ORDER BY 1",
        (record_ids,),
    )
    return [r[0] for r in rows]


def deleted_records(conn: psycopg.Connection) -> set[str]:
    """Records a deletion has cut (their text may wait for the probes) or purged."""
    return {r[0] for r in conn.execute("SELECT id FROM records WHERE cut_at IS NOT NULL OR purged_at IS NOT NULL")}


def mark_cut(conn: psycopg.Connection, ids: Iterable[str]) -> None:
    """These records are being deleted: no training reads them from now on (in the cut's transaction)."""
    conn.execute("UPDATE records SET cut_at = now() WHERE id = ANY(%s) AND cut_at IS NULL", (list(ids),))


def known_record_ids(conn: psycopg.Connection, ids: Iterable[str]) -> list[str]:
    """Those of ``ids`` that are (or were: text purged) training records."""
    rows = conn.execute("SELECT id FROM records WHERE id = ANY(%s) ORDER BY id", (list(ids),)).fetchall()
    return [r[0] for r in rows]


def same_text_records(conn: psycopg.Connection, ids: Iterable[str]) -> list[str]:
    """Records not in ``ids``, not purged, holding the same text as one of ``ids`` (equal normalised-
    text key, or equal content hash)."""
    rows = conn.execute(
        """SELECT DISTINCT o.id FROM records r JOIN records o
               ON (o.text_key = r.text_key OR o.content_hash = r.content_hash)
           WHERE r.id = ANY(%(ids)s) AND NOT o.id = ANY(%(ids)s) AND o.purged_at IS NULL ORDER BY o.id""",
        {"ids": list(ids)},
    ).fetchall()
    return [r[0] for r in rows]


def record_ids_of_subjects(conn: psycopg.Connection, subject_hashes: Iterable[bytes]) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT record_id FROM record_subjects WHERE subject_hash = ANY(%s) ORDER BY record_id",
        (list(subject_hashes),),
    )
    return [r[0] for r in rows]


def ensure_units(conn: psycopg.Connection, orders: dict[int, list[tuple[int, ...]]]) -> None:
    """Record each (shard, sequence)'s slice order; an existing unit must keep its order."""
    with conn.transaction():
        for shard, seqs in orders.items():
            for seq, order in enumerate(seqs):
                conn.execute(
                    "INSERT INTO s3t_units (shard, sequence, slice_order) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (shard, seq, list(order)),
                )
                row = conn.execute(
                    "SELECT slice_order FROM s3t_units WHERE shard = %s AND sequence = %s", (shard, seq)
                ).fetchone()
                if row is None or tuple(row[0]) != order:
                    raise ValueError(f"unit ({shard}, {seq}) was trained with order {row and row[0]}, not {order}")


def register(conn: psycopg.Connection, lineage: UnitLineage, path: str) -> None:
    conn.execute(
        """INSERT INTO s3t_artifacts (shard, sequence, version, stage, path, adapter_sha256, lineage)
           VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (shard, sequence, version, stage) DO NOTHING""",
        (
            lineage.shard,
            lineage.sequence,
            lineage.version,
            lineage.stage,
            path,
            lineage.adapter_sha256,
            Jsonb(json.loads(lineage.to_json())),
        ),
    )


def live_units(conn: psycopg.Connection) -> list[LiveUnit]:
    """Every unit with its newest version that still has live stages (or none yet)."""
    rows = conn.execute(
        """SELECT u.shard, u.sequence, u.slice_order, a.version, a.depth, a.excluded, a.path,
                  (SELECT coalesce(max(version) + 1, 0) FROM s3t_artifacts
                    WHERE shard = u.shard AND sequence = u.sequence)
             FROM s3t_units u
             LEFT JOIN LATERAL (
                 SELECT version, count(*) AS depth,
                        (array_agg(lineage->'excluded' ORDER BY stage DESC))[1] AS excluded,
                        (array_agg(path ORDER BY stage DESC))[1] AS path
                   FROM s3t_artifacts
                  WHERE shard = u.shard AND sequence = u.sequence AND destroyed_at IS NULL
                  GROUP BY version ORDER BY version DESC LIMIT 1) a ON true
            ORDER BY u.shard, u.sequence"""
    )
    return [
        LiveUnit(k, j, tuple(order), v, int(depth or 0), frozenset(excl or ()), path, nxt)
        for k, j, order, v, depth, excl, path, nxt in rows
    ]


def live_lineage(
    conn: psycopg.Connection, shard: int, sequence: int, version: int, stage: int
) -> dict[str, Any] | None:
    """The lineage (shards/lineage.py's UnitLineage as JSON) of a stage that is not destroyed."""
    row = conn.execute(
        "SELECT lineage FROM s3t_artifacts WHERE shard = %s AND sequence = %s AND version = %s AND stage = %s"
        " AND destroyed_at IS NULL",
        (shard, sequence, version, stage),
    ).fetchone()
    return dict(row[0]) if row else None


def destroy(conn: psycopg.Connection, shard: int, sequence: int, from_stage: int) -> list[str]:
    """Mark every version's stages ≥ ``from_stage`` destroyed; return their paths (to delete)."""
    rows = conn.execute(
        """UPDATE s3t_artifacts SET destroyed_at = now()
            WHERE shard = %s AND sequence = %s AND stage >= %s AND destroyed_at IS NULL RETURNING path""",
        (shard, sequence, from_stage),
    )
    return [r[0] for r in rows]


def destroy_versions_before(conn: psycopg.Connection, shard: int, sequence: int, version: int) -> list[str]:
    rows = conn.execute(
        """UPDATE s3t_artifacts SET destroyed_at = now()
            WHERE shard = %s AND sequence = %s AND version < %s AND destroyed_at IS NULL RETURNING path""",
        (shard, sequence, version),
    )
    return [r[0] for r in rows]


def purge_records(conn: psycopg.Connection, keys: DataKeys, ids: Iterable[str]) -> int:
    """Shred the records' text: the ciphertext dropped and its keys destroyed, in the caller's
    transaction (a commit lost after the keys went leaves rows nobody can read, purged again by
    the re-run)."""
    rows = conn.execute(
        """WITH old AS (SELECT id, key_id FROM records WHERE id = ANY(%s) AND purged_at IS NULL FOR UPDATE)
           UPDATE records r SET text = NULL, sealed = NULL, key_id = NULL, purged_at = now()
             FROM old WHERE r.id = old.id RETURNING old.key_id""",
        (list(ids),),
    ).fetchall()
    keys.destroy(r[0] for r in rows)
    return len(rows)


def purged(conn: psycopg.Connection, ids: Iterable[str]) -> int:
    """How many of these records are purged: no text, no ciphertext, no key left to name."""
    row = conn.execute(
        "SELECT count(*) FROM records WHERE id = ANY(%s) AND purged_at IS NOT NULL"
        " AND text IS NULL AND sealed IS NULL AND key_id IS NULL",
        (list(ids),),
    ).fetchone()
    return int(row[0]) if row else 0


def set_desired(
    conn: psycopg.Connection, shard: int, name: str | None, path: str | None, sha256: str | None, request_id: object
) -> tuple[str | None, str | None]:
    """Record what a shard should serve; returns what it was set to before (name, sha256)."""
    row = conn.execute(
        "SELECT adapter_name, adapter_sha256 FROM desired_adapters WHERE shard = %s FOR UPDATE", (shard,)
    ).fetchone()
    conn.execute(
        """INSERT INTO desired_adapters (shard, adapter_name, path, adapter_sha256, request_id)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (shard) DO UPDATE SET adapter_name = EXCLUDED.adapter_name, path = EXCLUDED.path,
               adapter_sha256 = EXCLUDED.adapter_sha256, request_id = EXCLUDED.request_id, updated_at = now()""",
        (shard, name, path, sha256, request_id),
    )
    return (row[0], row[1]) if row else (None, None)


def desired(conn: psycopg.Connection) -> dict[int, tuple[str | None, str | None]]:
    return {k: (n, h) for k, n, h in conn.execute("SELECT shard, adapter_name, adapter_sha256 FROM desired_adapters")}


def destroyed_paths(conn: psycopg.Connection) -> list[str]:
    """The directories of every destroyed stage (their files may be left by an interrupted cut)."""
    return [r[0] for r in conn.execute("SELECT path FROM s3t_artifacts WHERE destroyed_at IS NOT NULL")]
