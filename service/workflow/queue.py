"""The job queue: procrastinate over the same PostgreSQL, and its schema.

Jobs are deferred on the caller's connection (``configure(connection=...)``), so a request
and its job commit together or not at all.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

import procrastinate
import psycopg

from service.core.deletions import Deletion
from service.store import jobs
from service.store.database import DatabaseInfo

QUEUE = "deletions"  # claim → apply: what makes a request forgotten
VERIFY_QUEUE = "verifications"  # verify → purge → complete, one job per batch
# The task registry (tasks are declared in service.workflow.steps, restore and training_jobs, imported by
# name when first needed: this module imports neither). Deferring on a caller's connection needs
# no pool, so it is never opened as is; a worker swaps in a connected connector for its lifetime
# (service.workflow.runner).
REGISTRY = procrastinate.App(
    connector=procrastinate.SyncPsycopgConnector(),
    import_paths=["service.workflow.steps", "service.workflow.restore", "service.workflow.training_jobs"],
)


def ensure_schema(db: DatabaseInfo) -> bool:
    """Apply procrastinate's schema once (it ships and versions its own); True if applied now."""
    with db.connect() as conn:
        if jobs.schema_applied(conn):
            return False
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=db.url))
    with app.open():
        app.schema_manager.apply_schema()
    return True


def enqueue_deletions(conn: psycopg.Connection, requests: Sequence[tuple[uuid.UUID, dict[str, str]]]) -> None:
    """Defer the workflow jobs of ``(request id, trace context)`` pairs in one statement, inside the
    caller's transaction; each job continues the trace of the request that submitted it."""
    if not requests:
        return
    jobs = [
        REGISTRY.configure_task("process_deletion", queueing_lock=str(deletion_id)).make_new_job(
            deletion_id=str(deletion_id), trace=dict[str, Any](trace)
        )
        for deletion_id, trace in requests
    ]
    REGISTRY.job_manager.batch_defer_jobs(jobs=jobs, connection=conn)


def enqueue_verification(conn: psycopg.Connection, batch_id: uuid.UUID, trace: dict[str, str] | None = None) -> None:
    """Defer the batch's verify-and-complete job in the caller's transaction (the one that marks its
    requests forgotten). At most one is queued per batch; a second, deferred by a re-run of the
    apply job after a crash, finds the first queued and is not needed."""
    job = REGISTRY.configure_task("verify_batch", queueing_lock=f"verify-{batch_id}", connection=conn)
    # in a savepoint: the refused insert must not abort the caller's transaction
    with contextlib.suppress(procrastinate.exceptions.AlreadyEnqueued), conn.transaction():
        job.defer(batch_id=str(batch_id), trace=dict(trace or {}))


def enqueue_callbacks(conn: psycopg.Connection, deletion: Deletion, milestone: str | None = None) -> None:
    """Defer one signed status callback per URL for the request's new state (or a ``milestone``
    within it: "forgotten", every routable replica serves weights without its records), in the
    caller's transaction."""
    forgotten = deletion.forgotten_time
    body = json.dumps(
        {
            "subject_request_id": str(deletion.id),
            "request_status": deletion.status.value,
            "expected_completion_time": deletion.deadline.isoformat(),
            "updated_time": deletion.updated_time.isoformat() if deletion.updated_time else None,
            "forgotten_time": forgotten.isoformat() if forgotten else None,
        },
        sort_keys=True,
    )
    for url in deletion.callback_urls:
        REGISTRY.configure_task("send_callback", connection=conn).defer(
            deletion_id=str(deletion.id), url=url, status=milestone or deletion.status.value, body=body
        )
