"""The job queue's own tables (procrastinate's schema), read where Lethe needs to know about them."""

from __future__ import annotations

import psycopg


def schema_applied(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
    return row is not None and row[0] is not None


def last_worker_id(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_workers").fetchone()
    return int(row[0]) if row else 0


def workers_since(conn: psycopg.Connection, worker_id: int) -> int:
    """Workers registered after ``worker_id`` (a worker registers once its imports are done)."""
    row = conn.execute("SELECT count(*) FROM procrastinate_workers WHERE id > %s", (worker_id,)).fetchone()
    return int(row[0]) if row else 0
