"""The exact-vs-approximate comparison bench at its reduced size (``--quick``), as a smoke test:
on Gemma, every model (retrain per seed, S3T deactivation, S3T after retrain, GA, GradDiff, NPO,
SalUn) measured at 16, 8 and 4 bits on every criterion, the tables printed and the plots drawn.
The full run's figures are in docs/benchmarks.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("original", "retrain seed 0", "retrain seed 1", "S3T deactivation", "S3T after retrain")
METHODS = ("GA", "GradDiff", "NPO", "SalUn")
CRITERIA = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "auc_min_k", "privleak", "ppl_holdout", "ppl_general")

pytestmark = pytest.mark.slow


@pytest.mark.timeout(2400)
def test_the_quick_comparison_measures_every_method_at_every_precision(gemma_path, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "tests/bench/unlearning_comparison.py", "--quick", "--out", str(out), "--plots", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    main = report["main"]
    assert set(main) == {*MODELS, *METHODS}
    for name, row in main.items():
        for bits in ("16", "8", "4"):
            figures = row[bits]
            for c in CRITERIA:
                assert math.isfinite(figures[c]), (name, bits, c)
            for c in ("verbmem_forget", "knowmem_forget", "knowmem_retain", "auc_min_k"):
                assert 0 <= figures[c] <= 1, (name, bits, c, figures[c])
            assert figures["ppl_holdout"] > 1 and figures["ppl_general"] > 1
        # fewer bits, a coarser model: the quantizer really ran at each precision
        errors = [row[b]["quantization_error"] for b in ("16", "8", "4")]
        assert 0 < errors[0] < errors[1] < errors[2], (name, errors)
    # the original model memorised the forget set (what the comparison is about is not vacuous),
    # the retrained references never saw it
    retrained = max(main[f"retrain seed {s}"]["16"]["verbmem_forget"] for s in (0, 1))
    assert main["original"]["16"]["verbmem_forget"] > retrained
    plan = main["S3T deactivation"]["plan"]
    assert 0 <= plan["depth"] < plan["of"]  # the deletion cut the served sequence
    for m in METHODS:
        assert main[m]["setting"].startswith(m) and main[m]["seconds"] > 0
    assert set(report["scalability"]) == {"1", "2"}
    assert all(len(seq) == 2 for seq in report["sustainability"]["rows"].values())
    # the target check: each S3T model's forget criteria against the seeds' min–max, at each precision
    for name in ("S3T deactivation", "S3T after retrain"):
        for bits in ("16", "8", "4"):
            for c in ("verbmem_forget", "knowmem_forget", "privleak"):
                t = report["target"][name][bits][c]
                seeds = [main[f"retrain seed {s}"][bits][c] for s in (0, 1)]
                assert (t["min"], t["max"], t["value"]) == (min(seeds), max(seeds), main[name][bits][c])
                assert (t["outside_by"] == 0) == (t["min"] <= t["value"] <= t["max"]), t
    for table in (
        "### 16 bits",
        "### 8 bits",
        "### 4 bits",
        "### Target",
        "### Recovery by quantization",
        "### Scalability",
    ):
        assert table in proc.stdout
    for plot in ("unlearning-knowmem_forget.svg", "unlearning-verbmem_forget.svg"):
        assert ET.parse(out / plot).getroot().tag.endswith("svg")
    # resumable: every figure is kept as soon as it is measured (a re-run reads them back)
    kept = json.loads((out / "results.json").read_text())

    def figures(row: dict) -> dict:
        return {b: {k: v for k, v in row[b].items() if k != "privleak"} for b in ("16", "8", "4")}

    assert figures(kept["main/original"]) == figures(main["original"])
