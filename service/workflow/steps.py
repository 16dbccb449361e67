"""The deletion workflow: a sequence of idempotent steps over a batch of requests, in two jobs.

The apply job (one per request; the first to claim leads the batch): claim → resolve (subject
hashes → record ids and knowledge-base documents) → cut (S3T planner; tainted stages destroyed in
every sequence, rows then files) → suppress (closed-model path: the subject's documents leave
retrieval, a forget entry of keyed n-gram hashes is added) → apply (materialise the clean
adapter, publish it, wait until every routable replica acknowledged it; a replica that does not
is taken out of routing): the requests are *forgotten*. The verify job (one per batch, in a lane
of its own so the next batch is applied meanwhile): verify (structural proof, equivalence check,
membership and VerbMem probes of the served model; the retrieval, leakage, injection and
over-refusal probes of the proxy) → purge (record text set to NULL, documents and chunks
deleted) → complete. The text outlives the cut only until the probes have read it. Every state
change is a ledger entry in the same transaction as the change. A crash anywhere re-runs the job
(procrastinate retries stalled jobs): finished steps are no-ops.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import procrastinate

from service import tracing
from service.core import forget
from service.core.deletions import Deletion, Status
from service.core.verdict import Checks, verdict
from service.serving import rollout
from service.store import deletions as store
from service.store import jobs, kb, s3t, serving
from service.store.database import DatabaseInfo
from service.verify import probes, rag_probes
from service.workflow import batches, training_jobs
from service.workflow.batches import Batch
from service.workflow.deps import DEPS, DeletionDeps
from service.workflow.queue import QUEUE, REGISTRY, VERIFY_QUEUE, enqueue_callbacks, enqueue_verification
from shards import served

log = logging.getLogger(__name__)


def _deps(context: procrastinate.JobContext) -> DeletionDeps:
    return cast(DeletionDeps, context.additional_context[DEPS])


@REGISTRY.task(name="process_deletion", queue=QUEUE, retry=5, pass_context=True)
def process_deletion(context: procrastinate.JobContext, deletion_id: str, trace: dict[str, str] | None = None) -> None:
    process(_deps(context), deletion_id, trace)


def process(deps: DeletionDeps, deletion_id: str, trace: dict[str, str] | None = None) -> Status:
    """One run of a request's job, continuing the trace of the API request that enqueued it."""
    token = tracing.attach(trace)
    try:
        with tracing.tracer.start_as_current_span(
            "workflow.process_deletion", attributes={"lethe.request_id": deletion_id}
        ):
            return apply(deps, uuid.UUID(deletion_id))
    finally:
        tracing.detach(token)


@REGISTRY.task(name="verify_batch", queue=VERIFY_QUEUE, retry=5, pass_context=True)
def verify_batch(context: procrastinate.JobContext, batch_id: str, trace: dict[str, str] | None = None) -> None:
    """The second half of a batch's saga, in a lane of its own: verify → purge → complete."""
    deps = _deps(context)
    token = tracing.attach(trace)
    try:
        with tracing.tracer.start_as_current_span("workflow.verify_batch", attributes={"lethe.batch_id": batch_id}):
            _verify_batch(deps, uuid.UUID(batch_id), VERIFY_GATHER_SECONDS)
    finally:
        tracing.detach(token)
    if deps.ledger is not None:
        deps.ledger.maybe_checkpoint()


@REGISTRY.task(
    name="send_callback",
    queue=QUEUE,
    pass_context=True,
    retry=procrastinate.RetryStrategy(max_attempts=8, exponential_wait=2),
)
def send_callback(context: procrastinate.JobContext, deletion_id: str, url: str, status: str, body: str) -> None:
    """POST the signed status to the controller; every attempt is recorded; failures are retried
    with exponential back-off. The signature (Ed25519 over the raw body, base64) lets the receiver
    verify before parsing, with the public key the ledger serves."""
    deps = _deps(context)
    ledger = deps.ledger
    if ledger is None:
        raise RuntimeError("status callbacks need the ledger's signing key")
    attempt = (context.job.attempts or 0) + 1
    signature = base64.b64encode(ledger.key.sign(body.encode())).decode()
    headers = {
        "Content-Type": "application/json",
        "X-OpenDSR-Signature": signature,
        "X-OpenDSR-Signature-Key": ledger.key_name,
    }
    http_status, error = None, None
    try:
        resp = httpx.post(url, content=body.encode(), headers=headers, timeout=10)
        http_status = resp.status_code
        if resp.is_success:
            return
        error = f"HTTP {resp.status_code}"
    except httpx.HTTPError as e:
        error = type(e).__name__
    finally:
        with deps.db.connect() as conn:
            store.record_callback_attempt(conn, deletion_id, url, status, attempt, http_status, error)
    raise RuntimeError(f"status callback failed: {error}")


