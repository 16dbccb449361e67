"""The report page from a report document: every section, real plots, figures that agree with the
probe's, escaping, and the states a request can be in (not run yet, no probes, no scores kept).
The page from a real deletion, opened in Chromium: tests/integration/test_serving_e2e.py."""

from __future__ import annotations

import copy
import random
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.report import page, plots
from shards import mia

REPORT = {
    "request": {
        "id": "3f1c1d8e-6a53-4a8a-9a35-0d5c2c1f9b10",
        "type": "erasure",
        "status": "completed",
        "outcome": "deleted",
        "methods": ["exact (S3T)"],
        "verdict": "inconclusive",
        "reason": "membership probe: too few records",
        "identity_types": ["email"],
        "subject_hashes": ["a1b2c3d4e5f60718"],
        "record_ids_named": 0,
        "unknown_records": 0,
        "same_text_records": 0,
        "batch_id": "5b0d4a3e-1111-4c1c-8e4b-4a8f6f1b2c3d",
        "received": "2026-12-06T10:00:00+00:00",
        "forgotten": "2026-12-06T10:00:00.400000+00:00",
        "completed": "2026-12-06T10:00:06+00:00",
        "deadline": "2027-01-05T10:00:00+00:00",
    },
    "timeline": {
        "stages": [
            {"stage": "queued", "seconds": 0.02},
            {"stage": "cut", "seconds": 0.05},
            {"stage": "materialise", "seconds": 0.2},
            {"stage": "verify", "seconds": 5.1},
        ],
        "milestones": [
            {"milestone": "received", "at": "2026-12-06T10:00:00+00:00", "seconds": 0.0},
            {"milestone": "forgotten", "at": "2026-12-06T10:00:00.4+00:00", "seconds": 0.4},
        ],
    },
    "plan": {
        "records": 3,
        "affected_shards": [0],
        "dead_shards": [],
        "full_depth": 4,
        "served": {"0": {"sequence": 1, "version": 0, "prefix": 2, "cuts": {"0": 2, "1": 3}}},
        "depth_before": {"0": None},
        "retrain_queued": ["0/0", "0/1"],
        "documents": 0,
    },
    "proof": {
        "at_completion": True,
        "now": {
            "records": 3,
            "cells": 1,
            "excludes": True,
            "blocks": [
                {
                    "shard": 0,
                    "sequence": 1,
                    "version": 0,
                    "block": 0,
                    "slices": [1],
                    "records": 9,
                    "records_sha256": "ab" * 32,
                    "holds_deleted": 0,
                },
                {
                    "shard": 0,
                    "sequence": 1,
                    "version": 0,
                    "block": 1,
                    "slices": [1, 0],
                    "records": 18,
                    "records_sha256": "cd" * 32,
                    "holds_deleted": 0,
                },
            ],
        },
    },
    "equivalence": {
        "at_completion": {
            "served_sha256": "ef" * 32,
            "generation": 7,
            "replicas": {"replica-0": True, "replica-1": True},
        },
        "now": {
            "generation": 7,
            "served_sha256": "ef" * 32,
            "replicas": [
                {
                    "id": "replica-0",
                    "routable": True,
                    "serving_sha256": "ef" * 32,
                    "acked_generation": 7,
                    "matches": True,
                }
            ],
        },
    },
    "probes": {
        "membership": None,
        "scores": None,
        "verbmem": None,
        "verdict": "inconclusive",
        "reason": None,
        "skipped": None,
        "sample": None,
        "scope": None,
    },
    "kb": None,
    "ledger": {
        "entries": [
            {
                "seq": 12,
                "kind": "deletion.completed",
                "created_at": "2026-12-06T10:00:06+00:00",
                "row_hash": "12" * 32,
                "chain_ok": True,
                "inclusion_ok": True,
            }
        ],
        "checkpoint": {
            "size": 12,
            "root": "34" * 32,
            "key_name": "lethe",
            "origin": "lethe.example/ledger",
            "signature_ok": True,
        },
    },
}


def with_probes(rng: random.Random, deleted: int = 12, holdout: int = 40) -> dict:
    r = copy.deepcopy(REPORT)
    scores = {"deleted": {}, "holdout": {}}
    for attack in ("loss", "loss_calibrated", "zlib", "min_k"):
        scores["deleted"][attack] = sorted(rng.gauss(1.0, 0.3) for _ in range(deleted))
        scores["holdout"][attack] = sorted(rng.gauss(1.1, 0.3) for _ in range(holdout))
    membership = {
        "records": deleted,
        "holdout_records": holdout,
        "min_detectable_auc": 0.62,
        "verdict": "passed",
        "scored_with": "vLLM prompt log-probabilities on replica-0",
        **{f"auc_{a}": mia.auc(scores["deleted"][a], scores["holdout"][a]) for a in scores["deleted"]},
    }
    verbmem = {
        "rouge_l_by_replica": {
            "replica-0": {"deleted": 0.21, "holdout": 0.2},
            "replica-1": {"deleted": 0.22, "holdout": 0.2},
        },
        "max_gap_over_holdout": 0.02,
        "unreachable": [],
    }
    r["probes"].update(membership=membership, scores={"membership": scores}, verbmem=verbmem, verdict="passed")
    return r


def svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg.*?</svg>", html, flags=re.S)]


