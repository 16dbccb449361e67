"""S3T training cost against one ordinary LoRA fine-tune of the same data and epochs.

Both run here, in this process, one after the other, on the local base model and the generated
corpus: the baseline trains every layer's LoRA at once on all records for E epochs; S3T trains
m shards × B sequences × L stages on cumulative slices. Theory (sample passes): S3T costs
B·(L+1)/2 times the baseline; top-down stages also run shorter backward passes.

    .venv/bin/python tests/bench/train_cost.py [--shards 2 --slices 4 --budget 2 --epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from service.config import Settings
from service.core.identity import content_hash
from shards import basemodel, corpus, sequences, train
from shards.specs import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--people", type=int, default=60)
    args = ap.parse_args()
    m, L, B, E = args.shards, args.slices, args.budget, args.epochs

    settings = Settings()
    model = basemodel.build(settings.model, settings.models_dir())
    c = corpus.generate(seed=0, trained=args.people, holdout=1)
    records = [train.TrainRecord(r["id"], r["text"], content_hash(r["text"])) for r in c.records(c.trained)]
    by_person: dict[str, list[train.TrainRecord]] = {}
    for r in records:
        by_person.setdefault(r.id.rsplit("-", 1)[0], []).append(r)
    cells: dict[tuple[int, int], list[train.TrainRecord]] = {}
    for i, person in enumerate(sorted(by_person)):  # round-robin placement, as at ingest
        cells.setdefault(((i % (m * L)) % m, (i % (m * L)) // m), []).extend(by_person[person])
    print(f"torch threads: {torch.get_num_threads()}; {len(records)} records, {model.parameters:,}-parameter base")
    print(f"(m, L, B) = ({m}, {L}, {B}), {E} epochs a stage; LoRA r16/α32 on q/k/v/o/gate/up/down\n")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train.train_unit(
            model.path,
            train.UnitSpec(0, 0, (0,)),
            {0: records},
            TrainConfig(num_blocks=1, epochs=E),
            Path(tmp) / "baseline",
            progress=True,
        )
        baseline = time.perf_counter() - t0

        t0 = time.perf_counter()
        cfg = TrainConfig(num_blocks=L, epochs=E)
        for k in range(m):
            slices = {s: cells.get((k, s), []) for s in range(L)}
            for j, order in enumerate(sequences.cyclic(L, B)):
                train.train_unit(model.path, train.UnitSpec(k, j, order), slices, cfg, Path(tmp) / "s3t", progress=True)
        s3t = time.perf_counter() - t0

    theory = B * (L + 1) / 2
    print("\n| what | seconds | × baseline |")
    print("|---|---:|---:|")
    print(f"| ordinary LoRA fine-tune (all layers, all records, {E} epochs) | {baseline:.1f} | 1.00 |")
    print(f"| S3T, (m, L, B) = ({m}, {L}, {B}) | {s3t:.1f} | {s3t / baseline:.2f} |")
    print(f"| theory B·(L+1)/2 in sample passes | | {theory:.2f} |")
    print(f"\nmeasured / theory = {s3t / baseline / theory:.2f} (below 1: top-block stages backpropagate less)")


if __name__ == "__main__":
    main()
