"""The worker process: runs deletion jobs from the queue."""

from __future__ import annotations

import procrastinate

from service.ledger.log import Ledger
from service.store.database import DatabaseInfo
from service.workflow import steps
from service.workflow.queue import QUEUE, REGISTRY


def run_worker(db: DatabaseInfo, ledger: Ledger | None = None, *, once: bool = False, concurrency: int = 1) -> None:
    """Process jobs; with ``once``, stop when the queue is empty (tests, batch runs)."""
    steps.CONTEXT.update(db=db, ledger=ledger)
    with REGISTRY.replace_connector(procrastinate.PsycopgConnector(conninfo=db.url)) as app:
        app.run_worker(queues=[QUEUE], wait=not once, concurrency=concurrency, install_signal_handlers=not once)