def apply(deps: DeletionDeps, deletion_id: uuid.UUID) -> Status:
    """The job's work: the apply half of the request's batch (the verify half is a job of its own)."""
    status = _run(deps, deletion_id)
    if deps.ledger is not None:
        deps.ledger.maybe_checkpoint()
    return status


def run(deps: DeletionDeps, deletion_id: uuid.UUID) -> Status:
    """Both halves in this process, one after the other (tools and tests without a worker); the
    verify job the apply half queued then finds nothing left to do."""
    status = apply(deps, deletion_id)
    with deps.db.connect() as conn:
        d = store.fetch(conn, deletion_id)
    if d is None or d.status.final or d.batch_id is None:
        return status
    _verify_batch(deps, d.batch_id)
    if deps.ledger is not None:
        deps.ledger.maybe_checkpoint()
    return _status(deps.db, deletion_id)


STEPS = ("claim", "resolve", "cut", "suppress", "apply", "verify", "purge", "complete")
# result.waterfall's stages in time order (a JSON object in jsonb keeps no order)
WATERFALL: tuple[str, ...] = ("queued", "claim", "resolve", "cut", "suppress", "materialise", "publish")
WATERFALL += ("acknowledge", "apply_other", "apply", "verify_queued", "verify", "purge")
EXACT, SUPPRESSION = "exact (S3T)", "suppression (closed model)"


@contextlib.contextmanager
def _step(name: str, timings: dict[str, float], deletion_id: uuid.UUID) -> Iterator[None]:
    """A step: a span, its duration, a log line as it starts and as it ends (ids only)."""
    fields = {"request_id": str(deletion_id), "step": name}
    log.info("step started", extra={"lethe": fields})
    t = time.perf_counter()
    try:
        with tracing.tracer.start_as_current_span(f"workflow.{name}"):
            yield
    except BaseException as e:
        log.warning(
            "step failed",
            extra={"lethe": {**fields, "seconds": round(time.perf_counter() - t, 4), "error": type(e).__name__}},
        )
        raise
    timings[name] = time.perf_counter() - t
    log.info("step ended", extra={"lethe": {**fields, "seconds": round(timings[name], 4)}})
    _crash_point(name)


@dataclass
class _Member:
    """A request of the batch as the saga works on it."""

    d: Deletion
    resolved: dict[str, list[str]]
    shards: list[int] = field(default_factory=list)  # holding its records
    suppressed: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return self.resolved["records"]

    @property
    def documents(self) -> list[str]:
        return self.resolved["documents"]


