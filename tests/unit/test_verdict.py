"""The verification's meaning as a table: which checks failed, whether a request completes, its verdict."""

from __future__ import annotations

import pytest

from service.core.verdict import Checks, kb_clean, verdict

PROVEN = {"lineage_excludes_deleted": True, "equivalence": {"replicas": {"r0": True, "r1": True}}}
KB_OK = {"documents_deleted": True, "retrieval": {"passed": True}, "leakage": {"passed": True}}

CASES = [
    # (name, verification, failed checks)
    ("all passed", {**PROVEN, "records_purged": True}, []),
    ("no replica registered: nothing to disagree", {"lineage_excludes_deleted": True, "records_purged": True}, []),
    ("a block still saw a record", {**PROVEN, "lineage_excludes_deleted": False, "records_purged": True}, ["lineage"]),
    (
        "a replica serves other weights",
        {**PROVEN, "equivalence": {"replicas": {"r0": True, "r1": False}}, "records_purged": True},
        ["equivalence"],
    ),
    ("text left", {**PROVEN, "records_purged": False}, ["records_purged"]),
    ("nothing known: nothing proven", {}, ["lineage", "records_purged"]),
    ("documents deleted, probes passed", {**PROVEN, "records_purged": True, "kb": KB_OK}, []),
    ("documents left", {**PROVEN, "records_purged": True, "kb": {**KB_OK, "documents_deleted": False}}, ["kb"]),
    ("a leak", {**PROVEN, "records_purged": True, "kb": {**KB_OK, "leakage": {"passed": False}}}, ["kb"]),
    ("a probe without a result", {**PROVEN, "records_purged": True, "kb": {**KB_OK, "injection": {}}}, ["kb"]),
]


@pytest.mark.parametrize(("name", "verification", "failed"), CASES, ids=[c[0] for c in CASES])
def test_checks(name, verification, failed):
    c = Checks.of(verification)
    assert c.failed == failed
    assert c.complete == (failed == [])
    assert c.proven == ("lineage" not in failed and "equivalence" not in failed)


def test_kb_clean_needs_the_documents_gone_and_every_probe_that_ran_passed():
    assert kb_clean({"documents_deleted": True})
    assert not kb_clean({"documents_deleted": True, "retrieval": {"passed": False}})
    assert not kb_clean({"retrieval": {"passed": True}})


@pytest.mark.parametrize(
    ("proven", "membership", "expected"),
    [
        (False, {"verdict": "passed"}, "failed"),
        (True, None, "passed"),
        (True, {"verdict": "passed"}, "passed"),
        (True, {"auc_loss": 0.5}, "passed"),
        (True, {"verdict": "inconclusive", "reason": "too few records"}, "inconclusive"),
        (True, {"verdict": "failed", "reason": "AUC 0.9"}, "failed"),
    ],
)
def test_verdict(proven, membership, expected):
    v = verdict(proven, membership)
    assert v["verdict"] == expected
    assert ("reason" in v) == (expected != "passed")
    if proven and expected != "passed":
        assert v["reason"].startswith("membership probe: ")
