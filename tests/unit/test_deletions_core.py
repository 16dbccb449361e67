"""The deletion core on the in-memory store: the rules every transport shares, without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.core import errors
from service.core.deletions import Deletions, Principal, Scope, Status, SubmitDeletion
from tests.unit.memory_store import MemoryDeletionStore

KEY = b"k" * 32
ADMIN = Principal("admin", frozenset({Scope.ADMIN}))
WRITER = Principal("writer", frozenset({Scope.DELETIONS_WRITE}))
READER = Principal("reader", frozenset({Scope.DELETIONS_READ}))


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 3, 1, 12, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t


@pytest.fixture
def core():
    store = MemoryDeletionStore()
    return Deletions(store, Clock(), KEY, timedelta(days=30)), store


def cmd(i: int = 1, email: str = "ada@example.org", **more) -> SubmitDeletion:
    return SubmitDeletion(uuid.UUID(int=i), [("email", email)], **more)


def test_a_request_is_accepted_pending_with_its_deadline_and_a_job(core):
    c, store = core
    d, created = c.submit(cmd(), WRITER)
    assert created and d.status is Status.PENDING and d.deadline - d.received_time == timedelta(days=30)
    assert store.enqueued == [d.id] and c.get(d.id, READER) == d


def test_identities_are_kept_only_as_keyed_hashes(core):
    c, _ = core
    d, _ = c.submit(cmd(email="Ada@Example.org"), WRITER)
    assert "ada" not in repr(d).lower() and len(d.subject_hashes) == 1
    # normalised first: the same person spelled another way is the same request
    again, created = c.submit(cmd(email="ada@example.org "), WRITER)
    assert not created and again == d


def test_the_same_key_and_body_replays_and_another_body_is_refused(core):
    c, store = core
    first, _ = c.submit(cmd(1), WRITER, "key-1")
    replay, created = c.submit(cmd(1), WRITER, "key-1")
    assert not created and replay == first and store.enqueued == [first.id]
    with pytest.raises(errors.IdempotencyKeyReused):
        c.submit(cmd(2, email="bob@example.org"), WRITER, "key-1")
    other, created = c.submit(cmd(2, email="bob@example.org"), ADMIN, "key-1")  # keys are per principal
    assert created and other.id == uuid.UUID(int=2)


def test_the_same_id_with_other_content_is_a_conflict(core):
    c, _ = core
    c.submit(cmd(1), WRITER)
    with pytest.raises(errors.Conflict):
        c.submit(cmd(1, email="bob@example.org"), WRITER)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (SubmitDeletion(uuid.UUID(int=1), [("email", "a@b.c")], subject_request_type="access"), errors.InvalidInput),
        (SubmitDeletion(uuid.UUID(int=1), []), errors.InvalidInput),
        (SubmitDeletion(uuid.UUID(int=1), [("shoe_size", "42")]), errors.InvalidIdentity),
        (SubmitDeletion(uuid.UUID(int=1), [("email", f"{i}@b.c") for i in range(33)]), errors.InvalidInput),
        (SubmitDeletion(uuid.UUID(int=1), [], record_ids=["r"] * 1001), errors.InvalidInput),
        (SubmitDeletion(uuid.UUID(int=1), [("email", "a@b.c")], status_callback_urls=["ftp://x"]), errors.InvalidInput),
    ],
)
def test_bad_input_is_refused_before_anything_is_stored(core, bad, error):
    c, store = core
    with pytest.raises(error):
        c.submit(bad, WRITER)
    assert store.rows == {} and store.enqueued == []


def test_each_operation_needs_its_scope(core):
    c, _ = core
    with pytest.raises(errors.PermissionDenied):
        c.submit(cmd(), READER)
    d, _ = c.submit(cmd(), WRITER)
    with pytest.raises(errors.PermissionDenied):
        c.get(d.id, WRITER)
    with pytest.raises(errors.PermissionDenied):
        c.cancel(d.id, READER)
    with pytest.raises(errors.PermissionDenied):
        c.list(WRITER)


def test_only_a_pending_request_can_be_cancelled_and_cancelling_twice_is_harmless(core):
    c, store = core
    a, _ = c.submit(cmd(1), WRITER)
    b, _ = c.submit(cmd(2, email="bob@example.org"), WRITER)
    assert c.cancel(a.id, WRITER).status is Status.CANCELLED
    assert c.cancel(a.id, WRITER).status is Status.CANCELLED
    store.start(b.id)
    with pytest.raises(errors.NotCancellable):
        c.cancel(b.id, WRITER)
    with pytest.raises(errors.NotFound):
        c.cancel(uuid.UUID(int=99), WRITER)


def test_listing_pages_through_every_request_once(core):
    c, _ = core
    for i in range(1, 8):
        c.submit(cmd(i, email=f"p{i}@example.org"), WRITER)
    seen, cursor = [], None
    while True:
        page = c.list(READER, cursor=cursor, limit=3)
        seen += [d.id.int for d in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(range(1, 8))
    with pytest.raises(errors.InvalidInput):
        c.list(READER, cursor="not a cursor")
    with pytest.raises(errors.InvalidInput):
        c.list(READER, limit=0)
