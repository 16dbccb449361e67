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


def postpone(conn: psycopg.Connection, task_name: str, seconds: float, cap_seconds: float) -> int:
    """Debounce: push every queued (not yet started) ``task_name`` job to ``seconds`` from now, but
    never past ``cap_seconds`` after it was first deferred (a steady stream cannot starve it).
    Procrastinate has no API to reschedule a queued job: its ``scheduled_at`` is what it reads."""
    cur = conn.execute(
        """UPDATE procrastinate_jobs j
              SET scheduled_at = greatest(
                      coalesce(j.scheduled_at, now()),
                      least(now() + make_interval(secs => %(s)s),
                            coalesce((SELECT min(e.at) FROM procrastinate_events e
                                       WHERE e.job_id = j.id AND e.type = 'deferred'), now())
                            + make_interval(secs => %(cap)s)))
            WHERE j.task_name = %(task)s AND j.status = 'todo'""",
        {"s": seconds, "cap": cap_seconds, "task": task_name},
    )
    return cur.rowcount


def start_now(conn: psycopg.Connection, task_name: str) -> int:
    """Make every queued ``task_name`` job due now (undo a debounce's postponement)."""
    cur = conn.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = NULL WHERE task_name = %s AND status = 'todo'"
        " AND scheduled_at > now()",
        (task_name,),
    )
    return cur.rowcount


def queued(conn: psycopg.Connection, task_name: str) -> int:
    """``task_name`` jobs due or running (a job scheduled for later is not counted)."""
    row = conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s AND (status = 'doing'"
        " OR (status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())))",
        (task_name,),
    ).fetchone()
    return int(row[0]) if row else 0


def queued_args(conn: psycopg.Connection, task_name: str, arg: str) -> set[str]:
    """The values of argument ``arg`` of the ``task_name`` jobs queued and not started (neither
    running nor failed: a failed job is its own business)."""
    rows = conn.execute(
        "SELECT args->>%s FROM procrastinate_jobs WHERE task_name = %s AND status = 'todo'", (arg, task_name)
    ).fetchall()
    return {r[0] for r in rows if r[0] is not None}
