"""S3T training units as jobs on the durable queue (queue ``training``).

One job per (shard, sequence): a queueing lock keeps a unit from being queued twice and a lock
keeps two workers from training it at once. A worker killed mid-unit stops heart-beating; another
worker puts its job back in the queue, and the unit resumes from its last completed stage on the
shared artifacts volume (a stage is complete once its lineage file is written). ``run_unit``
checks first whether the unit still needs training, so a job run twice trains it once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import procrastinate
import psycopg

from service.store.database import DatabaseInfo
from service.workflow.queue import REGISTRY

TRAINING_QUEUE = "training"
log = logging.getLogger(__name__)

# Set by the worker's entry point: the database and the TrainingJob (base model, artifacts, specs).
CONTEXT: dict[str, Any] = {}


def _lock(shard: int, sequence: int) -> str:
    return f"s3t-unit-{shard}-{sequence}"


@REGISTRY.task(name="train_unit", queue=TRAINING_QUEUE, retry=3)
def train_unit(shard: int, sequence: int) -> None:
    from service import training

    log.warning("training unit shard=%d sequence=%d in pid %d", shard, sequence, os.getpid())
    done = training.run_unit(
        CONTEXT["db"],
        CONTEXT["job"],
        shard,
        sequence,
        progress=CONTEXT.get("progress", True),
        position=CONTEXT.get("position", 0),
    )
    log.warning("unit shard=%d sequence=%d %s", shard, sequence, f"published v{done[2]}" if done else "already done")


def enqueue(conn: psycopg.Connection, units: Sequence[tuple[int, int]]) -> int:
    """Queue a training job per (shard, sequence) not already queued or running, in the caller's
    transaction (a deletion's completion and its retrain jobs commit together); returns how many."""
    queued = 0
    for shard, sequence in units:
        lock = _lock(shard, sequence)
        try:
            with conn.transaction():  # a savepoint: a refused defer leaves the others standing
                train_unit.configure(connection=conn, lock=lock, queueing_lock=lock).defer(
                    shard=shard, sequence=sequence
                )
            queued += 1
        except procrastinate.exceptions.AlreadyEnqueued:
            pass
    return queued


def drain(db_url: str, job: object, threads: int = 0, position: int = 0) -> None:
    """Process entry point (a local training worker): run training jobs until none is queued or
    running, taking over the jobs of workers that died."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_training_worker(DatabaseInfo(db_url, embedded=False), job, once=True, position=position)


def run_training_worker(
    db: DatabaseInfo, job: object, *, once: bool = False, position: int = 0, progress: bool = True
) -> None:
    from service.workflow.worker import run_queues

    CONTEXT.update(db=db, job=job, position=position, progress=progress)
    import shards.train  # noqa: F401  (torch, transformers, peft: loaded before the first job)

    run_queues(db, [TRAINING_QUEUE], once=once)
