"""``make demo``: the main job on embedded defaults, narrated step by step.

database → base model → corpus → ingest → S3T training → serve with two vLLM replicas →
recall through the gateway (official ``openai`` client) → one deletion over REST, one over
gRPC → wait → the facts are gone, membership AUCs, receipts, ``ledger verify`` → stop.
"""

from __future__ import annotations

import json
import time
import uuid
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
from service.serve import Stack
from service.store.deletions import create_api_key
from shards import corpus

STEPS = 9


def run(settings: Settings, console: Console) -> int:
    started = time.perf_counter()
    console.rule("[bold]Lethe demo")
    with lethe.database(settings) as db:
        console.print(f"[1/{STEPS}] database: {db.describe()}")
        applied = lethe.migrate(db)
        console.print(f"      migrations applied now: {applied or 'none (up to date)'}")

        console.print(f"[2/{STEPS}] base model")
        model = lethe.base_model(settings)
        console.print(f"      {model.path} ({'reused' if model.reused else 'built'}), {model.parameters:,} parameters")

        console.print(f"[3/{STEPS}] corpus and ingest (each data subject placed into a (shard, slice) once)")
        out = settings.corpus_dir()
        if not (out / "train.jsonl").exists():
            corpus.write(corpus.generate(settings.corpus_seed), out)
        c = corpus.generate(settings.corpus_seed)
        result = lethe.ingest(db, settings, out / "train.jsonl")
        console.print(f"      {out}: {result.inserted} records added, {result.unchanged} already present")

        s3t = settings.s3t
        console.print(f"[4/{STEPS}] S3T training: {s3t.shards} shard(s) × {s3t.slices} slices, {s3t.budget} sequences")
        done = training.train_all(db, lethe.training_job(settings, model.path))
        console.print(f"      {len(done)} unit(s) trained" if done else "      all units already trained (reused)")

        console.print(f"[5/{STEPS}] serve: {settings.serving.replicas} vLLM replicas, gateway, REST + gRPC, worker")
        stack = Stack(settings, db, log=lambda m: console.print(f"      {m}"))
        stack.start()
        try:
            summary = _story(settings, db, stack, c, console)
        finally:
            console.print(f"[9/{STEPS}] stopping the stack")
            stack.stop()

    table = Table(title="Lethe demo: what happened")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    for k, v in summary.items():
        table.add_row(k, str(v))
    table.add_row("elapsed", f"{time.perf_counter() - started:.1f} s")
    console.print(table)
    return 0 if summary.get("ledger verify", "").startswith("OK") else 1


