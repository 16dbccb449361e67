"""Memorisation and forgetting are real, on Gemma 3 270M (the default base model; design.md §8).

One shard, four slices of 3 people (3 records each), two sequences, LoRA r16/α32 on
q/k/v/o/gate/up/down, the default recipe (newest slice replayed, a stage stops once it recalls
its records). A LOSS attack scored per person (each record's loss calibrated against the base
model's, then averaged over the person's records) must separate every slice's people from 30
never-trained holdout people before a deletion (AUC ≥ 0.9); after deleting one subject, the
people of the dropped slices together look like holdout people (AUC ≤ 0.65, the deleted subject
included) and the surviving slices are kept (≥ 0.9). The background retrain brings the dropped
slices back. The uncalibrated LOSS AUCs are reported beside them. Figures are written to
var/test/reports/s3t_forgetting.json for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import psycopg
import pytest
from transformers import AutoTokenizer

from service import app as lethe
from service import training
from service.workflow import training_jobs
from shards import mia, train
from tests.integration.conftest import clone_trained, s3t_settings

pytestmark = pytest.mark.slow
REPORT = Path(__file__).resolve().parents[2] / "var" / "test" / "reports" / "s3t_forgetting.json"


def record_losses(base_model, adapter, c):
    model = train.load_peft(base_model, adapter) if adapter else train.load_base(base_model).eval()
    tok = AutoTokenizer.from_pretrained(base_model)
    rows = list(c.records(c.trained)) + list(c.records(c.holdout))
    return dict(zip([r["id"] for r in rows], mia.text_losses(model, tok, [r["text"] for r in rows]), strict=True))


def slice_aucs(losses, c, slice_of):
    """Per-slice AUC of trained people vs holdout people, plus per-person scores."""
    people = {p.subject_id: [r["id"] for r in c.records([p])] for p in c.trained + c.holdout}
    scores = mia.person_scores(losses, people)
    holdout = [scores[p.subject_id] for p in c.holdout]
    by_slice = {
        s: mia.auc([scores[p.subject_id] for p in c.trained if slice_of.get(p.subject_id) == s], holdout)
        for s in range(4)
    }
    return by_slice, scores, holdout


def attack(base_model, adapter, c, slice_of, reference):
    """(calibrated per-slice AUCs, plain per-slice AUCs, plain per-person scores, plain holdout scores)."""
    losses = record_losses(base_model, adapter, c)
    calibrated, _, _ = slice_aucs(mia.calibrated(losses, reference), c, slice_of)
    plain, scores, holdout = slice_aucs(losses, c, slice_of)
    return calibrated, plain, scores, holdout


def test_memorisation_forgetting_and_retrain(trained_s3t, embedded_server, gemma_path, tmp_path):
    # the session's trained units (conftest.trained_s3t: the same layout and corpus, a fixed server
    # key, so the keyed-hash placement and every figure are reproducible), cloned
    db = clone_trained(trained_s3t, embedded_server, tmp_path / "var")
    s = s3t_settings(db.url, tmp_path / "var", gemma_path)
    c = trained_s3t.corpus
    job = lethe.training_job(s, gemma_path)
    assert training_jobs.train_all(db, job) == []  # trained already
    with psycopg.connect(db.url) as conn:
        slice_of = {rid.rsplit("-", 1)[0]: sl for rid, sl in conn.execute("SELECT id, slice FROM records")}
    per_slice = s.corpus_people // 4
    assert sorted(list(slice_of.values()).count(sl) for sl in range(4)) == [per_slice] * 4

    def served_now():
        p = training.plan_for(db, [])
        return p, training.served_adapters(db, p, tmp_path / "served")[0].path

    reference = record_losses(gemma_path, None, c)
    plan0, adapter0 = served_now()
    assert plan0.shards[0].prefix == 4
    before, before_plain, _, _ = attack(gemma_path, adapter0, c, slice_of, reference)
    assert min(before.values()) >= 0.9, before

    orders = training.orders_for(s.s3t)  # (0, 1, 2, 3) and (1, 2, 3, 0)
    victim = next(p for p in c.trained if slice_of[p.subject_id] == orders[0][2])
    ids = lethe.resolve_records(db, s, [], [f"person:{victim.subject_id}"])
    cut = training.forget(db, ids, purge=lethe.data_keys(s))
    sp = cut.shards[0]
    assert (sp.sequence, sp.prefix) == (0, 2)
    dropped, kept = set(orders[0][2:]), set(orders[0][:2])
    _, adapter1 = served_now()
    after, after_plain, scores, holdout = attack(gemma_path, adapter1, c, slice_of, reference)
    dropped_people = [scores[p.subject_id] for p in c.trained if slice_of[p.subject_id] in dropped]
    dropped_vs_holdout = mia.auc(dropped_people, holdout)
    assert dropped_vs_holdout <= 0.65, (dropped_vs_holdout, after)
    assert all(after[sl] >= 0.9 for sl in kept), after
    victim_vs_holdout = mia.auc([scores[victim.subject_id]], holdout)

    training_jobs.train_all(db, job)  # background retrain on the remaining data
    plan2, adapter2 = served_now()
    assert plan2.shards[0].prefix == 4 and plan2.shards[0].version >= 1
    # the deleted subject is never trained again: it must look like holdout, not like its slice
    kept_people = {k: v for k, v in slice_of.items() if k != victim.subject_id}
    retrained, retrained_plain, scores2, holdout2 = attack(gemma_path, adapter2, c, kept_people, reference)
    victim_after_retrain = mia.auc([scores2[victim.subject_id]], holdout2)
    fifth = statistics.quantiles(holdout2, n=20)[0]
    assert scores2[victim.subject_id] >= fifth  # the retrain never saw the deleted subject
    assert min(retrained.values()) >= 0.9, retrained  # dropped slices are back (minus the deleted subject)

    report = {
        "layout": {
            "shards": 1,
            "slices": 4,
            "budget": 2,
            "people_per_slice": per_slice,
            "holdout_people": len(c.holdout),
            "base_model": "gemma-3-270m",
        },
        "attack": "LOSS, calibrated against the base model, mean over a person's records",
        "auc_before": before,
        "plain_loss_auc_before": before_plain,
        "deleted_subject_slice": orders[0][2],
        "served_after_deletion": {"sequence": sp.sequence, "prefix": sp.prefix, "dropped_slices": sorted(dropped)},
        "auc_after_deletion": after,
        "dropped_people_auc_vs_holdout_after_deletion": dropped_vs_holdout,
        "plain_loss_auc_after_deletion": after_plain,
        "collateral_people": sum(1 for p in c.trained if slice_of[p.subject_id] in dropped) - 1,
        "deleted_subject_auc_vs_holdout_after_deletion": victim_vs_holdout,
        "auc_after_retrain": retrained,
        "plain_loss_auc_after_retrain": retrained_plain,
        "deleted_subject_auc_vs_holdout_after_retrain": victim_after_retrain,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
