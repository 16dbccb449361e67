"""What a deletion's verification means, decided once (the workflow completes or fails a request
with it; the metrics count failures with it): pure functions over frozen values, table-tested in
tests/unit/test_verdict.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KB_PROBES = ("retrieval", "leakage", "injection")


@dataclass(frozen=True)
class Checks:
    """The checks a completed deletion must pass; ``kb`` is None when it named no documents."""

    lineage: bool  # no live block's lineage holds a deleted record, the served prefix is the plan's
    equivalence: bool  # every routable replica serves the published clean adapter
    records_purged: bool  # the records' text is gone and its keys destroyed
    kb: bool | None  # the documents are deleted and no retrieval probe retrieved or leaked them

    @classmethod
    def of(cls, verification: Mapping[str, Any]) -> Checks:
        kb = verification.get("kb")
        return cls(
            lineage=bool(verification.get("lineage_excludes_deleted", False)),
            equivalence=all(verification.get("equivalence", {}).get("replicas", {}).values()),
            records_purged=bool(verification.get("records_purged", False)),
            kb=None if kb is None else kb_clean(kb),
        )

    @property
    def proven(self) -> bool:
        """Exact deletion, proven structurally (lineage) and by equivalence."""
        return self.lineage and self.equivalence

    @property
    def failed(self) -> list[str]:
        names = {"lineage": self.lineage, "equivalence": self.equivalence, "records_purged": self.records_purged}
        return [n for n, ok in names.items() if not ok] + (["kb"] if self.kb is False else [])

    @property
    def complete(self) -> bool:
        return not self.failed


def kb_clean(report: Mapping[str, Any]) -> bool:
    """The documents gone and, for each retrieval probe that ran, passed."""
    return bool(report.get("documents_deleted")) and all(
        bool(report[p].get("passed")) for p in KB_PROBES if p in report
    )


def verdict(proven: bool, membership: Mapping[str, Any] | None) -> dict[str, Any]:
    """The verification's one word: failed when the structural proof or equivalence failed or a
    probe saw a membership signal; inconclusive when a probe had too little power to say; else
    passed. The proof decides the request's status; the probes are evidence beside it (with a
    handful of records their AUC is noisy by nature)."""
    if not proven:
        return {
            "verdict": "failed",
            "reason": "a live block's lineage holds a deleted record, or a replica "
            "serves other weights than the clean adapter",
        }
    if membership is None or membership.get("verdict", "passed") == "passed":
        return {"verdict": "passed"}
    return {"verdict": membership["verdict"], "reason": f"membership probe: {membership.get('reason', '')}"}
