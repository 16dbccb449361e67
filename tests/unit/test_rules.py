"""The deletion request's rules as a table: idempotency decisions, the lifecycle, cancellation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from service.core import errors
from service.core.deletions import Deletion, Status
from service.core.rules import TRANSITIONS, Insert, Replay, Submission, cancellable, check_transition, decide

ID1, ID2 = uuid.UUID(int=1), uuid.UUID(int=2)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def deletion(i: uuid.UUID, status: Status = Status.PENDING) -> Deletion:
    return Deletion(i, "erasure", (b"h",), ("email",), (), None, NOW, NOW, status)


def sub(i: uuid.UUID, fp: str, key: str | None = None, who: str = "k1") -> Submission:
    return Submission(deletion(i), who, key, fp)


CASES = [
    # (name, batch, stored ids, stored keys, expected)
    ("new id", [sub(ID1, "a")], {}, {}, [Insert()]),
    ("same id, same body: replay", [sub(ID1, "a")], {ID1: "a"}, {}, [Replay(ID1)]),
    ("same id, other body: conflict", [sub(ID1, "b")], {ID1: "a"}, {}, [errors.Conflict]),
    (
        "key seen with this body: replay of its request",
        [sub(ID2, "a", "k")],
        {},
        {("k1", "k"): ("a", ID1)},
        [Replay(ID1)],
    ),
    (
        "key seen with another body: refused",
        [sub(ID2, "b", "k")],
        {},
        {("k1", "k"): ("a", ID1)},
        [errors.IdempotencyKeyReused],
    ),
    ("keys are per principal", [sub(ID2, "b", "k", who="k2")], {}, {("k1", "k"): ("a", ID1)}, [Insert()]),
    ("the key decides before the id", [sub(ID1, "b", "k")], {ID1: "a"}, {("k1", "k"): ("b", ID2)}, [Replay(ID2)]),
    (
        "twice in one batch: the second replays the first",
        [sub(ID1, "a"), sub(ID1, "a")],
        {},
        {},
        [Insert(), Replay(ID1)],
    ),
    ("twice in one batch, other body: conflict", [sub(ID1, "a"), sub(ID1, "b")], {}, {}, [Insert(), errors.Conflict]),
    (
        "a key taken earlier in the batch",
        [sub(ID1, "a", "k"), sub(ID2, "b", "k")],
        {},
        {},
        [Insert(), errors.IdempotencyKeyReused],
    ),
    (
        "a refused submission takes nothing",
        [sub(ID1, "b"), sub(ID1, "b")],
        {ID1: "a"},
        {},
        [errors.Conflict, errors.Conflict],
    ),
]


@pytest.mark.parametrize(("name", "batch", "ids", "keys", "expected"), CASES, ids=[c[0] for c in CASES])
def test_idempotency_decisions(name, batch, ids, keys, expected):
    got = decide(batch, ids, keys)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, type):
            assert type(g) is e, (name, g)
        else:
            assert g == e, (name, g)


def test_decide_does_not_change_what_it_was_given():
    ids, keys = {ID1: "a"}, {("k1", "k"): ("a", ID1)}
    decide([sub(ID2, "b", "k2")], ids, keys)
    assert ids == {ID1: "a"} and keys == {("k1", "k"): ("a", ID1)}


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("new", list(Status))
def test_the_lifecycle(current, new):
    allowed = {
        (Status.PENDING, Status.IN_PROGRESS),
        (Status.PENDING, Status.CANCELLED),
        (Status.IN_PROGRESS, Status.COMPLETED),
        (Status.IN_PROGRESS, Status.FAILED),
    }
    assert (new in TRANSITIONS[current]) == ((current, new) in allowed)
    if (current, new) in allowed:
        check_transition(current, new)
    else:
        with pytest.raises(errors.Conflict):
            check_transition(current, new)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status.PENDING, True),
        (Status.CANCELLED, False),
        (Status.IN_PROGRESS, errors.NotCancellable),
        (Status.COMPLETED, errors.NotCancellable),
        (Status.FAILED, errors.NotCancellable),
    ],
)
def test_cancellation(status, expected):
    if isinstance(expected, bool):
        assert cancellable(deletion(ID1, status)) is expected
    else:
        with pytest.raises(expected):
            cancellable(deletion(ID1, status))
