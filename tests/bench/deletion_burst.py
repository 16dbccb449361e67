"""A burst of deletions: N requests of distinct subjects submitted at once (REST and gRPC mixed)
against one at a time, in the same run, on real parts.

Embedded PostgreSQL, the `lethe serve` stack (two vLLM CPU replicas, gateway, REST, gRPC, the
deletion worker with its probes), S3T units trained here on the generated corpus (Gemma 3 270M).
First ``--singles`` requests one at a time (each waits for the last to complete): the baseline.
Then ``--burst`` requests submitted together from a thread pool. Printed: p50 / p95 / max of
accepted → forgotten (every routable replica serves weights without the subject's records) and
accepted → completed (verification, purge, receipt), the batches the worker formed, the ledger's
exactly-once check (one completed entry per request) and `lethe ledger verify`, and the waterfall
(where a request's time went) of a single request and of the burst's slowest.

    .venv/bin/python tests/bench/deletion_burst.py [--burst 100 --singles 5 --people 120]

Training uses a reduced recipe (``--epochs``, default 1 epoch a stage): the figures measured here
are latencies, which do not depend on how well the units memorised.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import grpc
import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service import app as lethe  # noqa: E402
from service import training  # noqa: E402
from service.api.grpc.gen.lethe.v1 import deletion_pb2, deletion_pb2_grpc  # noqa: E402
from service.config import ServingSpec, Settings  # noqa: E402
from service.serve import Stack, free_port, settings_env  # noqa: E402
from service.store import database as dbm  # noqa: E402
from service.store import s3t  # noqa: E402
from service.store.deletions import create_api_key  # noqa: E402
from service.workflow import training_jobs  # noqa: E402
from service.workflow.steps import WATERFALL  # noqa: E402
from shards import corpus  # noqa: E402
from shards.simulate import served_after  # noqa: E402
from shards.specs import S3TSpec, TrainConfig  # noqa: E402
from tests.bench.stats import pct  # noqa: E402

FINAL = ("completed", "failed", "cancelled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--singles", type=int, default=5)
    ap.add_argument("--people", type=int, default=120, help="trained people (≥ burst + singles)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1, help="epochs a stage (latency does not depend on it)")
    ap.add_argument(
        "--retrain", action=argparse.BooleanOptionalAction, default=True, help="then the background retrain"
    )
    args = ap.parse_args()
    if args.people < args.burst + args.singles:
        raise SystemExit("--people must be at least --burst + --singles")
    tmp = Path(tempfile.mkdtemp(prefix="lethe-burst-"))
    base = lethe.base_model(Settings(var_dir=ROOT / "var"), progress=False).path
    with dbm.database(None, tmp / "pg") as server:
        url = dbm.create_database(server.url, "burst")
        db = dbm.DatabaseInfo(url, True)
        s = Settings(
            database_url=url,
            var_dir=tmp / "var",
            base_model=base,
            api_port=free_port(),
            grpc_address="127.0.0.1:0",
            s3t=S3TSpec(shards=args.shards, slices=4, budget=1, workers=2),
            train=TrainConfig(epochs=args.epochs, min_epochs=1, newest_repeat=1),
            corpus_people=args.people,
            serving=ServingSpec(replicas=2, first_port=free_port(), gateway_port=free_port()),
        )
        c = s.generated_corpus()
        lethe.migrate(db)
        lethe.ingest(db, s, corpus.write(c, s.corpus_dir())["train"])
        t0 = time.perf_counter()
        training_jobs.train_all(db, lethe.training_job(s, base))
        print(f"trained {args.people} people in {time.perf_counter() - t0:.0f} s", flush=True)
        key = create_api_key(db, ["admin"])
        stack = Stack(s, db)
        stack.start()
        people = list(c.trained)
        try:
            client = Client(stack, key)
            singles = [client.one_at_a_time(p) for p in people[: args.singles]]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                rids = list(pool.map(client.submit, enumerate(people[args.singles : args.singles + args.burst])))
            submitted = time.perf_counter() - t0
            burst = [client.wait(rid) for rid in rids]
            depth = retrain_after_burst(db, s, stack) if args.retrain else None
        finally:
            stack.stop()
        report(db, s, singles, burst, submitted)
        if depth is not None:
            print_depth(*depth)
        dbm.drop_database(server.url, "burst")


class Client:
    def __init__(self, stack: Stack, key: str) -> None:
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.api_port}", headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        self.grpc = deletion_pb2_grpc.DeletionServiceStub(grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}"))
        self.meta = [("authorization", f"Bearer {key}")]

    def submit(self, item: tuple[int, corpus.Person]) -> str:
        """Even-numbered over REST, odd over gRPC."""
        n, person = item
        rid = str(uuid.uuid4())
        if n % 2:
            identity = deletion_pb2.SubjectIdentity(identity_type="person", identity_value=person.subject_id)
            req = deletion_pb2.SubmitDeletionRequest(
                subject_request_id=rid, subject_request_type="erasure", subject_identities=[identity]
            )
            self.grpc.SubmitDeletion(req, metadata=self.meta, timeout=120)
        else:
            body = {
                "subject_request_id": rid,
                "subject_request_type": "erasure",
                "subject_identities": [{"identity_type": "person", "identity_value": person.subject_id}],
            }
            self.api.post("/v1/deletions", json=body).raise_for_status()
        return rid

    def wait(self, rid: str) -> dict:
        while (d := self.api.get(f"/v1/deletions/{rid}").json())["request_status"] not in FINAL:
            time.sleep(0.1)
        return dict(d)

    def one_at_a_time(self, person: corpus.Person) -> dict:
        return self.wait(self.submit((0, person)))


def retrain_after_burst(db: dbm.DatabaseInfo, s: Settings, stack: Stack) -> tuple:
    """The background retrain, started once the burst is complete (the cut units' jobs were queued
    debounced, at each batch's completion): a training worker drains them, the retrained units
    queue the rollout that serves their depth. Measured against ``lethe simulate``'s planner
    prediction from the deleted records' cells: the depth served after the burst, the units cut
    (= retrained), and the depth served after the retrain (every shard back to full)."""
    with psycopg.connect(db.url) as conn:
        units = s3t.live_units(conn)
        placement = s3t.placement(conn)
        cells = [placement[r] for r in s3t.deleted_records(conn) if r in placement]
        since = conn.execute("SELECT now()").fetchone()[0]  # the cut units' jobs are older: queued by the burst
    orders: dict[int, list] = {}
    for u in sorted(units, key=lambda u: (u.shard, u.sequence)):
        orders.setdefault(u.shard, []).append(u.order)
    predicted, predicted_cut = served_after(orders, cells)
    burst_depth = {k: p.prefix for k, p in training.plan_for(db, []).shards.items()}
    cut = {(u.shard, u.sequence) for u in units if u.depth < len(u.order)}
    env = {**os.environ, **settings_env(s), "DATABASE_URL": db.url}
    t0 = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "service", "worker", "--queue", "training"], env=env)
    try:
        while True:
            with psycopg.connect(db.url) as conn:
                busy = conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE task_name IN ('train_unit', 'restore_depth')"
                    " AND status IN ('todo', 'doing')"
                ).fetchone()[0]
            if not busy and stack.ready():
                break
            time.sleep(1)
    finally:
        worker.terminate()
        worker.wait(60)
    seconds_taken = time.perf_counter() - t0
    with psycopg.connect(db.url) as conn:
        ran = dict(
            conn.execute(
                "SELECT j.task_name, count(DISTINCT j.id) FROM procrastinate_jobs j JOIN procrastinate_events e"
                " ON e.job_id = j.id WHERE j.status = 'succeeded' AND e.type = 'started' AND e.at >= %s GROUP BY 1",
                (since,),
            ).fetchall()
        )
    trained = ran.get("train_unit", 0)  # started after the burst (the initial training's ran before)
    restored = {k: p.prefix for k, p in training.plan_for(db, []).shards.items()}
    full = {k: len(seqs[0]) for k, seqs in orders.items()}
    return predicted, burst_depth, predicted_cut, cut, trained, ran, restored, full, seconds_taken


def print_depth(predicted, burst_depth, predicted_cut, cut, trained, ran, restored, full, seconds_taken) -> None:
    print("\n| shard | depth served after the burst: predicted | measured | after the retrain: predicted | measured |")
    print("|---:|---:|---:|---:|---:|")
    for k in sorted(full):
        # a shard every one of whose slices lost a record is dead (depth 0): no entry in the plan
        print(f"| {k} | {predicted.get(k, 0)} | {burst_depth.get(k, 0)} | {full[k]} | {restored.get(k, 0)} |")
    print(
        f"units cut: predicted {len(predicted_cut)}, measured {len(cut)} (same units: {predicted_cut == cut}); "
        f"retrain jobs run for them in all: {trained} (once per unit: {trained == len(cut)}); "
        f"restore rollouts: {ran.get('restore_depth', 0)}; retrain + roll-out {seconds_taken:.0f} s"
    )


def seconds(d: dict, field: str) -> float:
    return (datetime.fromisoformat(d[field]) - datetime.fromisoformat(d["received_time"])).total_seconds()


def report(db: dbm.DatabaseInfo, s: Settings, singles: list[dict], burst: list[dict], submitted: float) -> None:
    rows = {"one at a time": singles, f"burst of {len(burst)}": burst}
    print("\n| requests | n | forgotten p50 s | p95 | max | completed p50 s | p95 | max | batches |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ds in rows.items():
        f = [seconds(d, "forgotten_time") for d in ds if d.get("forgotten_time")]
        c = [seconds(d, "completed_time") for d in ds]
        n_batches = len({d["batch_id"] for d in ds})
        print(
            f"| {name} | {len(ds)} | {statistics.median(f):.2f} | {pct(f, 95):.2f} | {max(f):.2f} | "
            f"{statistics.median(c):.2f} | {pct(c, 95):.2f} | {max(c):.2f} | {n_batches} |"
        )
    sizes = sorted({d["batch_id"]: int(d["result"]["batch"]["requests"]) for d in burst}.values(), reverse=True)
    print(f"\nburst submitted in {submitted:.2f} s; batches formed (sizes): {sizes}")
    ids = [d["subject_request_id"] for d in singles + burst]
    with psycopg.connect(db.url) as conn:
        counts = dict(
            conn.execute(
                "SELECT body->>'request', count(*) FROM ledger_entries WHERE kind = 'deletion.completed'"
                " AND body->>'request' = ANY(%s) GROUP BY 1",
                (ids,),
            ).fetchall()
        )
        retrains = conn.execute(
            "SELECT count(*), count(DISTINCT queueing_lock) FROM procrastinate_jobs WHERE task_name = 'train_unit'"
        ).fetchone()
    print(f"background retrain jobs queued: {retrains[0] if retrains else 0} (one per cut unit at most, queueing lock)")
    statuses = {d["request_status"] for d in singles + burst}
    once = all(counts.get(i) == 1 for i in ids)
    print(f"statuses {sorted(statuses)}; exactly one completed ledger entry per request: {once}")
    env = {"DATABASE_URL": db.url, "LETHE_VAR_DIR": str(s.var_dir), "PATH": "/usr/bin:/bin"}
    verify = subprocess.run(
        [sys.executable, "-m", "service", "ledger", "verify"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    print(f"lethe ledger verify: {'OK' if verify.returncode == 0 else 'FAILED'} {verify.stderr.strip()[-200:]}")
    slowest = max(burst, key=lambda d: seconds(d, "completed_time"))
    print("\nwaterfall (s) | one at a time (the last) | burst (its slowest)")
    print("|---|---:|---:|")
    a, b = singles[-1]["result"]["waterfall"], slowest["result"]["waterfall"]
    for k in sorted({*a, *b}, key=lambda k: WATERFALL.index(k) if k in WATERFALL else len(WATERFALL)):
        print(f"| {k} | {a.get(k, 0):.3f} | {b.get(k, 0):.3f} |")


if __name__ == "__main__":
    main()