def test_every_section_is_on_the_page_with_its_plots_and_nothing_it_does_not_need():
    html = page.render(with_probes(random.Random(1)))
    for name in page.SECTIONS:
        assert f'<section id="{name}">' in html
    drawn = svgs(html)  # well-formed SVG: the timeline, the ROC curves, the distributions, VerbMem
    assert len(drawn) == 4
    assert all(len(list(s.iter())) > 50 for s in drawn)
    # nothing to fetch: XML namespaces are names, and url() only points into the page (clip paths)
    assert "<script" not in html and "@import" not in html and "<link" not in html
    assert not re.findall(r"https?://(?!www\.w3\.org/(2000/svg|1999/xlink)\b)", html)
    assert not re.findall(r"url\((?!#)", html)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # the figures' ids (clip paths among them) unique on the page
    for ref in re.findall(r"url\(#([^)]+)\)", html):
        assert ref in ids
    assert f'content="{page.e(page.CSP)}"' in html


def test_the_plotted_aucs_are_the_probes_mann_whitney_aucs_with_an_interval_around_them():
    r = with_probes(random.Random(2))
    scores = r["probes"]["scores"]["membership"]
    _, figures = plots.rocs(scores, list(scores["deleted"]))
    for attack, f in figures.items():
        assert f["auc"] == pytest.approx(r["probes"]["membership"][f"auc_{attack}"], abs=1e-4)
        assert f["interval"][0] <= f["auc"] <= f["interval"][1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=12),
    st.lists(st.integers(0, 6), min_size=1, max_size=12),
)
def test_roc_area_equals_the_mann_whitney_auc_ties_counting_half(members, nonmembers):
    import numpy as np

    x, y = plots.roc([float(v) for v in members], [float(v) for v in nonmembers])
    assert x[0] == y[0] == 0 and x[-1] == y[-1] == 1
    assert float(np.trapezoid(y, x)) == pytest.approx(mia.auc(members, nonmembers))


def test_the_interval_narrows_with_more_records_and_stays_in_range():
    small, large = plots.auc_interval(0.7, 3, 30), plots.auc_interval(0.7, 300, 3000)
    assert 0 <= small[0] < large[0] < 0.7 < large[1] < small[1] <= 1


def test_text_from_the_result_is_escaped():
    r = copy.deepcopy(REPORT)
    r["request"]["reason"] = "<img src=x onerror=alert(1)>"
    r["ledger"]["entries"][0]["kind"] = "<script>alert(1)</script>"
    html = page.render(r)
    assert "<img src=x" not in html and "<script>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_a_request_that_has_not_run_renders_what_it_has():
    r = copy.deepcopy(REPORT)
    r["request"].update(status="pending", verdict=None, forgotten=None, completed=None, outcome=None)
    r["timeline"]["stages"] = []
    r["plan"] = None
    r["equivalence"]["at_completion"] = None
    r["proof"] = {"at_completion": None, "now": {"records": 3, "cells": 1, "excludes": True, "blocks": []}}
    html = page.render(r)
    assert "No step times recorded" in html and "No plan" in html and "not checked" in html


def test_probes_without_kept_scores_show_the_figures_and_say_why_no_curve():
    r = with_probes(random.Random(3))
    r["probes"]["scores"] = None
    html = page.render(r)
    assert "Per-record scores were not kept" in html
    assert len(svgs(html)) == 2  # the timeline and VerbMem


def test_the_probes_scope_names_the_batch_and_how_many_others_were_scored_with_it():
    r = with_probes(random.Random(4))
    r["probes"]["scope"] = {"batch": "b-1", "records": 12}  # a result from before batches were verified together
    assert "Scored with its batch b-1 (12 records)" in page.render(r)
    r["probes"]["scope"] = {"batch": "b-1", "batches": ["b-1"], "requests": 3, "records": 12}
    assert "Scored with its batch b-1 (12 records)" in page.render(r)
    r["probes"]["scope"] = {"batch": "b-2", "batches": ["b-1", "b-2", "b-3"], "requests": 40, "records": 160}
    assert "Scored with its batch b-2 and 2 other batches (160 records)" in page.render(r)
    r["probes"]["scope"]["batches"] = ["b-1", "b-2"]
    assert "Scored with its batch b-2 and 1 other batch (160 records)" in page.render(r)


def test_the_depth_before_comes_from_the_adapter_the_ledger_recorded_before():
    from service.report.evidence import depth_before

    served = {"0": {"prefix": 2}, "1": {"prefix": 4}, "2": {"prefix": 1}, "3": {"prefix": 0}}
    applied = {
        "adapters": {
            "0": {"before": {"adapter": "s00-q1-p3-v0-0123456789ab"}},  # cut again: 3 → 2
            "2": {"before": {"adapter": "lethe-g1-0123456789ab"}},  # first change since start-up
            "3": {"before": {"adapter": None}},  # dead already
        }
    }
    assert depth_before(applied, served) == {"0": 3, "1": 4, "2": None, "3": 0}
    html = page.render(REPORT)
    assert "4 (as trained)" in html and "2 of 4" in html


def test_a_lineage_holding_a_deleted_record_is_shown_as_a_failure():
    r = copy.deepcopy(REPORT)
    r["proof"]["now"]["blocks"][1]["holds_deleted"] = 2
    r["proof"]["now"]["excludes"] = False
    html = page.render(r)
    assert '<span class="bad">2</span>' in html and '<span class="bad">no</span>' in html
