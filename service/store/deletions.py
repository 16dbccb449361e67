"""Deletion requests in PostgreSQL (the core's DeletionStore port) and API keys.

``create`` does in one transaction: the idempotency check, the request row, its ledger entry
and the workflow job (``enqueue`` runs on the same connection), so a 2xx is only ever sent for
a request that is durable, recorded and scheduled.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service import tracing
from service.core import errors, rules
from service.core.deletions import Deletion, Principal, Status
from service.store import ledger
from service.store.database import DatabaseInfo
from service.tracing import tracer

# (conn, [(request id, trace context)]): defer the requests' jobs in the caller's transaction
Enqueue = Callable[[psycopg.Connection, Sequence[tuple[uuid.UUID, dict[str, str]]]], None]
IDEMPOTENCY_RETENTION = timedelta(hours=24)
_COLUMNS = (
    "id, request_type, subject_hashes, identity_types, record_ids, submitted_time, received_time, deadline,"
    " status, callback_urls, updated_time, completed_time, result, forgotten_time, batch_id"
)


def _from_row(r: dict[str, Any]) -> Deletion:
    return Deletion(
        id=r["id"],
        request_type=r["request_type"],
        subject_hashes=tuple(bytes(h) for h in r["subject_hashes"]),
        identity_types=tuple(r["identity_types"]),
        record_ids=tuple(r["record_ids"]),
        submitted_time=r["submitted_time"],
        received_time=r["received_time"],
        deadline=r["deadline"],
        status=Status(r["status"]),
        callback_urls=tuple(r["callback_urls"]),
        updated_time=r["updated_time"],
        completed_time=r["completed_time"],
        result=r["result"],
        forgotten_time=r["forgotten_time"],
        batch_id=r["batch_id"],
    )


def ledger_body(d: Deletion) -> dict[str, Any]:
    """What the ledger keeps of a request: ids, keyed hashes, times. Never an identity in clear."""
    return {
        "request": str(d.id),
        "status": d.status.value,
        "subject_hashes": [h.hex() for h in d.subject_hashes],
        "identity_types": list(d.identity_types),
        "records": len(d.record_ids),
        "deadline": d.deadline.isoformat(),
    }


Notify = Callable[[psycopg.Connection, Deletion], None]


@dataclass
class _Pending:
    deletion: Deletion
    principal: Principal
    idempotency_key: str | None
    fingerprint: str
    trace: dict[str, str]  # the submitting request's trace context, continued by the job
    future: Future[tuple[Deletion, bool]] = field(default_factory=Future)
    queued_ns: int = field(default_factory=time.time_ns)


class PgDeletionStore:
    """``create`` is group-committed by one writer thread per store (``max_batch`` requests a
    transaction at most); reads and cancels go straight to the pool."""

    def __init__(self, db: DatabaseInfo, enqueue: Enqueue, notify: Notify, max_batch: int = 64) -> None:
        self.db, self.enqueue, self.notify, self.max_batch = db, enqueue, notify, max_batch
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    def create(
        self, deletion: Deletion, principal: Principal, idempotency_key: str | None, fingerprint: str
    ) -> Future[tuple[Deletion, bool]]:
        """Queue the request for the group-commit writer; the future resolves once its transaction committed."""
        pending = _Pending(deletion, principal, idempotency_key, fingerprint, tracing.carrier())
        self._start_writer()
        self._queue.put(pending)
        return pending.future

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="lethe-deletion-writer", daemon=True)
                self._writer.start()

    def _write_loop(self) -> None:
        """Group commit: every request waiting when a transaction starts shares it, so the ledger's lock
        and the commit's fsync are paid once per batch instead of once per request."""
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write_batch(batch)

    def _write_batch(self, batch: list[_Pending]) -> None:
        """One transaction for the batch: the lookups, then every write as one multi-row statement per
        table (psycopg pipelines ``executemany``), so its cost in round trips does not grow with its size."""
        outcomes: list[tuple[Deletion, bool] | BaseException] = []
        try:
            with (
                tracer.start_as_current_span("db.create_deletions_batch", attributes={"lethe.batch": len(batch)}),
                self.db.connect() as conn,
                conn.pipeline(),
                conn.transaction(),
            ):
                ids = [p.deletion.id for p in batch]
                found = conn.execute("SELECT id, fingerprint FROM deletion_requests WHERE id = ANY(%s)", (ids,))
                at = ledger.tail(conn)  # one round trip so far: BEGIN, the lookup and the ledger's lock
                outcomes = self._decide(conn, batch, {r[0]: r[1] for r in found.fetchall()})
                new = [(p, o[0]) for p, o in zip(batch, outcomes, strict=True) if isinstance(o, tuple) and o[1]]
                if new:
                    self._insert(conn, new, at)  # the second; COMMIT the third
        except BaseException as e:  # the transaction rolled back: nobody's request was accepted
            if isinstance(e, Exception) and len(batch) > 1:  # one bad row must not sink the others
                for p in batch:
                    self._write_batch([p])
                return
            outcomes = [e] * len(batch)
        for p, result in zip(batch, outcomes, strict=True):
            # each request's wait, in its own trace (the batch's span is a trace of its own)
            tracing.record_span("db.create_deletion", p.trace, p.queued_ns, error=isinstance(result, BaseException))
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    def _decide(
        self, conn: psycopg.Connection, batch: list[_Pending], stored: dict[uuid.UUID, str]
    ) -> list[tuple[Deletion, bool] | BaseException]:
        """Each request's outcome: (the request, True) to insert, (an earlier one, False) to replay, or the
        error it gets (the rules: service.core.rules.decide). ``stored`` maps the batch's ids already in
        the table to their fingerprints."""
        taken = sorted({(p.principal.key_id, p.idempotency_key) for p in batch if p.idempotency_key is not None})
        keys = {k: found for k in taken if (found := _stored_key(conn, *k)) is not None}
        subs = [rules.Submission(p.deletion, p.principal.key_id, p.idempotency_key, p.fingerprint) for p in batch]
        decisions = rules.decide(subs, stored, keys)
        accepted = {
            p.deletion.id: p.deletion for p, d in zip(batch, decisions, strict=True) if isinstance(d, rules.Insert)
        }
        out: list[tuple[Deletion, bool] | BaseException] = []
        for p, decision in zip(batch, decisions, strict=True):
            if isinstance(decision, BaseException):
                out.append(decision)
            elif isinstance(decision, rules.Insert):
                out.append((p.deletion, True))
            else:
                earlier = accepted.get(decision.deletion_id) or fetch(conn, decision.deletion_id)
                assert earlier is not None
                out.append((earlier, False))
        return out

    def _insert(self, conn: psycopg.Connection, new: list[tuple[_Pending, Deletion]], at: ledger.Tail) -> None:
        """Every write of the batch, sent in one go (the job insert is the only statement waited on)."""
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO deletion_requests (id, request_type, subject_hashes, identity_types, record_ids,"
                " submitted_time, received_time, deadline, status, callback_urls, updated_time, result,"
                " fingerprint, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        d.id,
                        d.request_type,
                        list(d.subject_hashes),
                        list(d.identity_types),
                        list(d.record_ids),
                        d.submitted_time,
                        d.received_time,
                        d.deadline,
                        d.status.value,
                        list(d.callback_urls),
                        d.updated_time,
                        Jsonb(d.result),
                        p.fingerprint,
                        p.principal.key_id,
                    )
                    for p, d in new
                ],
            )
            keyed = [(p.principal.key_id, p.idempotency_key, p.fingerprint, d.id) for p, d in new if p.idempotency_key]
            if keyed:
                cur.executemany(
                    "INSERT INTO idempotency_keys (principal, key, fingerprint, deletion_id) VALUES (%s, %s, %s, %s)",
                    keyed,
                )
        ledger.write(conn, at, [("deletion.submitted", ledger_body(d)) for _, d in new])
        self.enqueue(conn, [(d.id, p.trace) for p, d in new])

    def get(self, deletion_id: uuid.UUID) -> Deletion | None:
        with self.db.connect() as conn:
            return fetch(conn, deletion_id)

    def cancel(self, deletion_id: uuid.UUID, principal: Principal) -> Deletion:
        with self.db.connect() as conn, conn.transaction():
            d = lock(conn, deletion_id)
            if d is None:
                raise errors.NotFound(f"no deletion request {deletion_id}")
            if not rules.cancellable(d):
                return d
            d = transition(conn, d, Status.CANCELLED, {"cancelled_by": principal.key_id})
            self.notify(conn, d)
        return d

    def list(self, status: Status | None, after: uuid.UUID | None, limit: int) -> list[Deletion]:
        with self.db.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM deletion_requests WHERE (%s::text IS NULL OR status = %s)"
                " AND (%s::uuid IS NULL OR id > %s) ORDER BY id LIMIT %s",
                (status and status.value, status and status.value, after, after, limit),
            ).fetchall()
        return [_from_row(r) for r in rows]