def _story(settings: Settings, db: Any, stack: Stack, c: corpus.Corpus, console: Console) -> dict[str, str]:
    key = create_api_key(db, ["admin"], "demo")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.gateway_port}/v1", api_key=key, max_retries=0)
    api = httpx.Client(base_url=f"http://127.0.0.1:{stack.api_port}", headers={"Authorization": f"Bearer {key}"},
                       timeout=60)  # fmt: skip

    def answer(p: corpus.Person) -> str:
        prompt, _ = p.probe()
        return client.completions.create(model="lethe", prompt=prompt, max_tokens=8, temperature=0).choices[0].text

    console.print(f"[6/{STEPS}] before: what the served model recalls (openai client → gateway → vLLM)")
    remembered = [p for p in c.trained if p.code in answer(p)]
    console.print(f"      {len(remembered)}/{len(c.trained)} people's personal codes recalled verbatim")
    a, b = _victims(db, c)
    for p in (a, b):
        console.print(f"      {p.probe()[0]!r} → {answer(p)!r}   (fact: {p.code})")

    console.print(f"[7/{STEPS}] deletion requests: {a.name} over REST, {b.name} over gRPC")
    rid_a, rid_b = str(uuid.uuid4()), str(uuid.uuid4())
    t0 = time.perf_counter()
    ident = {"identity_type": "email", "identity_value": a.email}
    r = api.post("/v1/deletions", json={"subject_request_id": rid_a, "subject_request_type": "erasure",
                                        "subject_identities": [ident]})  # fmt: skip
    r.raise_for_status()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as ch:
        deletion_pb2_grpc.DeletionServiceStub(ch).SubmitDeletion(deletion_pb2.SubmitDeletionRequest(
            subject_request_id=rid_b, subject_request_type="erasure",
            subject_identities=[deletion_pb2.SubjectIdentity(identity_type="email", identity_value=b.email)]),
            metadata=[("authorization", f"Bearer {key}")])  # fmt: skip
    done = {rid: _wait(api, rid) for rid in (rid_a, rid_b)}
    elapsed = time.perf_counter() - t0
    for rid, d in done.items():
        res = d["result"]
        console.print(f"      {rid}: {d['request_status']} — stage seconds {res.get('stage_seconds')}")

    console.print(f"[8/{STEPS}] after: recall, membership, receipts, ledger")
    after = {p.name: answer(p) for p in (a, b)}
    for p in (a, b):
        state = "STILL THERE" if p.code in after[p.name] else "gone"
        console.print(f"      {p.probe()[0]!r} → {after[p.name]!r}   (fact {p.code}: {state})")
    survivors = [p for p in remembered if p not in (a, b)]  # (recall of the others: kept or not)
    kept = sum(p.code in answer(p) for p in survivors)
    res_a = done[rid_a]["result"]
    m = res_a.get("verification", {}).get("membership", {})
    console.print(f"      membership AUCs of {a.name}'s records vs holdout: "
                  + ", ".join(f"{k[4:]} {v}" for k, v in m.items() if k.startswith("auc_")))  # fmt: skip
    receipts = {}
    for rid, d in done.items():
        seq = d["result"]["ledger_seqs"][d["request_status"]]
        rec = api.get(f"/v1/ledger/entries/{seq}/receipt").json()
        receipts[rid] = f"entry {seq}, tree size {rec['tree_size']}, {len(rec['inclusion_proof'])} proof hashes"
        console.print(f"      receipt {rid}: {receipts[rid]}")
    report = lethe.ledger(db, settings).verify()
    console.print(f"      lethe ledger verify: {'OK' if report.ok else 'FAILED'} ({report.entries} entries)")
    return {
        "recalled before": f"{len(remembered)}/{len(c.trained)} personal codes",
        "deleted": f"{a.name} (REST), {b.name} (gRPC)",
        "their facts after": ", ".join(
            f"{p.name}: {'gone' if p.code not in after[p.name] else 'STILL THERE'}" for p in (a, b)
        ),
        "others still recalled": f"{kept}/{len(survivors)}",
        "accepted → both completed": f"{elapsed:.1f} s",
        "served adapter": json.dumps(res_a.get("apply", {}).get("rollout", {})),
        "membership (REST subject)": json.dumps(m),
        "receipts": "; ".join(receipts.values()),
        "ledger verify": f"{'OK' if report.ok else 'FAILED'} ({report.entries} entries)",
    }


def _victims(db: Any, c: corpus.Corpus) -> tuple[corpus.Person, corpus.Person]:
    """A subject of the third slice of the served sequence (its deletion keeps two blocks) and
    one of the fourth, among those not deleted by an earlier run."""
    plan = training.plan_for(db, [])
    sp = plan.shards[0]
    order = next(u.order for u in training.planner_units(db) if (u.shard, u.sequence) == (0, sp.sequence))
    with db.connect() as conn:
        slice_of = {
            r[0].rsplit("-", 1)[0]: r[1]
            for r in conn.execute("SELECT id, slice FROM records WHERE shard = 0 AND text IS NOT NULL")
        }
    pick = [next(p for p in c.trained if slice_of.get(p.subject_id) == order[k]) for k in (2, 3)]
    return pick[0], pick[1]


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
