"""The deletion worker: runs the deletion saga's jobs from the queue."""

from __future__ import annotations

from service.workflow.deps import DEPS, DeletionDeps
from service.workflow.queue import QUEUE, VERIFY_QUEUE
from service.workflow.runner import run_queues


def run_worker(deps: DeletionDeps, *, once: bool = False, verify_concurrency: int = 1) -> None:
    """Process jobs; with ``once``, stop when the queue is empty (tests, batch runs).

    Two lanes: the jobs that make requests *forgotten* (claim → apply; serialised across workers
    by a lock anyway) and the jobs that verify and complete a batch (probes: tens of seconds), so
    a burst arriving while one batch is verified is applied at once, not after the probes.

    First, jobs left running by a dead worker (killed mid-step: no heartbeat) are put back in
    the queue; every step is idempotent, so running them again finishes them exactly once.
    """
    # the saga's tasks register with the queue on import; torch, safetensors and peft load in
    # seconds: pay that at start, not on a request's clock
    import shards.materialise
    import shards.train  # noqa: F401

    deps.engine.warm()  # likewise the served shards' adapters

    ledger = deps.ledger
    # a quiet ledger still gets its entries signed within about max_age_seconds
    ticks = [(min(ledger.max_age_seconds, 30.0), ledger.maybe_checkpoint)] if ledger is not None else []
    lanes = [([QUEUE], 1), ([VERIFY_QUEUE], verify_concurrency)]
    run_queues(deps.db, lanes, once=once, periodic=ticks, context={DEPS: deps})
