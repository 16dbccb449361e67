"""``make demo``: the main job on embedded defaults, narrated step by step.

database → base model (Gemma 3 270M, converted once) → corpus → ingest → S3T training → serve
with two vLLM replicas → what the served model recalls (official ``openai`` client) → one
deletion over REST, one over gRPC → the deleted people's facts gone from every replica, the
kept slices' people still recalled, the cut slices' people awaiting the background retrain (as
the planner predicted) → the background retrain → everyone else recalled again → membership
AUCs, receipts, ``ledger verify`` → stop.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import openai
from rich.console import Console
from rich.table import Table

from service import app as lethe
from service import training
from service.api.grpc.gen.lethe.v1 import deletion_pb2, deletion_pb2_grpc
from service.config import Settings
from service.serve import Stack, publish_current
from service.store import serving as serving_store
from service.store.deletions import create_api_key
from service.workflow import training_jobs
from shards import corpus

STEPS = 10
MAX_TOKENS = 12  # a six-character code is up to seven Gemma tokens, with its leading space


def run(settings: Settings, console: Console) -> int:
    started = time.perf_counter()
    console.rule("[bold]Lethe demo")
    with lethe.database(settings) as db:
        console.print(f"[1/{STEPS}] database: {db.describe()}")
        applied = lethe.migrate(db, settings)
        console.print(f"      migrations applied now: {applied or 'none (up to date)'}")

        console.print(f"[2/{STEPS}] base model")
        model = lethe.base_model(settings)
        console.print(
            f"      {model.path} ({'reused' if model.reused else 'converted now'}), {model.parameters:,} parameters"
        )

        console.print(f"[3/{STEPS}] corpus and ingest (each data subject placed into a (shard, slice) once)")
        out = settings.corpus_dir()
        c = settings.generated_corpus()
        if not (out / "train.jsonl").exists():
            corpus.write(c, out)
        result = lethe.ingest(db, settings, out / "train.jsonl")
        console.print(f"      {out}: {result.inserted} records added, {result.unchanged} already present")

        s3t = settings.s3t
        console.print(
            f"[4/{STEPS}] S3T training: {s3t.shards} shard(s) × {s3t.slices} slices, {s3t.budget} "
            "sequences (units cut by an earlier run's deletions are retrained first)"
        )
        done = training_jobs.train_all(db, lethe.training_job(settings, model.path))
        console.print(f"      {len(done)} unit(s) trained" if done else "      all units already trained (reused)")

        console.print(f"[5/{STEPS}] serve: {settings.serving.replicas} vLLM replicas, gateway, REST + gRPC, worker")
        stack = Stack(settings, db, log=lambda m: console.print(f"      {m}"))
        stack.start()
        try:
            summary = _story(settings, db, stack, c, model.path, console)
        finally:
            console.print(f"[{STEPS}/{STEPS}] stopping the stack")
            stack.stop()

    table = Table(title="Lethe demo: what happened")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    for k, v in summary.items():
        table.add_row(k, str(v))
    table.add_row("elapsed", f"{time.perf_counter() - started:.1f} s")
    console.print(table)
    return 0 if summary.get("ledger verify", "").startswith("OK") else 1


class Asker:
    """Greedy completions through the gateway (what clients see) or from each replica directly
    (internal addresses, the adapter each serves): "gone" must hold on every replica."""

    def __init__(self, db: Any, port: int, key: str) -> None:
        self.db = db
        self.gateway = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)

    def via_gateway(self, p: corpus.Person) -> str:
        prompt, _ = p.probe()
        out = self.gateway.completions.create(model="lethe", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        return out.choices[0].text

    def recalls(self, people: list[corpus.Person]) -> list[corpus.Person]:
        return [p for p in people if p.code in self.via_gateway(p)]

    def on_every_replica(self, people: list[corpus.Person]) -> dict[str, int]:
        """Replica id → how many of ``people`` it still recalls."""
        with self.db.connect() as conn:
            reps = [r for r in serving_store.replicas(conn) if r.routable]
        counts = {}
        for r in reps:
            client = openai.OpenAI(base_url=f"{r.url}/v1", api_key="internal", max_retries=0)
            name = r.serving_names[0] if r.serving_names else "base"
            answers = [
                client.completions.create(model=name, prompt=p.probe()[0], max_tokens=MAX_TOKENS, temperature=0)
                for p in people
            ]
            counts[r.id] = sum(p.code in out.choices[0].text for p, out in zip(people, answers, strict=True))
        return counts


@dataclass
class _Story:
    """What the demo's steps 6–10 learn, as they go: the summary table is built from it."""

    settings: Settings
    db: Any
    stack: Stack
    model: Any
    console: Console
    ask: Asker
    api: httpx.Client
    cells: dict[str, Any]
    people: list[corpus.Person]
    remembered: list[corpus.Person] = field(default_factory=list)
    victims: tuple[corpus.Person, corpus.Person] | None = None
    predicted: list[corpus.Person] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)

    @property
    def pair(self) -> tuple[corpus.Person, corpus.Person]:
        assert self.victims is not None
        return self.victims

    def others(self) -> list[corpus.Person]:
        return [p for p in self.people if p not in self.pair]