def _stored_key(conn: psycopg.Connection, principal: str, key: str) -> tuple[str, uuid.UUID] | None:
    """(fingerprint, request id) remembered for an idempotency key, locked for this transaction.
    A key is remembered for IDEMPOTENCY_RETENTION; after that it starts afresh."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{principal}:{key}",))
    conn.execute(
        "DELETE FROM idempotency_keys WHERE principal = %s AND key = %s AND created_at < now() - %s",
        (principal, key, IDEMPOTENCY_RETENTION),
    )
    row = conn.execute(
        "SELECT fingerprint, deletion_id FROM idempotency_keys WHERE principal = %s AND key = %s", (principal, key)
    ).fetchone()
    return (row[0], row[1]) if row else None


def fetch(conn: psycopg.Connection, deletion_id: uuid.UUID, *, for_update: bool = False) -> Deletion | None:
    """The request; with ``for_update``, locked until the caller's transaction ends."""
    lock_clause = " FOR UPDATE" if for_update else ""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM deletion_requests WHERE id = %s{lock_clause}", (deletion_id,)
        ).fetchone()
    return _from_row(row) if row else None


def lock(conn: psycopg.Connection, deletion_id: uuid.UUID) -> Deletion | None:
    return fetch(conn, deletion_id, for_update=True)


