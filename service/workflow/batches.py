"""Coalescing: the requests a worker finds pending when it claims one are applied together.

The job that claims first leads: in one transaction it moves its own request and every other
pending one (up to ``limit``, oldest first, skipping rows another transaction holds) to
in-progress and names the batch in each request's result, ledger entry and ``batch_id``. The
members' own jobs then find their request claimed and leave it to the leader's job; a re-run of
the leader's job (a crash, a retry) resumes the batch from the stored membership. So a batch is
closed when it starts: a request never waits for one that arrived after it, and a request
cancelled before its batch started is not in it (cancelling needs it pending).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from service.core.deletions import Deletion, Status
from service.store import deletions as store
from service.store.database import DatabaseInfo
from service.workflow.queue import enqueue_callbacks


@dataclass(frozen=True)
class Batch:
    id: uuid.UUID
    leader: uuid.UUID
    members: list[Deletion]  # the leader's first if it is still open; only requests not yet final

    def info(self) -> dict[str, object]:
        """How the batch is named in each member's result and ledger entries."""
        return {"id": str(self.id), "leader": str(self.leader)}


def before_claim(db: DatabaseInfo, deletion_id: uuid.UUID, window: float) -> Status | None:
    """Before the apply lock: the request's status if its job has nothing to do (final, or claimed
    into a batch another job leads: a burst's members' jobs return at once instead of queueing for
    the lock one by one), else None, after a pending request waited until ``window`` seconds after
    it was received for others to join its batch (0: only those already pending join; so do those
    that arrive while another batch holds the apply lock)."""
    with db.connect() as conn:
        d = store.fetch(conn, deletion_id)
    if d is None:
        return None  # claim says why
    if d.status.final or (d.batch_id is not None and _leader(d) != d.id):
        return d.status
    if window > 0 and d.status is Status.PENDING:
        time.sleep(max(0.0, window - (datetime.now(UTC) - d.received_time).total_seconds()))
    return None


def claim(db: DatabaseInfo, deletion_id: uuid.UUID, limit: int) -> Batch | Status:
    """The batch this job runs, or the request's status when there is nothing for it to do: final,
    or in a batch another job leads."""
    with db.connect() as conn, conn.transaction():
        d = store.lock(conn, deletion_id)
        if d is None:
            return Status.FAILED
        if d.batch_id is not None and _leader(d) == d.id:  # a re-run of the leader's job
            members = [m for m in store.batch_members(conn, d.batch_id) if not m.status.final]
            return Batch(d.batch_id, d.id, members) if members else d.status
        if d.status.final:
            return d.status
        if d.status is Status.IN_PROGRESS:
            if d.batch_id is not None:
                return d.status  # its batch's leader applies it
            batch_id = uuid.uuid4()  # claimed alone, before batches existed
            store.join_batch(conn, [d.id], batch_id)
            d = store.add_result(conn, d, {"batch": {"id": str(batch_id), "leader": str(d.id), "requests": 1}})
            return Batch(batch_id, d.id, [d.evolve(batch_id=batch_id)])
        return _form(conn, d, limit)


def resume(db: DatabaseInfo, batch_id: uuid.UUID) -> Batch | None:
    """The batch as its verify job finds it: the members not final yet (None: nothing left)."""
    with db.connect() as conn:
        members = [m for m in store.batch_members(conn, batch_id) if not m.status.final]
    leaders = {_leader(m) for m in members}
    if not members or len(leaders) != 1 or None in leaders:
        return None
    leader = leaders.pop()
    assert leader is not None
    return Batch(batch_id, leader, members)


def _leader(d: Deletion) -> uuid.UUID | None:
    info = d.result.get("batch")
    return uuid.UUID(str(info["leader"])) if isinstance(info, dict) and "leader" in info else None


def _form(conn: psycopg.Connection, first: Deletion, limit: int) -> Batch:
    """``first`` and the other pending requests → in progress, one batch (their callbacks queued)."""
    others = store.claim_pending(conn, first.id, limit - 1)
    batch_id, now = uuid.uuid4(), datetime.now(UTC)
    info = {"id": str(batch_id), "leader": str(first.id), "requests": 1 + len(others)}
    members = []
    for d in [first, *others]:
        queued = round((now - d.received_time).total_seconds(), 6)
        d = store.transition(conn, d, Status.IN_PROGRESS, {"batch": info, "queue_seconds": queued})
        enqueue_callbacks(conn, d)
        members.append(d.evolve(batch_id=batch_id))
    store.join_batch(conn, [d.id for d in members], batch_id)
    return Batch(batch_id, first.id, members)
