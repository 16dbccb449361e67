"""What the Prometheus collector reads, in one round of queries at scrape time (service.metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from service.store import s3t


@dataclass(frozen=True)
class Snapshot:
    now: datetime  # the database's clock: ages agree whichever replica is scraped
    by_status: dict[str, int]
    pending_jobs: dict[str, int]  # queue → jobs to do
    ledger_size: int
    last_checkpoint: Any  # (size, created_at) or None
    first_unsigned: Any  # (created_at,) of the first entry no checkpoint covers, or None
    open_rows: list[Any]  # (received_time, deadline) of open requests
    done: list[Any]  # (seconds to completion, stage_seconds) of completed requests
    failed: list[Any]  # (verification,) of failed requests
    forgotten: list[Any]  # (seconds from accepted to forgotten,) of requests that reached it
    rollouts_waiting: int
    verdicts: dict[str, int]
    served_generation: int | None
    replicas: list[Any]  # (id, routable, acked generation, heartbeat_at)
    layout: tuple[int, int] | None
    units: list[s3t.LiveUnit]


def _one(conn: psycopg.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    return conn.execute(sql, params).fetchone()


_FORGOTTEN = (
    "SELECT extract(epoch FROM forgotten_time - received_time) FROM deletion_requests WHERE forgotten_time IS NOT NULL"
)


def snapshot(conn: psycopg.Connection, open_statuses: Sequence[str]) -> Snapshot:
    clock = _one(conn, "SELECT now()")
    entries = _one(conn, "SELECT coalesce(max(seq), 0) FROM ledger_entries")  # gap-free
    waiting = _one(
        conn, "SELECT count(*) FROM deletion_requests WHERE status = 'in_progress' AND result ? 'rollout_waiting'"
    )
    served = _one(conn, "SELECT generation FROM served_model")
    layout = s3t.layout(conn)
    return Snapshot(
        now=clock[0] if clock else datetime.now(UTC),
        by_status=dict(conn.execute("SELECT status, count(*) FROM deletion_requests GROUP BY status").fetchall()),
        pending_jobs=dict(
            conn.execute(
                "SELECT queue_name, count(*) FILTER (WHERE status = 'todo') FROM procrastinate_jobs GROUP BY 1"
            ).fetchall()
        ),
        ledger_size=int(entries[0] if entries else 0),
        last_checkpoint=_one(conn, "SELECT size, created_at FROM ledger_checkpoints ORDER BY size DESC LIMIT 1"),
        first_unsigned=_one(
            conn,
            "SELECT created_at FROM ledger_entries"
            " WHERE seq = (SELECT coalesce(max(size), 0) + 1 FROM ledger_checkpoints)",
        ),
        open_rows=conn.execute(
            "SELECT received_time, deadline FROM deletion_requests WHERE status = ANY(%s)", (list(open_statuses),)
        ).fetchall(),
        done=conn.execute(
            "SELECT extract(epoch FROM completed_time - received_time), result->'stage_seconds'"
            " FROM deletion_requests WHERE status = 'completed'"
        ).fetchall(),
        failed=conn.execute(
            "SELECT result->'verification' FROM deletion_requests WHERE status = 'failed' AND result ? 'verification'"
        ).fetchall(),
        forgotten=conn.execute(_FORGOTTEN).fetchall(),
        rollouts_waiting=int(waiting[0] if waiting else 0),
        verdicts=dict(
            conn.execute(
                "SELECT result->'verification'->>'verdict', count(*) FROM deletion_requests"
                " WHERE status = 'completed' AND result->'verification' ? 'verdict' GROUP BY 1"
            ).fetchall()
        ),
        served_generation=int(served[0]) if served else None,
        replicas=conn.execute(
            "SELECT id, routable, coalesce(acked_generation, 0), heartbeat_at FROM replicas ORDER BY id"
        ).fetchall(),
        layout=layout,
        units=s3t.live_units(conn) if layout else [],
    )