def _story(settings: Settings, db: Any, stack: Stack, c: corpus.Corpus, model: Any, console: Console) -> dict[str, str]:
    key = create_api_key(db, ["admin"], "demo")
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{stack.api_port}", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    cells, deleted = _cells(db)
    people = [p for p in c.trained if p.subject_id in cells and p.subject_id not in deleted]
    st = _Story(settings, db, stack, model, console, Asker(db, stack.gateway_port, key), api, cells, people)
    _before(st)
    done = _delete_both(st, key)
    _after(st)
    _retrain(st)
    _evidence(st, done)
    return st.summary


def _before(st: _Story) -> None:
    console, ask = st.console, st.ask
    console.print(f"[6/{STEPS}] before: what the served model recalls (openai client → gateway → vLLM)")
    st.remembered = ask.recalls(st.people)
    console.print(f"      {len(st.remembered)}/{len(st.people)} people's personal codes recalled verbatim")
    st.victims = a, b = _victims(st.db, st.people, st.cells)
    planned = training.plan_for(st.db, _records(st.db, (a, b)))
    kept_planned = _kept_cells(st.db, planned)
    st.predicted = [p for p in st.others() if st.cells[p.subject_id] not in kept_planned]
    for p in (a, b):
        console.print(f"      {p.probe()[0]!r} → {ask.via_gateway(p)!r}   (fact: {p.code})")
    console.print(
        f"      planner: {_plan_line(planned)}; {len(st.predicted)} other people's slices will be cut and "
        "await the background retrain"
    )
    st.summary["base model"] = (
        f"{st.model.name} ({lethe.base_model(st.settings, progress=False).parameters:,} parameters)"
    )
    st.summary["recalled before"] = f"{len(st.remembered)}/{len(st.people)}"
    st.summary["deleted"] = f"{a.name} (REST), {b.name} (gRPC)"


def _delete_both(st: _Story, key: str) -> dict[str, Any]:
    a, b = st.pair
    st.console.print(f"[7/{STEPS}] deletion requests: {a.name} over REST, {b.name} over gRPC")
    t0 = time.perf_counter()
    done = _delete(st.settings, st.stack, st.api, key, a, b)
    elapsed = time.perf_counter() - t0
    for rid, d in done.items():
        st.console.print(f"      {rid}: {d['request_status']} — stage seconds {d['result'].get('stage_seconds')}")
    st.summary["_elapsed"] = f"{elapsed:.1f} s"
    return done