def _apply(
    deps: DeletionDeps, plan: Any, batch: Batch, work: list[_Member], shards: list[int], timings: dict[str, float]
) -> dict[uuid.UUID, dict[str, Any]]:
    """Roll the served model out to every replica once for the batch and wait for their
    acknowledgements; then, in one transaction, each member is *forgotten*: its ledger entry (the
    adapters of its shards before and after, the rollout, the batch), its ``forgotten_time``, its
    callbacks, what the apply half of the saga did (for the verify job: the rollout, the step times,
    the suppression summary) and the batch's verify job.
    A member with no training records (knowledge base only) is forgotten once its documents left
    retrieval (the suppress step, before this one).

    Runs on every run of the job, not only the one that made the cuts: a re-run after a crash (or a
    failure) between the cut and here finds nothing left to cut but must still roll the clean model
    out. Idempotent: the same content keeps its generation; the first run's ledger entries stand."""
    started = time.perf_counter()
    out = deps.engine.roll_out(plan, batch.leader, _on_wait(deps, work)) if shards else None
    applied: dict[uuid.UUID, dict[str, Any]] = {}
    phase = {k: round(v, 6) for k, v in {**timings, "apply": time.perf_counter() - started}.items()}
    with deps.db.connect() as conn, conn.transaction():
        changes: dict[str, Any] | None = None
        for m in work:
            d = store.lock(conn, m.d.id)
            assert d is not None
            first = store.recorded(conn, d.id, "deletion.applied") if out is not None else None
            if first is not None:
                applied[d.id] = {"adapters": first["adapters"], "rollout": out.to_dict() if out else None}
            elif out is not None and m.ids:
                if changes is None:
                    changes = _record_desired(conn, shards, out, batch.leader)
                mine = {k: v for k, v in changes.items() if int(k) in m.shards}
                applied[d.id] = {"adapters": mine, "rollout": out.to_dict()}
                store.record(conn, d, "deletion.applied", {**applied[d.id], "batch": batch.info()})
            if "apply_seconds" not in d.result:
                done = {"apply": applied.get(d.id, {}), "apply_seconds": phase, "suppressed": m.suppressed}
                d = store.add_result(conn, d, done)
            if d.forgotten_time is None:
                d = store.mark_forgotten(conn, d)
                store.record(conn, d, "deletion.forgotten", {"batch": batch.info()})
                enqueue_callbacks(conn, d, "forgotten")
        enqueue_verification(conn, batch.id, tracing.carrier())
    return applied


def _on_wait(deps: DeletionDeps, work: list[_Member]) -> Any:
    def waiting(generation: int, behind: list[str], seconds: float) -> None:
        wait = {"generation": generation, "replicas_behind": behind, "seconds": round(seconds, 1)}
        with deps.db.connect() as conn, conn.transaction():
            for m in work:
                if (d := store.lock(conn, m.d.id)) is not None:
                    store.add_result(conn, d, {"rollout_waiting": wait})

    return waiting


def _record_desired(conn: Any, shards: list[int], out: rollout.Rollout, deletion_id: uuid.UUID) -> dict[str, Any]:
    """Each affected shard's clean adapter recorded as desired; its adapter before and after."""
    changes: dict[str, Any] = {}
    for shard in shards:
        m = out.shards.get(shard)
        name = m.path.name if m else None
        before = s3t.set_desired(conn, shard, name, str(m.path) if m else None, m.sha256 if m else None, deletion_id)
        if before[1] is None and out.before is not None:  # no earlier deletion: the model served until now
            before = (out.before.name, out.before.adapter_sha256)
        changes[str(shard)] = {
            "before": {"adapter": before[0], "sha256": before[1]},
            "after": {"adapter": name, "sha256": m.sha256 if m else None},
        }
    return changes


EQUIVALENCE_SETTLE_SECONDS = 30.0  # a later batch's rollout in flight settles well within this
PROBE_ATTEMPTS = 3  # a later batch's rollout can swap the adapters out from under a probe run


def _verify(deps: DeletionDeps, ids: list[str], shards: list[int]) -> dict[str, Any]:
    """Structural proof (no live block's lineage holds a deleted record), equivalence (every
    routable replica serves the batch's generation or a later one, with the content hash published
    for it) and, when the worker has a probe configuration and the text is still there, the probes.

    Another batch may be applied meanwhile (its own lane): later generations only cut more, so
    they count as clean for this one; a probe run whose adapters were swapped out by such a
    rollout is run again on what is served then."""
    db = deps.db
    after = deps.planner.plan(ids)
    out: dict[str, Any] = {"method": EXACT, "lineage_excludes_deleted": not after.affected}
    out["served_prefix"] = {str(k): p.prefix for k, p in sorted(after.shards.items())}
    with db.connect() as conn:
        texts = s3t.record_texts(conn, deps.keys, ids)
    want, reps = _settled(db)
    if want is not None:
        out["equivalence"] = {
            "served_sha256": want.adapter_sha256,
            "generation": want.generation,
            "replicas": {
                r.id: r.serving_sha256 == want.adapter_sha256 and r.acked_generation == want.generation for r in reps
            },
        }
    cfg = deps.probes
    if cfg is not None and texts and shards:
        sample = probes.sample(texts, PROBE_RECORDS)
        for attempt in range(PROBE_ATTEMPTS):
            try:
                out.update(_probe(cfg, want, reps, sample))
                break
            except httpx.HTTPStatusError as e:
                moved, reps = _settled(db)
                if e.response.status_code != 404 or moved == want or attempt + 1 == PROBE_ATTEMPTS:
                    raise
                want = moved
        if len(sample) < len(texts):
            out["probes_sample"] = {"records": len(sample), "of": len(texts)}
        if out["verbmem"]["unreachable"]:  # acknowledged, then died: out of routing, as a laggard is
            with db.connect() as conn:
                for rid in out["verbmem"]["unreachable"]:
                    serving.unroutable(conn, rid, "unreachable during verification")
    elif ids and not texts:
        out["probes"] = "skipped: the records' text is already purged (deleted by an earlier request or run)"
    return out


