"""Time to forget: accepted deletion request → every vLLM replica serves the clean adapter.

Measured on real parts in one run: embedded PostgreSQL, the `lethe serve` stack (two vLLM CPU
replicas, gateway, REST API, worker), S3T units trained here on the generated corpus. Each
request deletes a subject whose slice is still live in its shard's served prefix, so every one
triggers a rollout (materialise → publish → load on each replica → acknowledge). Beside it, on
the same data in the same run: retraining the affected shard from scratch (what SISA does on a
deletion) and a full retrain of every unit.

    .venv/bin/python tests/bench/time_to_forget.py [--shards 4 --people 24 --requests 8 --aggregation merged|routing]

On the default base model (Gemma 3 270M) with the default training recipe; ``--tiny`` for the
tiny local Llama.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service import app as lethe  # noqa: E402
from service import training  # noqa: E402
from service.config import ServingSpec, Settings  # noqa: E402
from service.serve import Stack, free_port  # noqa: E402
from service.store import database as dbm  # noqa: E402
from service.store import s3t  # noqa: E402
from service.store.deletions import create_api_key  # noqa: E402
from service.workflow import training_jobs  # noqa: E402
from shards import corpus, train  # noqa: E402
from shards.specs import S3TSpec, TrainConfig  # noqa: E402
from tests.bench.stats import pct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--people", type=int, default=24, help="trained people (spread over shards × 4 slices)")
    ap.add_argument("--tiny", action="store_true", help="the tiny local Llama instead of Gemma 3 270M")
    ap.add_argument("--aggregation", choices=["merged", "routing"], default="merged", help="how m shards are served")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lethe-ttf-"))
    builtin = "tiny-llama" if args.tiny else "gemma-3-270m"
    base = lethe.base_model(Settings(var_dir=ROOT / "var", builtin_model=builtin), progress=False).path
    with dbm.database(None, tmp / "pg") as server:
        url = dbm.create_database(server.url, "ttf")
        db = dbm.DatabaseInfo(url, True)
        s = Settings(
            database_url=url,
            var_dir=tmp / "var",
            base_model=base,
            api_port=free_port(),
            grpc_address="127.0.0.1:0",
            s3t=S3TSpec(shards=args.shards, slices=4, budget=1, workers=2),
            train=TrainConfig(),
            corpus_people=args.people,
            serving=ServingSpec(
                replicas=2, first_port=free_port(), gateway_port=free_port(), aggregation=args.aggregation
            ),
        )
        c = s.generated_corpus()
        paths = corpus.write(c, s.corpus_dir())
        lethe.migrate(db)
        lethe.ingest(db, s, paths["train"])
        t0 = time.perf_counter()
        training_jobs.train_all(db, lethe.training_job(s, base))
        full = time.perf_counter() - t0

        with psycopg.connect(url) as conn:  # retrain shard 0 from scratch on its data (SISA's cost)
            cells = s3t.records_by_cell(conn, lethe.data_keys(s), 0)
        slices: dict[int, list[train.TrainRecord]] = {}
        for (_, sl), recs in cells.items():
            slices[sl] = [train.TrainRecord(*r) for r in recs]
        t0 = time.perf_counter()
        train.train_unit(base, train.UnitSpec(0, 0, (0, 1, 2, 3)), slices, s.train, tmp / "sisa", progress=True)
        shard = time.perf_counter() - t0

        aggregation = _aggregation(db, s, c, base, tmp / "agg")
        victims = _victims(db, c, args.requests)
        key = create_api_key(db, ["admin"])
        stack = Stack(s, db)
        stack.start()
        ttf, done, waterfalls = [], [], []
        try:
            api = httpx.Client(
                base_url=f"http://127.0.0.1:{stack.api_port}", headers={"Authorization": f"Bearer {key}"}, timeout=60
            )
            for person in victims:
                rid = str(uuid.uuid4())
                api.post(
                    "/v1/deletions",
                    json={
                        "subject_request_id": rid,
                        "subject_request_type": "erasure",
                        "subject_identities": [{"identity_type": "person", "identity_value": person.subject_id}],
                    },
                ).raise_for_status()
                while (d := api.get(f"/v1/deletions/{rid}").json())["request_status"] not in ("completed", "failed"):
                    time.sleep(0.05)
                with psycopg.connect(url) as conn:
                    received, forgotten, completed = conn.execute(
                        "SELECT received_time, forgotten_time, completed_time FROM deletion_requests WHERE id = %s",
                        (rid,),
                    ).fetchone()  # type: ignore[misc]
                rollout = d["result"].get("apply", {}).get("rollout")
                if rollout:  # forgotten: every routable replica acknowledged the clean generation
                    ttf.append((forgotten - received).total_seconds())
                    waterfalls.append(d["result"].get("waterfall", {}))
                done.append((completed - received).total_seconds())
        finally:
            stack.stop()
        dbm.drop_database(server.url, "ttf")

    print(
        f"\n{len(victims)} requests, {args.shards} shards × 4 slices, {args.people} people, 2 vLLM CPU replicas, "
        f"base model {base.name}"
    )
    print("\n| path | p50 s | p99 s | × time to forget (p50) |")
    print("|---|---:|---:|---:|")
    p50 = statistics.median(ttf)
    print(f"| accepted → all replicas acknowledged (Lethe) | {p50:.2f} | {pct(ttf, 99):.2f} | 1 |")
    print(
        f"| accepted → completed (incl. verify probes) | {statistics.median(done):.2f} | {pct(done, 99):.2f} | "
        f"{statistics.median(done) / p50:.1f} |"
    )
    print(f"| retrain the affected shard from scratch (SISA) | {shard:.1f} | – | {shard / p50:.0f} |")
    print(f"| full retrain (every unit) | {full:.1f} | – | {full / p50:.0f} |")
    print(f"\nrollouts measured: {len(ttf)} of {len(victims)} requests; each (s): {[round(t, 2) for t in ttf]}")
    print_waterfall(waterfalls)
    print(f"\nShard aggregation on the same {args.shards} shards (before any deletion; transformers, fp32):")
    print(
        "\n| served as | trained people: mean loss | holdout people: mean loss | member AUC (calibrated, per person) |"
    )
    print("|---|---:|---:|---:|")
    for name, row in aggregation.items():
        print(f"| {name} | {row['trained']:.3f} | {row['holdout']:.3f} | {row['auc']:.3f} |")


def print_waterfall(waterfalls: list[dict[str, float]]) -> None:
    """Median time of each step up to *forgotten* (``result.waterfall``) over the rollouts."""
    if not waterfalls:
        return
    print("\nWhere the time to forget went (median over the rollouts, s):\n\n| step | p50 s | max s |\n|---|---:|---:|")
    for step in waterfalls[0]:
        if step in ("verify_queued", "verify", "purge"):  # after forgotten
            continue
        got = [w.get(step, 0.0) for w in waterfalls]
        print(f"| {step} | {statistics.median(got):.3f} | {max(got):.3f} |")


def _aggregation(db: dbm.DatabaseInfo, s: Settings, c: corpus.Corpus, base: Path, out: Path) -> dict[str, dict]:
    """Merged adapter (rank m·r, the default) against the routing table (a request goes to one live
    shard's adapter; averaged over the shards, which is its expectation under uniform routing)."""
    from transformers import AutoTokenizer

    from service.serving import rollout
    from shards import mia

    plan = training.plan_for(db, [])
    m = rollout.materialise(db, plan, out)
    per_shard, merged = m.shards, m.path
    tok = AutoTokenizer.from_pretrained(base)
    rows = list(c.records(c.trained)) + list(c.records(c.holdout))
    texts = [str(r["text"]) for r in rows]
    ref = mia.text_losses(train.load_base(base).eval(), tok, texts)
    people = {p.subject_id: [r["id"] for r in c.records([p])] for p in c.trained + c.holdout}

    def score(losses: list[float]) -> dict[str, float]:
        plain = mia.person_scores(dict(zip([r["id"] for r in rows], losses, strict=True)), people)
        cal = mia.person_scores({r["id"]: g - b for r, g, b in zip(rows, losses, ref, strict=True)}, people)
        members, others = [cal[p.subject_id] for p in c.trained], [cal[p.subject_id] for p in c.holdout]
        return {
            "trained": statistics.fmean(plain[p.subject_id] for p in c.trained),
            "holdout": statistics.fmean(plain[p.subject_id] for p in c.holdout),
            "auc": mia.auc(members, others),
        }

    assert merged is not None
    table = {"merged adapter (default)": score(mia.text_losses(train.load_peft(base, merged), tok, texts))}
    shard_losses = [mia.text_losses(train.load_peft(base, a.path), tok, texts) for a in per_shard.values() if a]
    routed = [statistics.fmean(col) for col in zip(*shard_losses, strict=True)]
    table["routing table (uniform over live shards)"] = score(routed)
    table["base model (no adapter)"] = score(ref)
    return table


def _victims(db: dbm.DatabaseInfo, c: corpus.Corpus, n: int) -> list[corpus.Person]:
    """Subjects whose deletion shortens a live prefix each time: per shard the last live slice of
    its served sequence first, then the one before, round-robin over the shards."""
    plan = training.plan_for(db, [])
    orders = {u.shard: u.order for u in training.planner_units(db) if u.sequence == plan.shards[u.shard].sequence}
    with db.connect() as conn:
        cell = {r[0].rsplit("-", 1)[0]: (r[1], r[2]) for r in conn.execute("SELECT id, shard, slice FROM records")}
    out: list[corpus.Person] = []
    for depth in (3, 2, 1):
        for shard in sorted(orders):
            want = (shard, orders[shard][depth])
            person = next((p for p in c.trained if cell.get(p.subject_id) == want), None)
            if person is not None and len(out) < n:
                out.append(person)
    return out


if __name__ == "__main__":
    main()
