"""S3T training units as jobs on the durable queue (queue ``training``).

One job per (shard, sequence): a queueing lock keeps a unit from being queued twice and a lock
keeps two workers from training it at once. A worker killed mid-unit stops heart-beating; another
worker puts its job back in the queue, and the unit resumes from its last completed stage on the
shared artifacts volume (a stage is complete once its lineage file is written). ``run_unit``
checks first whether the unit still needs training, so a job run twice trains it once.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import cast

import procrastinate
import psycopg

from service import training
from service.store import jobs, s3t
from service.store.database import DatabaseInfo
from service.training import TrainingJob
from service.workflow.deps import DEPS, TrainingDeps
from service.workflow.queue import REGISTRY
from service.workflow.runner import run_queues

TRAINING_QUEUE = "training"
RETRAIN_MAX_POSTPONE = 10  # a debounced retrain starts at most this many delays after it was queued
log = logging.getLogger(__name__)


def _lock(shard: int, sequence: int) -> str:
    return f"s3t-unit-{shard}-{sequence}"


@REGISTRY.task(name="train_unit", queue=TRAINING_QUEUE, retry=3, pass_context=True)
def train_unit(context: procrastinate.JobContext, shard: int, sequence: int) -> None:
    deps = cast(TrainingDeps, context.additional_context[DEPS])
    log.warning("training unit shard=%d sequence=%d in pid %d", shard, sequence, os.getpid())
    done = training.run_unit(deps.db, deps.job, shard, sequence, progress=deps.progress, position=deps.position)
    log.warning("unit shard=%d sequence=%d %s", shard, sequence, f"published v{done[2]}" if done else "already done")
    if done and done[2] > 0 and deps.restore:  # a retrain: serve the depth it restored
        with deps.db.connect() as conn:
            enqueue_restore(conn)


def enqueue_restore(conn: psycopg.Connection) -> None:
    """Queue the rollout that serves what retrained units restored (the deletion lane's
    ``restore_depth``); units finishing while one is queued share it."""
    job = REGISTRY.configure_task("restore_depth", queueing_lock="restore-depth", connection=conn)
    with contextlib.suppress(procrastinate.exceptions.AlreadyEnqueued), conn.transaction():
        job.defer()


def enqueue(conn: psycopg.Connection, units: Sequence[tuple[int, int]], delay: float = 0.0) -> int:
    """Queue a training job per (shard, sequence) not already queued, in the caller's transaction
    (a deletion's completion and its retrain jobs commit together); returns how many.

    ``delay`` debounces: the jobs start ``delay`` seconds after the last call that queued
    training, every queued one postponed with them, so a burst of deletions retrains each unit it
    cut once, after the burst (never later than ``RETRAIN_MAX_POSTPONE`` delays after queueing)."""
    if delay > 0:
        jobs.postpone(conn, "train_unit", delay, RETRAIN_MAX_POSTPONE * delay)
    queued = 0
    for shard, sequence in units:
        lock = _lock(shard, sequence)
        try:
            with conn.transaction():  # a savepoint: a refused defer leaves the others standing
                train_unit.configure(
                    connection=conn,
                    lock=lock,
                    queueing_lock=lock,
                    schedule_in={"milliseconds": round(delay * 1000)} if delay > 0 else None,
                ).defer(shard=shard, sequence=sequence)
            queued += 1
        except procrastinate.exceptions.AlreadyEnqueued:
            pass
    return queued


def train_all(
    db: DatabaseInfo, job: TrainingJob, *, retrain: bool = True, restore: bool = True
) -> list[tuple[int, int, int]]:
    """Train every pending unit (see ``training.pending_units``) as jobs on the training queue,
    drained here by ``spec.workers`` local worker processes (on a cluster, training-worker pods
    drain it instead). Returns the (shard, sequence, version) trained. ``restore``: retrained
    units queue the rollout that serves them (a caller that rolls out itself says False)."""
    todo = training.pending_units(db, job, retrain=retrain)
    if not todo:
        return []
    with db.connect() as conn:
        jobs.start_now(conn, "train_unit")  # retrains a deletion queued for later: now
        enqueue(conn, [(u.shard, u.sequence) for u in todo])
    workers = max(1, min(len(todo), job.spec.workers or (os.cpu_count() or 1)))
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=drain, args=(db.url, job, threads, i, restore), daemon=True) for i in range(workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except BaseException:  # SIGTERM/SIGINT (SystemExit, KeyboardInterrupt): no worker outlives us
        _stop(procs)
        raise
    left = training.pending_units(db, job, retrain=retrain)
    if left:
        raise RuntimeError(f"training workers exited with units left: {[(u.shard, u.sequence) for u in left]}")
    with db.connect() as conn:
        live = {(u.shard, u.sequence): u.version for u in s3t.live_units(conn)}
    return sorted((u.shard, u.sequence, live[(u.shard, u.sequence)] or 0) for u in todo)


def _stop(procs: Sequence[BaseProcess], grace: float = 10.0) -> None:
    """Terminate the worker processes (their jobs are taken over by the next run), then kill."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(grace)
        if p.is_alive():
            p.kill()
            p.join()


def drain(db_url: str, job: TrainingJob, threads: int = 0, position: int = 0, restore: bool = True) -> None:
    """Process entry point (a local training worker): run training jobs until none is queued or
    running, taking over the jobs of workers that died."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    deps = TrainingDeps(DatabaseInfo(db_url, embedded=False), job, position, restore=restore)
    run_training_worker(deps, once=True)


def run_training_worker(deps: TrainingDeps, *, once: bool = False) -> None:
    import shards.train  # noqa: F401  (torch, transformers, peft: loaded before the first job)

    run_queues(deps.db, [([TRAINING_QUEUE], 1)], once=once, context={DEPS: deps})
