"""An in-memory DeletionStore (the core's storage port) for fast unit tests of the core. It applies
the same rules as the PostgreSQL store (service.core.rules); the PostgreSQL store's own tests
(tests/integration) remain what the product is judged by."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future

from service.core import errors, rules
from service.core.deletions import Deletion, Principal, Status


class MemoryDeletionStore:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, tuple[str, Deletion]] = {}  # id → (fingerprint, request)
        self.keys: dict[tuple[str, str], tuple[str, uuid.UUID]] = {}
        self.enqueued: list[uuid.UUID] = []  # the workflow jobs an accepted request gets
        self._lock = threading.Lock()

    def create(
        self, deletion: Deletion, principal: Principal, idempotency_key: str | None, fingerprint: str
    ) -> Future[tuple[Deletion, bool]]:
        out: Future[tuple[Deletion, bool]] = Future()
        sub = rules.Submission(deletion, principal.key_id, idempotency_key, fingerprint)
        with self._lock:
            stored = {deletion.id: self.rows[deletion.id][0]} if deletion.id in self.rows else {}
            (decision,) = rules.decide([sub], stored, self.keys)
            if isinstance(decision, errors.LetheError):
                out.set_exception(decision)
            elif isinstance(decision, rules.Replay):
                out.set_result((self.rows[decision.deletion_id][1], False))
            else:
                self.rows[deletion.id] = (fingerprint, deletion)
                if idempotency_key is not None:
                    self.keys[(principal.key_id, idempotency_key)] = (fingerprint, deletion.id)
                self.enqueued.append(deletion.id)
                out.set_result((deletion, True))
        return out

    def get(self, deletion_id: uuid.UUID) -> Deletion | None:
        row = self.rows.get(deletion_id)
        return row[1] if row else None

    def cancel(self, deletion_id: uuid.UUID, principal: Principal) -> Deletion:
        with self._lock:
            d = self.get(deletion_id)
            if d is None:
                raise errors.NotFound(f"no deletion request {deletion_id}")
            if not rules.cancellable(d):
                return d
            return self._set(d, Status.CANCELLED)

    def start(self, deletion_id: uuid.UUID) -> Deletion:
        """What the workflow's claim step does: pending → in progress."""
        d = self.get(deletion_id)
        assert d is not None
        return self._set(d, Status.IN_PROGRESS)

    def _set(self, d: Deletion, status: Status) -> Deletion:
        rules.check_transition(d.status, status)
        d = d.evolve(status=status)
        self.rows[d.id] = (self.rows[d.id][0], d)
        return d

    def list(self, status: Status | None, after: uuid.UUID | None, limit: int) -> list[Deletion]:
        items = sorted((d for _, d in self.rows.values()), key=lambda d: d.id)
        return [d for d in items if (status is None or d.status is status) and (after is None or d.id > after)][:limit]
