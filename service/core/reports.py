"""A deletion's report: what it did and the evidence that it holds, for people to look at.

One core call for every edge: the REST route renders it as an HTML page, the gRPC method returns
it as JSON, ``lethe report`` writes the page. The evidence is gathered by a port (the database,
the ledger, the replicas' state); reading it needs the scope that reading the deletion needs.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from service.core.deletions import Deletion, Deletions, Principal


class EvidenceSource(Protocol):
    def evidence(self, d: Deletion) -> dict[str, Any]:
        """The report's content (JSON values): hashes, counts, times and figures, never an
        identity, a record's text or id, or a fact about the subject."""
        ...


class Reports:
    def __init__(self, deletions: Deletions, source: EvidenceSource) -> None:
        self.deletions, self.source = deletions, source

    def get(self, deletion_id: uuid.UUID, principal: Principal) -> dict[str, Any]:
        return self.source.evidence(self.deletions.get(deletion_id, principal))