PROBE_RECORDS = 32  # deleted records the probes score at most (a burst's batch: a spread sample)
VERBMEM_HOLDOUT = 32  # never-trained records continued as VerbMem's baseline at most


def _probe(cfg: Any, want: Any, reps: list[Any], texts: list[str]) -> dict[str, Any]:
    targets = [(r.id, r.url, r.serving_names or ("base",)) for r in reps]
    holdout = cfg.holdout_texts[: min(VERBMEM_HOLDOUT, 8 * len(texts))]
    return {
        "membership": probes.membership(cfg, _scorer(cfg, want, reps), texts),
        "verbmem": probes.verbmem(targets, texts, holdout),
    }


def _settled(db: DatabaseInfo) -> tuple[Any, list[Any]]:
    """The served model and the routable replicas once no rollout is half-way: every routable
    replica acknowledged the served generation (a later batch's rollout waits for exactly that),
    or after EQUIVALENCE_SETTLE_SECONDS, what is there then (the equivalence check says which
    replica is not on it)."""
    deadline = time.monotonic() + EQUIVALENCE_SETTLE_SECONDS
    with serving.listening(db.url, serving.ROUTING_CHANNEL) as listen:
        while True:
            with db.connect() as conn, conn.transaction():
                want = serving.served(conn)
                reps = [r for r in serving.replicas(conn) if r.routable]
            settled = want is None or all(
                r.acked_generation == want.generation and r.serving_sha256 == want.adapter_sha256 for r in reps
            )
            if settled or time.monotonic() > deadline:
                return want, reps
            for _ in listen.notifies(timeout=0.5, stop_after=1):
                pass


def _scorer(cfg: Any, want: Any, reps: list[Any]) -> Any:
    """Through the first routable replica on the published generation (its vLLM), else on the files."""
    path = Path(want.adapter_path) if want is not None and want.adapter_path else None
    current = [r for r in reps if want is not None and r.acked_generation == want.generation]
    if not cfg.via_replicas or not current:
        return probes.LocalScorer(cfg.base_model, path)
    keys = [p.key for p in served.parts(path, check=False)] if path is not None else []
    names = dict(zip(keys, want.names(keys), strict=True)) if keys else {}
    return probes.ReplicaScorer(current[0].id, current[0].url, names, cfg.base_model)


def _suppress(deps: DeletionDeps, deletion_id: uuid.UUID, documents: list[str]) -> dict[str, Any]:
    """Take the subject's documents out of retrieval and add the forget entry: keyed hashes of the
    n-grams that the documents state and no other live document does (names, codes, facts). One
    transaction with its ledger entry (content hashes and counts, never text); a re-run finds it."""
    if not documents:
        return {}
    with deps.db.connect() as conn, conn.transaction():
        d = store.lock(conn, deletion_id)
        assert d is not None
        hashes = kb.content_hashes(conn, documents)
        texts = kb.document_texts(conn, deps.keys, documents)
        candidates = sorted(set().union(*(forget.candidate_terms(t) for t in texts.values())))
        index_key = forget.index_key(deps.hmac_key)
        terms = forget.distinctive(candidates, kb.known_elsewhere(conn, index_key, candidates, documents))
        key = forget.term_key(deps.hmac_key)
        count, created = kb.suppress(conn, deletion_id, list(hashes), [forget.term_hash(key, t) for t in terms])
        out = {"method": SUPPRESSION, "documents": count, "forget_terms": len(terms)}
        if created:
            store.record(
                conn, d, "deletion.kb_suppressed", {**out, "content_sha256": [h.hex() for h in hashes.values()]}
            )
    return out


