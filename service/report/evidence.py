"""A deletion's report as JSON: what the request's result recorded, rechecked against the state
now (the blocks served and their lineage, what each replica serves, the ledger's proofs).

Only hashes, counts, times and figures: the records' ids stay out as well as their text (an id a
controller chose may name the person), and so do the subject's documents."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, cast

from service import training
from service.core.deletions import Deletion
from service.ledger.log import Ledger
from service.store import s3t, serving
from service.store.database import DatabaseInfo
from service.workflow.steps import WATERFALL

MILESTONES = ("received", "forgotten", "completed")


class Evidence:
    """The report's evidence source (service.core.reports.EvidenceSource) over the database."""

    def __init__(self, db: DatabaseInfo, ledger: Ledger) -> None:
        self.db, self.ledger = db, ledger

    def evidence(self, d: Deletion) -> dict[str, Any]:
        r = d.result
        v = cast(dict[str, Any], r.get("verification") or {})
        return {
            "request": _request(d),
            "timeline": _timeline(d),
            "plan": self._plan(r),
            "proof": {"at_completion": v.get("lineage_excludes_deleted"), "now": self._proof_now(d)},
            "equivalence": {"at_completion": v.get("equivalence"), "now": self._replicas_now()},
            "probes": _probes(r, v),
            "kb": _kb(v.get("kb")),
            "ledger": self.ledger.proofs_about(str(d.id)),
        }

    def _plan(self, r: dict[str, Any]) -> dict[str, Any] | None:
        plan = r.get("plan")
        if not isinstance(plan, dict):
            return None
        with self.db.connect() as conn:
            layout = s3t.layout(conn)
        return {
            "records": plan.get("records", 0),
            "affected_shards": plan.get("affected_shards", []),
            "dead_shards": plan.get("dead_shards", []),
            "full_depth": layout[1] if layout else None,
            "served": plan.get("served", {}),
            "depth_before": depth_before(cast(dict[str, Any], r.get("apply") or {}), plan.get("served", {})),
            "retrain_queued": plan.get("retrain_queued", []),
            "documents": len(plan.get("documents") or []),
        }

    def _proof_now(self, d: Deletion) -> dict[str, Any]:
        """Every block served now with its lineage (hash and counts) and how many of the request's
        records it holds: each must hold none."""
        same = cast(list[str], d.result.get("same_text_records") or [])
        with self.db.connect() as conn:
            ids = set(s3t.record_ids_of_subjects(conn, d.subject_hashes))
            ids |= set(s3t.known_record_ids(conn, [*d.record_ids, *same]))
            placement = s3t.placement(conn)
        where = {placement[i] for i in ids if i in placement}
        plan = training.plan_for(self.db, [])
        blocks: list[dict[str, Any]] = []
        with self.db.connect() as conn:
            for shard, p in sorted(plan.shards.items()):
                if p.prefix == 0:
                    continue
                lineage = s3t.live_lineage(conn, shard, p.sequence, p.version, p.prefix - 1)
                if lineage is None:
                    blocks.append({"shard": shard, "sequence": p.sequence, "missing": True})
                    continue
                excluded = set(lineage.get("excluded") or ())
                held = [i for i in ids if i not in excluded and i in placement]
                for b in lineage["blocks"][: p.prefix]:
                    slices = set(b["slices"])
                    holds = sum(placement[i][0] == shard and placement[i][1] in slices for i in held)
                    blocks.append(
                        {
                            "shard": shard,
                            "sequence": p.sequence,
                            "version": p.version,
                            "block": b["block"],
                            "slices": list(b["slices"]),
                            "records": b["records"],
                            "records_sha256": b["records_sha256"],
                            "holds_deleted": holds,
                        }
                    )
        return {
            "records": len(ids),
            "cells": len(where),
            "blocks": blocks,
            "excludes": all(b.get("holds_deleted", 1) == 0 for b in blocks),  # none served: the base model
        }

    def _replicas_now(self) -> dict[str, Any]:
        with self.db.connect() as conn:
            want = serving.served(conn)
            reps = serving.replicas(conn)
        return {
            "generation": want.generation if want else None,
            "served_sha256": want.adapter_sha256 if want else None,
            "replicas": [
                {
                    "id": x.id,
                    "routable": x.routable,
                    "serving_sha256": x.serving_sha256,
                    "acked_generation": x.acked_generation,
                    "matches": want is not None
                    and x.serving_sha256 == want.adapter_sha256
                    and x.acked_generation == want.generation,
                }
                for x in reps
            ],
        }


