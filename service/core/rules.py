"""A deletion request's rules, as pure functions over frozen values (no I/O, table-tested in
tests/unit/test_rules.py): which submissions are new, replays or errors (idempotency), which
status changes are allowed, and whether a request can still be cancelled. The stores apply them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.core import errors
from service.core.deletions import Deletion, Status

# pending → in_progress → completed | failed, or pending → cancelled; a final status never changes
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.IN_PROGRESS, Status.CANCELLED}),
    Status.IN_PROGRESS: frozenset({Status.COMPLETED, Status.FAILED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class Submission:
    """One request to accept, as the core built it."""

    deletion: Deletion
    principal: str  # the submitting API key's id: idempotency keys are per principal
    idempotency_key: str | None
    fingerprint: str  # Deletion.fingerprint(): what "the same request" means


@dataclass(frozen=True)
class Insert:
    """A new request: store it (and its idempotency key)."""


@dataclass(frozen=True)
class Replay:
    """Already accepted (earlier, or earlier in the same batch): answer with that request."""

    deletion_id: uuid.UUID


Decision = Insert | Replay | errors.LetheError
IdempotencyKeys = Mapping[tuple[str, str], tuple[str, uuid.UUID]]  # (principal, key) → (fingerprint, id)


def decide(
    batch: Sequence[Submission], stored_ids: Mapping[uuid.UUID, str], stored_keys: IdempotencyKeys
) -> list[Decision]:
    """Each submission's outcome, in order. ``stored_ids``: the fingerprints of the batch's ids
    already stored; ``stored_keys``: the batch's idempotency keys already taken. A submission
    earlier in the batch counts as stored for the ones after it. The key decides first: a key
    reused with another body is refused even if the id is new."""
    ids, keys = dict(stored_ids), dict(stored_keys)
    out: list[Decision] = []
    for s in batch:
        d, key = s.deletion, s.idempotency_key
        seen = keys.get((s.principal, key)) if key is not None else None
        if seen is not None:
            out.append(Replay(seen[1]) if seen[0] == s.fingerprint else errors.IdempotencyKeyReused())
            continue
        known = ids.get(d.id)
        if known is not None:
            same = known == s.fingerprint
            out.append(
                Replay(d.id) if same else errors.Conflict(f"deletion request {d.id} already exists with other content")
            )
            continue
        ids[d.id] = s.fingerprint
        if key is not None:
            keys[(s.principal, key)] = (s.fingerprint, d.id)
        out.append(Insert())
    return out


def check_transition(current: Status, new: Status) -> None:
    """Raise unless ``current`` → ``new`` is a step of the lifecycle."""
    if new not in TRANSITIONS[current]:
        raise errors.Conflict(f"a {current.value} deletion request cannot become {new.value}")


def cancellable(d: Deletion) -> bool:
    """True: cancel it now; False: already cancelled (cancelling is idempotent); NotCancellable
    once the workflow has started it."""
    if d.status is Status.CANCELLED:
        return False
    if d.status is not Status.PENDING:
        raise errors.NotCancellable(f"deletion request {d.id} is {d.status.value}")
    return True
