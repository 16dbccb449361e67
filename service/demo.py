"""``make demo``: the main job on embedded defaults, narrated step by step.

At this stage: database → migrations → base model → corpus → ingest → what the system holds.
Later stages (S3T training, serving, deletions, receipts) extend this story.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from service import app as lethe
from service.config import Settings
from shards import corpus


def run(settings: Settings, console: Console) -> int:
    started = time.perf_counter()
    console.rule("[bold]Lethe demo")
    with lethe.database(settings) as db:
        console.print(f"[1/4] database: {db.describe()}")
        applied = lethe.migrate(db)
        console.print(f"      migrations applied now: {applied or 'none (up to date)'}")

        console.print("[2/4] base model")
        model = lethe.base_model(settings)
        console.print(f"      {model.path} ({'reused' if model.reused else 'built'}), {model.parameters:,} parameters")

        console.print("[3/4] corpus")
        out = settings.corpus_dir()
        if not (out / "train.jsonl").exists():
            corpus.write(corpus.generate(settings.corpus_seed), out)
        console.print(f"      {out}")

        console.print("[4/4] ingest")
        result = lethe.ingest(db, settings, out / "train.jsonl")
        console.print(f"      {result.inserted} records added, {result.unchanged} already present")
        held = lethe.holdings(db)

    table = Table(title="What Lethe holds")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    table.add_row("database", db.describe())
    table.add_row("subject ids (keyed hashes)", str(held.subjects))
    table.add_row("records", f"{held.records} ({held.purged} purged, {held.placed} placed in shards)")
    table.add_row("base model", str(model.path))
    table.add_row("parameters", f"{model.parameters:,}")
    table.add_row("weights sha256", model.weights_sha256)
    table.add_row("elapsed", f"{time.perf_counter() - started:.1f} s")
    console.print(table)
    return 0