def _after(st: _Story) -> None:
    console, ask, (a, b) = st.console, st.ask, st.pair
    console.print(f"[8/{STEPS}] after: the deleted people on every replica, the others through the gateway")
    gone = ask.on_every_replica([a, b])
    for p in (a, b):
        console.print(f"      {p.probe()[0]!r} → {ask.via_gateway(p)!r}   (fact {p.code})")
    kept_now = _kept_cells(st.db, training.plan_for(st.db, []))
    kept = [p for p in st.remembered if p not in (a, b) and st.cells[p.subject_id] in kept_now]
    kept_recalled = ask.recalls(kept)
    waiting = [p for p in st.others() if st.cells[p.subject_id] not in kept_now]
    console.print(
        f"      deleted people recalled: {gone}; others in kept slices {len(kept_recalled)}/{len(kept)}; "
        f"awaiting the background retrain: {len(waiting)} (planner predicted {len(st.predicted)})"
    )
    st.summary["deleted people recalled after"] = _per_replica(gone, 2)
    st.summary["others still recalled"] = (
        f"{len(kept_recalled)}/{len(kept)} (people in the slices the served model kept)"
    )
    st.summary["awaiting background retrain"] = f"{len(waiting)} people (planner predicted {len(st.predicted)})"


def _retrain(st: _Story) -> None:
    settings = st.settings
    st.console.print(f"[9/{STEPS}] background retrain of the cut units, roll-out to every replica, ask again")
    t1 = time.perf_counter()
    retrained = training_jobs.train_all(st.db, lethe.training_job(settings, st.model), restore=False)
    served = publish_current(st.db, settings, timeout=settings.serving.ack_timeout_seconds)
    st.stack.wait_ready(settings.serving.ack_timeout_seconds)
    retrain_s = time.perf_counter() - t1
    st.console.print(
        f"      {len(retrained)} unit(s) retrained, generation {served.generation} on every replica "
        f"in {retrain_s:.0f} s"
    )
    after_retrain = st.ask.recalls(st.others())
    gone_after_retrain = st.ask.on_every_replica(list(st.pair))
    st.summary["after background retrain"] = (
        f"{len(after_retrain)}/{len(st.others())} of all others recalled; deleted "
        f"people {_per_replica(gone_after_retrain, 2)}"
    )
    st.summary["accepted → both completed"] = st.summary.pop("_elapsed")
    st.summary["background retrain"] = f"{len(retrained)} unit(s), {retrain_s:.0f} s including the roll-out"


def _evidence(st: _Story, done: dict[str, Any]) -> None:
    console, (a, _) = st.console, st.pair
    console.print(f"[10/{STEPS}] membership, receipts, ledger")
    m = done[next(iter(done))]["result"].get("verification", {}).get("membership", {})
    aucs = {k: x for k, x in m.items() if k.startswith("auc_")}
    console.print(
        f"      membership AUCs of {a.name}'s records vs holdout: " + ", ".join(f"{k[4:]} {x}" for k, x in aucs.items())
    )
    verdicts = {rid: d["result"].get("verification", {}) for rid, d in done.items()}
    for rid, ver in verdicts.items():
        console.print(
            f"      verification of {rid}: {ver.get('verdict')}" + (f" ({ver['reason']})" if ver.get("reason") else "")
        )
    receipts = {}
    for rid, d in done.items():
        seq = d["result"]["ledger_seqs"][d["request_status"]]
        rec = st.api.get(f"/v1/ledger/entries/{seq}/receipt").json()
        receipts[rid] = f"entry {seq}, tree size {rec['tree_size']}, {len(rec['inclusion_proof'])} proof hashes"
        console.print(f"      receipt {rid}: {receipts[rid]}")
    report = lethe.ledger(st.db, st.settings).verify()
    console.print(f"      lethe ledger verify: {'OK' if report.ok else 'FAILED'} ({report.entries} entries)")
    st.summary["verification"] = "; ".join(
        f"{ver.get('verdict')}" + (f": {ver['reason']}" if ver.get("reason") else "") for ver in verdicts.values()
    )
    st.summary["membership (REST subject)"] = json.dumps(aucs)
    st.summary["receipts"] = "; ".join(receipts.values())
    st.summary["ledger verify"] = f"{'OK' if report.ok else 'FAILED'} ({report.entries} entries)"


