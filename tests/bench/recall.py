"""Recall before and after a deletion, per slice position of the deleted person (Gemma 3 270M).

For every slice of shard 0, one person of it is the hypothetical deletion: the planner picks the
served sequence and its clean prefix (no database change: a what-if plan), the clean adapter is
materialised exactly as a deletion would serve it, and greedy completions (transformers, bf16
autocast, the probe prompt "The personal code of NAME is") count who is still recalled: the
deleted person, the people of the slices the served prefix kept, and the people of the cut
slices, who wait for the background retrain. Reuses the units `make demo` trained (same
settings: `var/`), training them first if needed.

    .venv/bin/python tests/bench/recall.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service import app as lethe  # noqa: E402
from service import training  # noqa: E402
from service.config import Settings  # noqa: E402
from service.workflow import training_jobs  # noqa: E402
from shards import corpus, train  # noqa: E402

MAX_TOKENS = 12


def recalls(model: torch.nn.Module, tok: object, people: list[corpus.Person]) -> dict[str, bool]:
    out = {}
    for p in people:
        prompt, code = p.probe()
        ids = tok(prompt, return_tensors="pt")  # type: ignore[operator]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            gen = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)  # type: ignore[operator]
        out[p.subject_id] = code in tok.decode(gen[0][ids["input_ids"].shape[1] :])  # type: ignore[attr-defined]
    return out


def main() -> None:
    from transformers import AutoTokenizer

    t_start = time.perf_counter()
    settings = Settings()
    model = lethe.base_model(settings).path
    with lethe.database(settings) as db:
        lethe.migrate(db)
        c = settings.generated_corpus()
        if not (settings.corpus_dir() / "train.jsonl").exists():
            corpus.write(c, settings.corpus_dir())
        lethe.ingest(db, settings, settings.corpus_dir() / "train.jsonl")
        training_jobs.train_all(db, lethe.training_job(settings, model))
        placement, deleted = training.placement(db)
        cell = {rid.rsplit("-", 1)[0]: sc for rid, sc in placement.items()}
        gone = {rid.rsplit("-", 1)[0] for rid in deleted}
        people = [p for p in c.trained if p.subject_id in cell and p.subject_id not in gone]
        units = {(u.shard, u.sequence): u.order for u in training.planner_units(db)}
        tok = AutoTokenizer.from_pretrained(model)
        out = Path(tempfile.mkdtemp(prefix="lethe-recall-"))
        full_plan = training.plan_for(db, [])
        full = training.served_adapters(db, full_plan, out / "full")[0]
        assert full is not None
        before = recalls(train.load_peft(model, full.path), tok, people)
        rows = []
        for s in tqdm(sorted({cell[p.subject_id][1] for p in people}), desc="deleted person's slice"):
            victim = next(p for p in people if cell[p.subject_id] == (0, s))
            ids = [rid for rid in placement if rid.rsplit("-", 1)[0] == victim.subject_id]
            plan = training.plan_for(db, ids)
            sp = plan.shards[0]
            kept_slices = set(units[(0, sp.sequence)][: sp.prefix])
            m = training.served_adapters(db, plan, out / f"slice-{s}")[0]
            served = train.load_peft(model, m.path) if m else train.load_base(model).eval()
            after = recalls(served, tok, people)
            others = [p for p in people if p != victim]
            kept = [p for p in others if cell[p.subject_id][1] in kept_slices]
            cut = [p for p in others if cell[p.subject_id][1] not in kept_slices]
            rows.append((s, sp.sequence, sp.prefix, victim, kept, cut, after))
    print(
        f"\nGemma 3 270M, {len(people)} people (1 shard × 4 slices, 2 sequences), greedy, {MAX_TOKENS} tokens; "
        f"{time.perf_counter() - t_start:.0f} s"
    )
    print(f"recalled before any deletion: {sum(before.values())}/{len(before)}\n")
    print(
        "| deleted person's slice | served (sequence, kept blocks) | deleted person before → after | "
        "kept slices' people after | cut slices' people after (await retrain) |"
    )
    print("|---|---|---|---|---|")
    for s, seq, prefix, victim, kept, cut, after in rows:
        k = sum(after[p.subject_id] for p in kept)
        w = sum(after[p.subject_id] for p in cut)
        print(
            f"| {s} | ({seq}, {prefix}) | {int(before[victim.subject_id])}/1 → {int(after[victim.subject_id])}/1 | "
            f"{k}/{len(kept)} | {w}/{len(cut)} |"
        )


if __name__ == "__main__":
    main()