def _verify_kb(deps: DeletionDeps, deletion_id: uuid.UUID, suppressed: dict[str, Any]) -> dict[str, Any]:
    """The closed-model path's probes, through the worker's retrieval proxy, while the suppressed
    documents' text is still there to build questions from."""
    with deps.db.connect() as conn:
        texts = kb.suppressed_texts(conn, deps.keys, deletion_id)
    out: dict[str, Any] = {"method": SUPPRESSION, **{k: v for k, v in suppressed.items() if k != "method"}}
    proxy = deps.rag
    if proxy is None or not texts:
        out["probes"] = "skipped: " + ("no retrieval upstream configured" if proxy is None else "documents purged")
        return out
    out.update(rag_probes.run(proxy, texts))
    return out


def _cut_summary(db: DatabaseInfo, deletion_id: uuid.UUID, plan: Any, ids: list[str]) -> dict[str, Any]:
    """What the cut did, per shard: the sequence served and its clean prefix, and every sequence
    cut with the first block destroyed. Kept from the first run (a re-run finds nothing left to cut)."""
    with db.connect() as conn, conn.transaction():
        d = store.lock(conn, deletion_id)
        assert d is not None
        if "plan" in d.result:
            return cast(dict[str, Any], d.result["plan"])
        summary = {
            "records": len(ids),
            "affected_shards": s3t.shards_of(conn, ids),  # holding the request's records
            "dead_shards": sorted(plan.dead),
            "served": {
                str(k): {
                    "sequence": p.sequence,
                    "version": p.version,
                    "prefix": p.prefix,
                    "cuts": {str(q): b for q, b in sorted(p.tainted.items())},
                }
                for k, p in sorted(plan.shards.items())
            },
        }
        store.add_result(conn, d, {"plan": summary})
    return summary


def _resolve(db: DatabaseInfo, d: Any) -> dict[str, list[str]]:
    """What the request names: training records, knowledge-base documents, and the record ids it
    gave that are neither. Stored with the request on its first run: a re-run after the purge
    must not find the deleted documents "unknown"."""
    if "resolved" in d.result:
        return dict(d.result["resolved"])
    with db.connect() as conn, conn.transaction():
        known = set(s3t.known_record_ids(conn, d.record_ids))
        documents = kb.documents_of_subjects(conn, d.subject_hashes, d.record_ids)
        named = known | set(s3t.record_ids_of_subjects(conn, d.subject_hashes))
        same = s3t.same_text_records(conn, named)  # the same personal data filed under another id
        ids = sorted(named | set(same))
        unknown = sorted(set(d.record_ids) - known - set(documents))
        resolved = {"records": ids, "documents": documents, "unknown_record_ids": unknown, "same_text_records": same}
        locked = store.lock(conn, d.id)
        assert locked is not None
        store.add_result(conn, locked, {"resolved": resolved})
    return resolved


def _nothing_found(db: DatabaseInfo, deletion_id: uuid.UUID, unknown: list[str], timings: dict[str, float]) -> Status:
    """No record or document of the subjects (and none of the ids given): completed, with an entry
    of its own in the ledger, so "we held nothing" is as provable as a deletion."""
    with tracing.tracer.start_as_current_span("workflow.complete"), db.connect() as conn, conn.transaction():
        d = store.lock(conn, deletion_id)
        assert d is not None
        if d.status.final:
            return d.status
        store.record(conn, d, "deletion.nothing_found", {"unknown_record_ids": len(unknown)})
        d = store.add_result(conn, d, {"unknown_record_ids": unknown})  # the ids stay out of the ledger
        d = store.transition(
            conn,
            d,
            Status.COMPLETED,
            {
                "outcome": "nothing_found",
                "unknown_records": len(unknown),
                "methods": [],
                "stage_seconds": {k: round(v, 6) for k, v in timings.items()},
            },
        )
        enqueue_callbacks(conn, d)
    return d.status