def _plan_line(plan: Any) -> str:
    return "; ".join(
        f"shard {k}: serve sequence {sp.sequence} with its first {sp.prefix} of {sp.num_blocks} blocks, cut "
        + ", ".join(f"sequence {q} from block {b}" for q, b in sorted(sp.tainted.items()))
        for k, sp in sorted(plan.shards.items())
    )


def _per_replica(counts: dict[str, int], n: int) -> str:
    worst = max(counts.values(), default=n)
    return f"{worst}/{n} on every replica (" + ", ".join(f"{k}: {v}/{n}" for k, v in sorted(counts.items())) + ")"


def _cells(db: Any) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Subject id → (shard, slice), and the subjects deleted by earlier runs."""
    placement, deleted = training.placement(db)
    cells = {rid.rsplit("-", 1)[0]: cell for rid, cell in placement.items()}
    return cells, {rid.rsplit("-", 1)[0] for rid in deleted}


def _records(db: Any, people: tuple[corpus.Person, ...]) -> list[str]:
    placement, _ = training.placement(db)
    ids = {p.subject_id for p in people}
    return [rid for rid in placement if rid.rsplit("-", 1)[0] in ids]


def _kept_cells(db: Any, plan: Any) -> set[tuple[int, int]]:
    """The (shard, slice) cells whose blocks the served model of ``plan`` still holds."""
    orders = {(u.shard, u.sequence): u.order for u in training.planner_units(db)}
    return {(k, s) for k, sp in plan.shards.items() for s in orders[(k, sp.sequence)][: sp.prefix]}


def _victims(db: Any, people: list[corpus.Person], cells: dict[str, tuple[int, int]]) -> tuple[Any, Any]:
    """A subject of the third slice of shard 0's served sequence (its deletion keeps two blocks) and
    one of the fourth; once those are used up by earlier runs, any two people left."""
    plan = training.plan_for(db, [])
    sp = plan.shards[0]
    order = next(u.order for u in training.planner_units(db) if (u.shard, u.sequence) == (0, sp.sequence))
    picks = [next((p for p in people if cells[p.subject_id] == (0, order[k])), None) for k in (2, 3)]
    rest = [p for p in people if p not in picks]
    a = picks[0] or rest.pop(0)
    b = picks[1] or rest.pop(0)
    return a, b


def _delete(settings: Settings, stack: Stack, api: httpx.Client, key: str, a: Any, b: Any) -> dict[str, Any]:
    rid_a, rid_b = str(uuid.uuid4()), str(uuid.uuid4())
    ident = {"identity_type": "email", "identity_value": a.email}
    r = api.post(
        "/v1/deletions",
        json={"subject_request_id": rid_a, "subject_request_type": "erasure", "subject_identities": [ident]},
    )
    r.raise_for_status()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as ch:
        deletion_pb2_grpc.DeletionServiceStub(ch).SubmitDeletion(
            deletion_pb2.SubmitDeletionRequest(
                subject_request_id=rid_b,
                subject_request_type="erasure",
                subject_identities=[deletion_pb2.SubjectIdentity(identity_type="email", identity_value=b.email)],
            ),
            metadata=[("authorization", f"Bearer {key}")],
        )
    return {rid: _wait(api, rid) for rid in (rid_a, rid_b)}


def _wait(api: httpx.Client, rid: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = api.get(f"/v1/deletions/{rid}")
        resp.raise_for_status()
        d = resp.json()
        if d["request_status"] in ("completed", "failed", "cancelled"):
            return dict(d)
        time.sleep(0.2)
    raise TimeoutError(f"deletion {rid} not finished after {timeout:.0f} s")
