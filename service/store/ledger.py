"""The ledger in PostgreSQL: the one insert path, reads, checkpoints and export.

Appends take a transaction-scoped advisory lock so that ``seq`` is gap-free and the chain is
linear even with concurrent writers (serial ids are not commit order); several entries can
share one transaction (group commit). An entry is returned only once it is committed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from service.core import merkle
from service.core.chain import GENESIS, Entry, chain_hash

LOCK_KEY = 0x1E7E_1ED6  # pg_advisory_xact_lock key of the ledger


@dataclass(frozen=True)
class Tail:
    """The last entry's seq and hash, read under the ledger's lock: where the next entries chain on."""

    seq: int
    row_hash: bytes


def tail(conn: psycopg.Connection) -> Tail:
    """Take the ledger's lock for the caller's transaction and read its tail."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    row = conn.execute("SELECT seq, row_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1").fetchone()
    return Tail(row[0], bytes(row[1])) if row else Tail(0, GENESIS)


def write(conn: psycopg.Connection, at: Tail, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
    """Chain ``(kind, body)`` items onto ``at`` (from ``tail`` in this transaction) and insert them.
    Sends without waiting for an answer, so in pipeline mode it costs no round trip of its own."""
    out: list[Entry] = []
    seq, prev = at.seq, at.row_hash
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    for kind, body in items:
        seq += 1
        body = json.loads(json.dumps(body))  # exactly what jsonb will give back
        h = chain_hash(prev, seq, kind, body, now)
        out.append(Entry(seq, kind, body, now, prev, h))
        prev = h
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ledger_entries (seq, kind, body, created_at, prev_hash, row_hash)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [(e.seq, e.kind, Jsonb(e.body), e.created_at, e.prev_hash, e.row_hash) for e in out],
        )
    return out


def append(conn: psycopg.Connection, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
    """Append ``(kind, body)`` items in order, in the caller's transaction if there is one (else in
    a new one); return them with seq and hashes."""
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction() if idle else contextlib.nullcontext():
        return write(conn, tail(conn), items)


def entries(conn: psycopg.Connection, upto: int | None = None) -> Iterator[Entry]:
    """Every entry in storage order of seq (what a verifier reads)."""
    cur = conn.execute(
        "SELECT seq, kind, body, created_at, prev_hash, row_hash FROM ledger_entries"
        " WHERE %s::bigint IS NULL OR seq <= %s ORDER BY seq",
        (upto, upto),
    )
    for seq, kind, body, created_at, prev, h in cur:
        yield Entry(seq, kind, body, created_at, bytes(prev), bytes(h))


def entry(conn: psycopg.Connection, seq: int) -> Entry | None:
    row = conn.execute(
        "SELECT seq, kind, body, created_at, prev_hash, row_hash FROM ledger_entries WHERE seq = %s", (seq,)
    ).fetchone()
    return Entry(row[0], row[1], row[2], row[3], bytes(row[4]), bytes(row[5])) if row else None


def entries_about(conn: psycopg.Connection, request_id: str) -> list[Entry]:
    """A request's entries, in order (indexed by the request's id)."""
    rows = conn.execute(
        "SELECT seq, kind, body, created_at, prev_hash, row_hash FROM ledger_entries"
        " WHERE body->>'request' = %s ORDER BY seq",
        (request_id,),
    ).fetchall()
    return [Entry(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5])) for r in rows]


def size(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_entries").fetchone()
    return int(row[0]) if row else 0


def unsigned_age_seconds(conn: psycopg.Connection, covered: int) -> float | None:
    """Age of the oldest entry no checkpoint covers yet (None if every entry is covered)."""
    row = conn.execute(
        "SELECT extract(epoch FROM now() - created_at::timestamptz) FROM ledger_entries WHERE seq = %s", (covered + 1,)
    ).fetchone()
    return float(row[0]) if row else None


def leaf_hashes(conn: psycopg.Connection, upto: int) -> list[bytes]:
    rows = conn.execute("SELECT row_hash FROM ledger_entries WHERE seq <= %s ORDER BY seq", (upto,))
    return [merkle.leaf_hash(bytes(r[0])) for r in rows]


def add_checkpoint(conn: psycopg.Connection, size_: int, root: bytes, note: str) -> None:
    conn.execute(
        "INSERT INTO ledger_checkpoints (size, root, note) VALUES (%s, %s, %s) ON CONFLICT (size) DO NOTHING",
        (size_, root, note),
    )


def checkpoints(conn: psycopg.Connection) -> list[tuple[int, bytes, str]]:
    rows = conn.execute("SELECT size, root, note FROM ledger_checkpoints ORDER BY size")
    return [(s, bytes(r), n) for s, r, n in rows]


def latest_checkpoint(conn: psycopg.Connection) -> tuple[int, bytes, str, datetime] | None:
    row = conn.execute(
        "SELECT size, root, note, created_at FROM ledger_checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    return (row[0], bytes(row[1]), row[2], row[3]) if row else None
