"""``make demo``: the main job on embedded defaults, narrated step by step.

At this stage: database → migrations → base model → corpus → ingest → S3T training →
what a deletion would cut. Later stages (serving, deletions through the API, receipts)
extend this story.
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from service import app as lethe
from service import training
from service.config import Settings
from shards import corpus

STEPS = 6


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

        console.print(f"[3/{STEPS}] corpus")
        out = settings.corpus_dir()
        if not (out / "train.jsonl").exists():
            corpus.write(corpus.generate(settings.corpus_seed), out)
        console.print(f"      {out}")

        console.print(f"[4/{STEPS}] ingest (each data subject placed into a (shard, slice) once)")
        result = lethe.ingest(db, settings, out / "train.jsonl")
        console.print(f"      {result.inserted} records added, {result.unchanged} already present")

        s3t = settings.s3t
        console.print(f"[5/{STEPS}] S3T training: {s3t.shards} shard(s) × {s3t.slices} slices, {s3t.budget} sequences")
        done = training.train_all(db, lethe.training_job(settings, model.path))
        console.print(f"      {len(done)} unit(s) trained" if done else "      all units already trained (reused)")

        console.print(f"[6/{STEPS}] what deleting one subject would cut (nothing is deleted yet)")
        subject = json.loads((out / "subjects.jsonl").read_text().splitlines()[0])
        ids = lethe.resolve_records(db, settings, [], [f"email:{subject['email']}"])
        plan = training.plan_for(db, ids)
        for k, sp in sorted(plan.shards.items()):
            console.print(f"      shard {k}: serve sequence {sp.sequence} with {sp.prefix}/{sp.num_blocks} blocks; "
                          f"cut in every sequence: {dict(sp.tainted)}")  # fmt: skip
        held = lethe.holdings(db)

    table = Table(title="What Lethe holds")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    table.add_row("database", db.describe())
    table.add_row("subject ids (keyed hashes)", str(held.subjects))
    table.add_row("records", f"{held.records} ({held.purged} purged, {held.placed} placed in shards)")
    table.add_row("base model", f"{model.path} ({model.parameters:,} parameters)")
    table.add_row("weights sha256", model.weights_sha256)
    table.add_row("S3T units", f"{s3t.shards * s3t.budget} under {settings.artifacts_dir()}")
    table.add_row("example deletion", f"{len(ids)} records of one subject → {len(plan.affected)} shard(s) cut")
    table.add_row("elapsed", f"{time.perf_counter() - started:.1f} s")
    console.print(table)
    return 0
