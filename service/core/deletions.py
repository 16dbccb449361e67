"""Deletion requests: the domain and the one core every transport calls.

Shapes follow OpenDSR: ``subject_request_id`` (UUID chosen by the controller),
``subject_request_type`` (erasure), ``subject_identities`` and ``status_callback_urls``.
Statuses: pending → in_progress → completed | failed, or pending → cancelled. Identities are
turned into keyed hashes here and never stored, logged or returned in clear.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from service.core import errors, validation
from service.core.identity import IDENTITY_TYPES, subject_hash
from service.tracing import tracer

MAX_IDENTITIES = 32
MAX_CALLBACKS = 4
MAX_RECORD_IDS = 1000
MAX_PAGE = 500


class Status(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (Status.COMPLETED, Status.CANCELLED, Status.FAILED)


class Scope(enum.StrEnum):
    DELETIONS_WRITE = "deletions:write"
    DELETIONS_READ = "deletions:read"
    LEDGER_READ = "ledger:read"
    INFERENCE = "inference"  # the OpenAI-compatible gateway (and the retrieval proxy)
    KB_READ = "kb:read"
    KB_WRITE = "kb:write"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes and Scope.ADMIN not in self.scopes:
            raise errors.PermissionDenied(f"this operation needs the {scope.value!r} scope")


@dataclass(frozen=True)
class SubmitDeletion:
    """What a client asks for, already shape-checked by its transport."""

    subject_request_id: uuid.UUID
    subject_identities: Sequence[tuple[str, str]]  # (type, value)
    subject_request_type: str = "erasure"
    submitted_time: datetime | None = None
    status_callback_urls: Sequence[str] = ()
    record_ids: Sequence[str] = ()


@dataclass(frozen=True)
class Deletion:
    id: uuid.UUID
    request_type: str
    subject_hashes: tuple[bytes, ...]
    identity_types: tuple[str, ...]
    record_ids: tuple[str, ...]
    submitted_time: datetime | None
    received_time: datetime
    deadline: datetime
    status: Status
    callback_urls: tuple[str, ...] = ()
    updated_time: datetime | None = None
    completed_time: datetime | None = None
    result: dict[str, object] = field(default_factory=dict)  # plan, verification summary, receipt seq
    forgotten_time: datetime | None = None  # every routable replica serves weights without its records
    batch_id: uuid.UUID | None = None  # the requests applied together with it share it

    def evolve(self, **changes: object) -> Deletion:
        return replace(self, **changes)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """A hash of the request's meaning, for idempotency comparisons: identities as their keyed
        hashes (normalised first, so one email spelled two ways is the same request)."""
        doc = {
            "id": str(self.id),
            "type": self.request_type,
            "subjects": [h.hex() for h in self.subject_hashes],
            "submitted": self.submitted_time.isoformat() if self.submitted_time else None,
            "callbacks": sorted(self.callback_urls),
            "records": list(self.record_ids),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Page:
    items: list[Deletion]
    next_cursor: str | None


class DeletionStore(Protocol):
    """The storage port. Each method is one transaction; ``create`` also appends the ledger
    entry and enqueues the workflow job in that transaction, so an accepted request is durable.
    ``create`` returns at once: its future resolves when that transaction has committed (a store
    may group-commit several requests), so an async edge can wait without holding a thread."""

    def create(
        self, deletion: Deletion, principal: Principal, idempotency_key: str | None, fingerprint: str
    ) -> Future[tuple[Deletion, bool]]: ...
    def get(self, deletion_id: uuid.UUID) -> Deletion | None: ...
    def cancel(self, deletion_id: uuid.UUID, principal: Principal) -> Deletion: ...
    def list(self, status: Status | None, after: uuid.UUID | None, limit: int) -> list[Deletion]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class Deletions:
    """The core: every transport calls these methods and only translates in and out."""

    def __init__(self, store: DeletionStore, clock: Clock, hmac_key: bytes, deadline: timedelta) -> None:
        self.store, self.clock, self.key, self.deadline = store, clock, hmac_key, deadline

    def submit(
        self, cmd: SubmitDeletion, principal: Principal, idempotency_key: str | None = None
    ) -> tuple[Deletion, bool]:
        """Accept a request (or replay the one accepted under the same key); returns (deletion, created)
        once it is committed."""
        return self.accept(cmd, principal, idempotency_key).result()

    def accept(
        self, cmd: SubmitDeletion, principal: Principal, idempotency_key: str | None = None
    ) -> Future[tuple[Deletion, bool]]:
        """``submit`` without the wait: invalid input raises here; the future resolves to (deletion,
        created) once committed, or to the store's error (e.g. the key reused with another body)."""
        principal.require(Scope.DELETIONS_WRITE)
        if cmd.subject_request_type != "erasure":
            raise errors.InvalidInput(f"unsupported subject_request_type {cmd.subject_request_type!r}; only 'erasure'")
        if not cmd.subject_identities and not cmd.record_ids:
            raise errors.InvalidInput("give at least one subject identity or record id")
        if len(cmd.subject_identities) > MAX_IDENTITIES or len(cmd.status_callback_urls) > MAX_CALLBACKS:
            raise errors.InvalidInput(f"at most {MAX_IDENTITIES} identities and {MAX_CALLBACKS} callback URLs")
        if len(cmd.record_ids) > MAX_RECORD_IDS:
            raise errors.InvalidInput(f"at most {MAX_RECORD_IDS} record ids")
        record_ids = [validation.RECORD_ID.check(r) for r in cmd.record_ids]
        callbacks = [validation.callback_url(u) for u in cmd.status_callback_urls]
        if idempotency_key is not None:
            validation.IDEMPOTENCY_KEY.check(idempotency_key)
        for kind, _ in cmd.subject_identities:
            if kind not in IDENTITY_TYPES:
                raise errors.InvalidIdentity(f"unknown identity_type {kind!r}; one of {sorted(IDENTITY_TYPES)}")
        raws = [f"{t}:{v}" for t, v in cmd.subject_identities]
        hashes = tuple(sorted({subject_hash(self.key, r) for r in raws}))
        types = tuple(sorted({t for t, _ in cmd.subject_identities}))
        now = self.clock.now()
        deletion = Deletion(
            id=cmd.subject_request_id,
            request_type=cmd.subject_request_type,
            subject_hashes=hashes,
            identity_types=types,
            record_ids=tuple(sorted(set(record_ids))),
            submitted_time=cmd.submitted_time,
            received_time=now,
            deadline=now + self.deadline,
            status=Status.PENDING,
            callback_urls=tuple(callbacks),
            updated_time=now,
        )
        with tracer.start_as_current_span("deletions.submit", attributes={"lethe.request_id": str(deletion.id)}):
            return self.store.create(deletion, principal, idempotency_key, deletion.fingerprint())

    def get(self, deletion_id: uuid.UUID, principal: Principal) -> Deletion:
        principal.require(Scope.DELETIONS_READ)
        found = self.store.get(deletion_id)
        if found is None:
            raise errors.NotFound(f"no deletion request {deletion_id}")
        return found

    def cancel(self, deletion_id: uuid.UUID, principal: Principal) -> Deletion:
        principal.require(Scope.DELETIONS_WRITE)
        return self.store.cancel(deletion_id, principal)

    def list(
        self, principal: Principal, status: Status | None = None, cursor: str | None = None, limit: int = 50
    ) -> Page:
        principal.require(Scope.DELETIONS_READ)
        validation.page_size(limit, MAX_PAGE)
        after = decode_cursor(cursor) if cursor else None
        items = self.store.list(status, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return Page(items, encode_cursor(items[-1].id) if more and items else None)


def encode_cursor(last: uuid.UUID) -> str:
    return last.hex


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(hex=validation.CURSOR.check(cursor))
    except ValueError as e:
        raise errors.InvalidInput("invalid cursor") from e
