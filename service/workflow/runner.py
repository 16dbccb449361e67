"""Runs the jobs of some queues of the job queue: procrastinate's worker, plus taking over the
jobs of dead workers and periodic duties. Shared by the deletion worker and the training worker."""

from __future__ import annotations

import asyncio
import logging
import signal
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import procrastinate
from procrastinate.worker import Worker

from service.store.database import DatabaseInfo
from service.workflow.queue import REGISTRY

HEARTBEAT_SECONDS = 1.0
POLL_SECONDS = 0.5  # fallback when a job's NOTIFY lands while the worker is between jobs
STALLED_AFTER_SECONDS = 3.0  # at start: a worker silent this long is dead, its jobs are retried
# While running, a stricter test: another worker busy with a heavy job may miss a few heartbeats,
# and retrying a job that still runs would run it twice at once.
RESCUE_AFTER_SECONDS = 15.0
log = logging.getLogger(__name__)


def run_queues(
    db: DatabaseInfo,
    lanes: Sequence[tuple[Sequence[str], int]],
    *,
    once: bool = False,
    periodic: Sequence[tuple[float, Callable[[], object]]] = (),
    context: dict[str, Any] | None = None,
) -> None:
    """Run the jobs of some queues, in lanes: (queues, concurrency) pairs, each a procrastinate
    worker of its own, so a lane's slow jobs never hold up another lane's. Jobs left running by a
    dead worker (killed mid-step: no heartbeat) go back to the queue, at start and every few seconds
    while running. With ``once``, return when no job of these queues is queued or running any
    more. ``periodic``: (seconds, function) pairs called in a thread that often while the worker
    runs. ``context``: what the tasks find in their job context's ``additional_context`` (their
    dependencies). SIGTERM and SIGINT stop every lane after its running jobs."""
    queues = [q for lane, _ in lanes for q in lane]

    async def main() -> None:
        # A second App on an async connector fetches and runs the jobs, while the tasks stay bound to
        # REGISTRY's sync connector: jobs deferred from inside a job (status callbacks) go through it,
        # on the job's own psycopg connection and transaction.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            app = REGISTRY.with_connector(procrastinate.PsycopgConnector(conninfo=db.url))
        async with app.open_async():
            app.perform_import_paths()  # type: ignore[no-untyped-call]
            background = [asyncio.create_task(_rescue_stalled(app, queues))]
            after = STALLED_AFTER_SECONDS
            background += [asyncio.create_task(_every(seconds, fn)) for seconds, fn in periodic]
            try:
                while True:
                    await _retry_stalled(app, queues, after)
                    after = RESCUE_AFTER_SECONDS
                    await _run_lanes(app, lanes, once, context or {})
                    if not once or not await _unfinished(app, queues):
                        return
                    await asyncio.sleep(POLL_SECONDS)  # another worker still runs one: it may die
            finally:
                for task in background:
                    task.cancel()

    asyncio.run(main())


async def _run_lanes(
    app: procrastinate.App, lanes: Sequence[tuple[Sequence[str], int]], once: bool, context: dict[str, Any]
) -> None:
    """One procrastinate worker per lane, together; a stop signal stops them all."""
    workers = [
        Worker(
            app=app,
            queues=list(lane),
            name="+".join(lane),
            wait=not once,
            concurrency=concurrency,
            install_signal_handlers=False,  # one handler for every lane, below
            update_heartbeat_interval=HEARTBEAT_SECONDS,
            stalled_worker_timeout=RESCUE_AFTER_SECONDS,
            fetch_job_polling_interval=POLL_SECONDS,
            additional_context=context,
        )
        for lane, concurrency in lanes
    ]
    loop, signals = asyncio.get_running_loop(), () if once else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, _stop_all, workers)
    try:
        await asyncio.gather(*(w.run() for w in workers))  # type: ignore[no-untyped-call]
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _stop_all(workers: list[Worker]) -> None:
    for w in workers:
        w.stop()  # type: ignore[no-untyped-call]


async def _retry_stalled(app: procrastinate.App, queues: list[str], after: float) -> None:
    for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=after):
        if job.queue in queues:
            await app.job_manager.retry_job(job)


async def _every(seconds: float, fn: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(fn)
        except Exception:  # a periodic duty must not stop the worker; the next tick retries
            log.exception("periodic %s failed", getattr(fn, "__qualname__", fn))


async def _rescue_stalled(app: procrastinate.App, queues: list[str]) -> None:
    while True:
        await asyncio.sleep(STALLED_AFTER_SECONDS)
        await _retry_stalled(app, queues, RESCUE_AFTER_SECONDS)


async def _unfinished(app: procrastinate.App, queues: list[str]) -> int:
    counts = await app.job_manager.list_queues_async()
    return sum(q["todo"] + q["doing"] for q in counts if q["name"] in queues)