SHARD_ADAPTER = re.compile(r"-p(\d+)-v\d+-")  # training.served_adapters' names: s<k>-q<seq>-p<prefix>-v<version>-<hash>


def depth_before(applied: dict[str, Any], served: dict[str, Any]) -> dict[str, int | None]:
    """Each shard's served depth before the request, from its ledger-recorded adapter before (a
    shard the request did not change kept its depth; None: the model served since start-up, as
    trained)."""
    out: dict[str, int | None] = {k: v.get("prefix") for k, v in served.items()}
    for shard, change in (applied.get("adapters") or {}).items():
        before = (change.get("before") or {}).get("adapter")
        if before is None:
            out[shard] = 0  # no adapter: the shard was dead already
        elif m := SHARD_ADAPTER.search(before):
            out[shard] = int(m.group(1))
        else:
            out[shard] = None
    return out


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _request(d: Deletion) -> dict[str, Any]:
    r = d.result
    v = cast(dict[str, Any], r.get("verification") or {})
    return {
        "id": str(d.id),
        "type": d.request_type,
        "status": d.status.value,
        "outcome": r.get("outcome"),
        "methods": r.get("methods", []),
        "verdict": v.get("verdict"),
        "reason": v.get("reason"),
        "identity_types": list(d.identity_types),
        "subject_hashes": [h.hex()[:16] for h in d.subject_hashes],
        "record_ids_named": len(d.record_ids),
        "unknown_records": len(cast(list[str], r.get("unknown_record_ids") or [])),
        "same_text_records": len(cast(list[str], r.get("same_text_records") or [])),
        "batch_id": str(d.batch_id) if d.batch_id else None,
        "received": _iso(d.received_time),
        "forgotten": _iso(d.forgotten_time),
        "completed": _iso(d.completed_time),
        "deadline": _iso(d.deadline),
    }


def _timeline(d: Deletion) -> dict[str, Any]:
    waterfall = cast(dict[str, float], d.result.get("waterfall") or {})
    stages = [(k, waterfall[k]) for k in WATERFALL if k in waterfall]
    stages += sorted((k, v) for k, v in waterfall.items() if k not in WATERFALL)
    times = {"received": d.received_time, "forgotten": d.forgotten_time, "completed": d.completed_time}
    return {
        "stages": [{"stage": k, "seconds": v} for k, v in stages],
        "milestones": [
            {"milestone": k, "at": _iso(t), "seconds": round((t - d.received_time).total_seconds(), 3)}
            for k in MILESTONES
            if (t := times[k]) is not None
        ],
    }


def _probes(r: dict[str, Any], v: dict[str, Any]) -> dict[str, Any]:
    m = v.get("membership")
    return {
        "membership": m,
        "scores": r.get("probe_scores"),
        "verbmem": v.get("verbmem"),
        "verdict": v.get("verdict"),
        "reason": v.get("reason"),
        "skipped": v.get("probes"),
        "sample": v.get("probes_sample"),
        "scope": v.get("probes_scope"),
    }


def _kb(kb: Any) -> dict[str, Any] | None:
    """The knowledge-base checks as flags and counts (probe details may quote a document)."""
    if not isinstance(kb, dict):
        return None
    out: dict[str, Any] = {}
    for k, val in kb.items():
        if isinstance(val, bool | int | float):
            out[k] = val
        elif isinstance(val, dict):
            out[k] = {kk: vv for kk, vv in val.items() if isinstance(vv, bool | int | float)}
    return out