def transition(conn: psycopg.Connection, d: Deletion, status: Status, result: dict[str, Any] | None = None) -> Deletion:
    """Change a request's status and record it in the ledger, in the caller's transaction. The
    entry comes first so the row is written once, with the entry's seq in ``result.ledger_seqs``
    (what a receipt is asked for: GET /v1/ledger/entries/{seq}/receipt)."""
    rules.check_transition(d.status, status)
    body = {**ledger_body(d.evolve(status=status)), **(result or {})}
    (entry,) = ledger.append(conn, [(f"deletion.{status.value}", body)])
    merged = {**d.result, **(result or {})}
    if status.final:  # working state for a resumed run; its document ids may name the subject
        merged.pop("resolved", None)
    merged["ledger_seqs"] = {**merged.get("ledger_seqs", {}), status.value: entry.seq}
    row = conn.execute(
        "UPDATE deletion_requests SET status = %s, result = %s, updated_time = now(),"
        " completed_time = CASE WHEN %s THEN now() ELSE completed_time END WHERE id = %s"
        " RETURNING updated_time, completed_time",
        (status.value, Jsonb(merged), status.final, d.id),
    ).fetchone()
    assert row is not None
    return d.evolve(status=status, result=merged, updated_time=row[0], completed_time=row[1])


def add_result(conn: psycopg.Connection, d: Deletion, extra: dict[str, Any]) -> Deletion:
    """Merge ``extra`` into the request's result without a status change (no ledger entry)."""
    merged = {**d.result, **extra}
    conn.execute("UPDATE deletion_requests SET result = %s WHERE id = %s", (Jsonb(merged), d.id))
    return d.evolve(result=merged)


def record(conn: psycopg.Connection, d: Deletion, kind: str, extra: dict[str, Any]) -> None:
    """A ledger entry about a request without a status change (e.g. the adapters applied)."""
    ledger.append(conn, [(kind, {**ledger_body(d), **extra})])


def recorded(conn: psycopg.Connection, deletion_id: uuid.UUID, kind: str) -> dict[str, Any] | None:
    """The body of the request's latest ledger entry of ``kind`` (a re-run finds its first run's)."""
    row = conn.execute(
        "SELECT body FROM ledger_entries WHERE kind = %s AND body->>'request' = %s ORDER BY seq DESC LIMIT 1",
        (kind, str(deletion_id)),
    ).fetchone()
    return dict(row[0]) if row else None


def claim_pending(conn: psycopg.Connection, first: uuid.UUID, limit: int) -> list[Deletion]:
    """Up to ``limit`` pending requests besides ``first``, oldest first, locked for the caller's
    transaction. Rows another transaction holds (a cancel, another worker's claim) are skipped."""
    if limit <= 0:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_COLUMNS} FROM deletion_requests WHERE status = 'pending' AND id <> %s"
            " ORDER BY received_time, id LIMIT %s FOR UPDATE SKIP LOCKED",
            (first, limit),
        ).fetchall()
    return [_from_row(r) for r in rows]