def _crash_point(step: str) -> None:
    """Fault injection for the crash tests: LETHE_CRASH_AT=<step> kills the worker right after it."""
    if os.environ.get("LETHE_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _run(deps: DeletionDeps, deletion_id: uuid.UUID) -> Status:
    """The apply half: claim a batch, resolve, cut, suppress, roll out: the members are forgotten
    and their batch's verify job is queued. Under the apply lock from the claim on: another batch's
    cut cannot make this plan stale before it is served, and what arrives meanwhile joins the next."""
    timings: dict[str, float] = {}
    if (done := batches.before_claim(deps.db, deletion_id, deps.batch_window)) is not None:
        return done
    with serving.apply_lock(deps.db.url):
        with _step("claim", timings, deletion_id):
            batch = batches.claim(deps.db, deletion_id, deps.batch_max)
            if not isinstance(batch, batches.Batch):
                return batch
            tracing.annotate({"lethe.batch_id": str(batch.id), "lethe.batch_size": len(batch.members)})

        with _step("resolve", timings, deletion_id):  # explicit record ids + every record of the subjects, once
            members = [_Member(d, _resolve(deps.db, d)) for d in batch.members]
        for m in members:
            if not m.ids and not m.documents:
                _nothing_found(deps.db, m.d.id, m.resolved["unknown_record_ids"], timings)
        work = [m for m in members if m.ids or m.documents]
        if not work:
            return _status(deps.db, deletion_id)
        ids = sorted(set().union(*(m.ids for m in work)))

        with _step("cut", timings, deletion_id):  # one plan for the batch (idempotent: a re-run finds the cuts)
            plan = deps.planner.cut(ids)
            for m in work:
                m.shards = _cut_summary(deps.db, m.d.id, plan, m.ids)["affected_shards"]
            shards = sorted(set().union(*(m.shards for m in work)))

        with _step("suppress", timings, deletion_id):  # closed-model path: out of retrieval, forget entry added
            for m in work:
                m.suppressed = _suppress(deps, m.d.id, m.documents)

        with _step("apply", timings, deletion_id):  # one clean model served by every routable replica
            _apply(deps, plan, batch, work, shards, timings)
    return _status(deps.db, deletion_id)


VERIFY_GATHER_SECONDS = 20.0  # a verify job waits at most this long for the apply lane to go quiet


def _verify_batch(deps: DeletionDeps, batch_id: uuid.UUID, gather: float = 0.0) -> None:
    """The verify half, from what the apply half stored: verify, purge, complete. One run per
    batch at a time (a re-run of the apply job may queue it twice).

    Other batches forgotten by now whose verify job is queued and not started are verified with
    it, in one probe run: in a burst, completion costs one verify after the last rollout, not one
    per batch. With ``gather``, it first waits (that long at most) until no deletion job is queued
    or running, so the batches of a burst still being applied join (and the probes do not share
    the cores with their rollouts). Their own verify jobs then find nothing left to do. If the
    run with others fails, this batch is verified alone (one batch's fault is not the others')."""
    with serving.advisory_lock(deps.db.url, _batch_key(batch_id)):
        own = batches.resume(deps.db, batch_id)
        if own is None:
            return
        if gather > 0:
            _await_quiet(deps.db, gather)
        with deps.db.connect() as conn:
            queued = jobs.queued_args(conn, "verify_batch", "batch_id")
            others = [b for b in store.forgotten_batches(conn) if b != batch_id and str(b) in queued]
        with serving.advisory_locks_if_free(deps.db.url, [_batch_key(b) for b in others]) as got:
            found = [batches.resume(deps.db, b) for b in [batch_id, *(b for b in others if _batch_key(b) in got)]]
            together = [b for b in found if b is not None]
            try:
                _verify_together(deps, together)
            except Exception as e:
                if len(together) == 1:
                    raise
                log.warning("verify with other batches failed (%s): this batch alone", type(e).__name__)
                if (own := batches.resume(deps.db, batch_id)) is not None:
                    _verify_together(deps, [own])


def _batch_key(batch_id: uuid.UUID) -> int:
    return int.from_bytes(batch_id.bytes[:8], "big", signed=True)


def _await_quiet(db: DatabaseInfo, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with db.connect() as conn:
            if jobs.queued(conn, "process_deletion") == 0:
                return
        time.sleep(0.1)


def _verify_together(deps: DeletionDeps, found: list[Batch]) -> None:
    """Verify the batches' records in one run (probes over their union), purge, then complete
    each batch in a transaction of its own."""
    if not found:
        return
    started, timings = datetime.now(UTC), dict[str, float]()
    work = {b.id: [_resumed(deps, d) for d in b.members] for b in found}
    everyone = [m for ms in work.values() for m in ms]
    ids = sorted(set().union(*(m.ids for m in everyone)))
    shards = sorted(set().union(*(m.shards for m in everyone)))
    scope = {"batches": [str(b.id) for b in found], "requests": len(everyone), "records": len(ids)}
    with _step("verify", timings, found[0].leader):
        shared = _verify(deps, ids, shards)
        verifications = {m.d.id: _verification(deps, m, shared, b, scope) for b in found for m in work[b.id]}
    with _step("purge", timings, found[0].leader):
        _purge(deps, everyone, verifications)
    for b in found:
        outcomes = {
            m.d.id: {
                "plan": {
                    **cast(dict[str, Any], m.d.result["plan"]),
                    **({"documents": m.suppressed["documents"]} if m.suppressed else {}),
                },
                "apply": m.d.result.get("apply", {}),
                "verification": verifications[m.d.id],
            }
            for m in work[b.id]
        }
        _complete(deps.db, b, work[b.id], outcomes, timings, started, deps.retrain_delay)
    _crash_point("complete")


def _resumed(deps: DeletionDeps, d: Deletion) -> _Member:
    plan = cast(dict[str, Any], d.result["plan"])
    m = _Member(d, cast(dict[str, list[str]], d.result["resolved"]), list(plan["affected_shards"]))
    # what the apply half's suppress step did (a result from before it was kept: re-derived)
    kept = d.result.get("suppressed")
    m.suppressed = cast(dict[str, Any], kept) if kept is not None else _suppress(deps, d.id, m.documents)
    return m


def _verification(
    deps: DeletionDeps, m: _Member, shared: dict[str, Any], batch: Batch, scope: dict[str, Any]
) -> dict[str, Any]:
    """A member's verification: the structural proof, equivalence and probes shared by the
    requests verified together (its batch's, and the batches verified with it: the probes scored
    their records together, which ``probes_scope`` says), and its own knowledge-base probes."""
    out = copy.deepcopy(shared)
    if not m.ids:  # knowledge base only: other members' probes say nothing about it
        for k in ("membership", "verbmem", "probes"):
            out.pop(k, None)
    elif scope["requests"] > 1 and ("membership" in out or "verbmem" in out):
        out["probes_scope"] = {"batch": str(batch.id), **scope}
    if m.documents:
        out["kb"] = _verify_kb(deps, m.d.id, m.suppressed)
    return out


def _status(db: DatabaseInfo, deletion_id: uuid.UUID) -> Status:
    with db.connect() as conn:
        d = store.fetch(conn, deletion_id)
    return d.status if d is not None else Status.FAILED


def _purge(deps: DeletionDeps, work: list[_Member], verifications: dict[uuid.UUID, dict[str, Any]]) -> None:
    """The batch's records' text and documents gone, their keys destroyed, in one transaction;
    each member's verdict added to its verification."""
    with deps.db.connect() as conn, conn.transaction():
        s3t.purge_records(conn, deps.keys, sorted(set().union(*(m.ids for m in work))))
        for m in work:
            v = verifications[m.d.id]
            v["records_purged"] = s3t.purged(conn, m.ids) == len(m.ids)
            if m.documents:
                kb.purge(conn, deps.keys, m.d.id)
                v["kb"]["documents_deleted"] = kb.count_documents(conn, m.documents) == 0
    for m in work:
        v = verifications[m.d.id]
        v.update(verdict(Checks.of(v).proven, v.get("membership")))


def _complete(
    db: DatabaseInfo,
    batch: Batch,
    work: list[_Member],
    outcomes: dict[uuid.UUID, dict[str, Any]],
    timings: dict[str, float],
    started: datetime,
    retrain_delay: float = 0.0,
) -> Status:
    """Every member completed (or failed) with its result, ledger entry and callbacks, in one
    transaction; the cut units' background retrain is queued in it too, once for the batch.
    Returns the leader's status."""
    queued = False
    with tracing.tracer.start_as_current_span("workflow.complete"), db.connect() as conn, conn.transaction():
        for m in work:
            d = store.lock(conn, m.d.id)
            assert d is not None
            if d.status.final:
                continue
            outcome = outcomes[d.id]
            ok = Checks.of(outcome["verification"]).complete
            if ok and not queued:
                _queue_retrain(conn, outcome["plan"], retrain_delay)
                queued = True
            _finish(conn, d, m.resolved, outcome, ok, _waterfall(d, timings, started, outcome))
        d = store.fetch(conn, batch.leader)
    return d.status if d is not None else Status.FAILED


def _waterfall(d: Deletion, timings: dict[str, float], started: datetime, outcome: dict[str, Any]) -> dict[str, float]:
    """Where the request's time went, in order: queued (accepted → claimed), the apply half's steps
    with the rollout's stages, verify_queued (forgotten → the verify job started), the verify
    half's steps."""
    rollout_stages = ((outcome.get("apply") or {}).get("rollout") or {}).get("stage_seconds") or {}
    out = {"queued": float(cast(float, d.result.get("queue_seconds", 0.0)))}
    for step, secs in cast(dict[str, float], d.result.get("apply_seconds", {})).items():
        if step == "apply" and rollout_stages:
            out.update({k: float(v) for k, v in rollout_stages.items()})
            out["apply_other"] = max(0.0, secs - sum(rollout_stages.values()))
        else:
            out[step] = float(secs)
    if d.forgotten_time is not None:
        out["verify_queued"] = max(0.0, (started - d.forgotten_time).total_seconds())
    out.update(timings)
    return {k: round(v, 6) for k, v in out.items()}


def _finish(
    conn: Any,
    d: Deletion,
    resolved: dict[str, list[str]],
    outcome: dict[str, Any],
    ok: bool,
    waterfall: dict[str, float],
) -> None:
    ids, documents = resolved["records"], resolved["documents"]
    unknown, same = resolved["unknown_record_ids"], resolved.get("same_text_records", [])
    # the ids stay out of the ledger (counts only), and so do the probes' per-record scores (the
    # report's plots): the entry keeps the figures made of them
    kept: dict[str, Any] = {"unknown_record_ids": unknown, "same_text_records": same}
    if scores := probes.split_scores(outcome.get("verification") or {}):
        kept["probe_scores"] = scores
    d = store.add_result(conn, d, kept)
    methods = ([EXACT] if ids or not documents else []) + ([SUPPRESSION] if documents else [])
    result = {"outcome": "deleted" if ok else "failed", "unknown_records": len(unknown), "same_text": len(same)}
    # the saga's steps as they ran (the waterfall splits apply into the rollout's stages)
    steps = {**cast(dict[str, float], d.result.get("apply_seconds", {})), **waterfall}
    stage_seconds = {k: round(float(v), 6) for k, v in steps.items() if k in STEPS}
    d = store.transition(
        conn,
        d,
        Status.COMPLETED if ok else Status.FAILED,
        {**result, "methods": methods, **outcome, "stage_seconds": stage_seconds, "waterfall": waterfall},
    )
    enqueue_callbacks(conn, d)


def _queue_retrain(conn: Any, summary: dict[str, Any], delay: float) -> None:
    """The background retrain that restores the cut units' depth (training workers take it); read
    from the units, not the plan: a re-run after a crash finds the cuts already made."""
    layout = s3t.layout(conn)
    cut = [(u.shard, u.sequence) for u in s3t.live_units(conn) if layout and u.depth < layout[1]]
    if cut:
        training_jobs.enqueue(conn, cut, delay)
        summary["retrain_queued"] = [f"{k}/{seq}" for k, seq in cut]