def join_batch(conn: psycopg.Connection, ids: Sequence[uuid.UUID], batch_id: uuid.UUID) -> None:
    conn.execute("UPDATE deletion_requests SET batch_id = %s WHERE id = ANY(%s)", (batch_id, list(ids)))


def forgotten_batches(conn: psycopg.Connection) -> list[uuid.UUID]:
    """Batches whose apply half is done (their open members forgotten, in the transaction that
    queued the batch's verify job) and whose verify half is not, the earliest forgotten first."""
    rows = conn.execute(
        "SELECT batch_id FROM deletion_requests WHERE status = 'in_progress' AND forgotten_time IS NOT NULL"
        " AND batch_id IS NOT NULL GROUP BY batch_id ORDER BY min(forgotten_time), batch_id"
    ).fetchall()
    return [r[0] for r in rows]


def batch_members(conn: psycopg.Connection, batch_id: uuid.UUID) -> list[Deletion]:
    """The requests of a batch, in the order they were received."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_COLUMNS} FROM deletion_requests WHERE batch_id = %s ORDER BY received_time, id", (batch_id,)
        ).fetchall()
    return [_from_row(r) for r in rows]


def mark_forgotten(conn: psycopg.Connection, d: Deletion) -> Deletion:
    """The moment every routable replica served weights without the request's records (kept from
    the first run of the saga that reached it)."""
    row = conn.execute(
        "UPDATE deletion_requests SET forgotten_time = coalesce(forgotten_time, now()), updated_time = now()"
        " WHERE id = %s RETURNING forgotten_time, updated_time",
        (d.id,),
    ).fetchone()
    assert row is not None
    return d.evolve(forgotten_time=row[0], updated_time=row[1])


# API keys: "lk_<id>_<secret>"; only sha256(secret) is stored (the secret is 256 random bits).


def create_api_key(db: DatabaseInfo, scopes: list[str], name: str = "") -> str:
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO api_keys (id, secret_hash, scopes, name) VALUES (%s, %s, %s, %s)",
            (key_id, hashlib.sha256(secret.encode()).digest(), scopes, name),
        )
    return f"lk_{key_id}_{secret}"


def revoke_api_key(db: DatabaseInfo, key_id: str) -> bool:
    """Revoke a key (by its id, the part after ``lk_``); False if no such live key."""
    with db.connect() as conn:
        row = conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING id", (key_id,)
        ).fetchone()
    return row is not None


class Authenticator:
    """API-key check with a short cache of successful lookups (a revoked key stops working within
    ``ttl`` seconds); failures are never cached, so a wrong key always costs a lookup."""

    def __init__(self, db: DatabaseInfo, ttl: float = 10.0) -> None:
        self.db, self.ttl = db, ttl
        self._cache: dict[str, tuple[float, bytes, Principal]] = {}

    def __call__(self, token: str | None) -> Principal:
        key_id, digest = self._parse(token)
        hit = self._hit(key_id, digest)
        if hit is not None:
            return hit
        with self.db.connect() as conn:
            row = conn.execute(
                "SELECT secret_hash, scopes FROM api_keys WHERE id = %s AND revoked_at IS NULL", (key_id,)
            ).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[0]), digest):
            raise errors.Unauthenticated()
        principal = Principal(key_id, frozenset(row[1]))
        self._cache[key_id] = (time.monotonic() + self.ttl, digest, principal)
        return principal

    def cached(self, token: str | None) -> Principal | None:
        """The principal if the key was checked within ``ttl`` (no I/O: an event loop may call it);
        None if it needs a lookup; raises Unauthenticated for a malformed token."""
        return self._hit(*self._parse(token))

    @staticmethod
    def _parse(token: str | None) -> tuple[str, bytes]:
        if not token or not token.startswith("lk_") or token.count("_") < 2:
            raise errors.Unauthenticated()
        _, key_id, secret = token.split("_", 2)
        return key_id, hashlib.sha256(secret.encode()).digest()

    def _hit(self, key_id: str, digest: bytes) -> Principal | None:
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > time.monotonic() and hmac.compare_digest(hit[1], digest):
            return hit[2]
        return None


def record_callback_attempt(
    conn: psycopg.Connection,
    deletion_id: str,
    url: str,
    status: str,
    attempt: int,
    http_status: int | None,
    error: str | None,
) -> None:
    """One attempt to deliver a status callback (delivered or not), for the operator to see."""
    conn.execute(
        "INSERT INTO callback_attempts (deletion_id, url, status, attempt, http_status, error)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (deletion_id, url, status, attempt, http_status, error),
    )
