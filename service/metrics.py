"""Prometheus metrics derived from PostgreSQL at scrape time.

Every API replica and worker shares one database, so reading the figures from it gives the same
answer whichever replica is scraped, survives restarts, and needs no push gateway. Labels are
statuses, step names, deadline windows, verification checks, replica ids and shard numbers only:
never a subject, identity or request id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from service.core.deletions import Status
from service.core.verdict import Checks
from service.store import s3t
from service.store.database import DatabaseInfo
from service.store.metrics import snapshot
from service.workflow.steps import STEPS

FORGET_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)
# Open requests by the time left to their deadline: (label, upper bound of the time left).
DEADLINE_WINDOWS = (
    ("overdue", timedelta(0)),
    ("lt_1d", timedelta(days=1)),
    ("lt_7d", timedelta(days=7)),
    ("ge_7d", timedelta.max),
)
# The checks of a request's verification that decide its completion (service.workflow.steps).
VERIFICATION_CHECKS = ("lineage", "equivalence", "records_purged", "kb")
OPEN = (Status.PENDING.value, Status.IN_PROGRESS.value)


def _histogram(
    name: str,
    doc: str,
    buckets: Sequence[float],
    series: dict[tuple[str, ...], list[float]],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, values in series.items():
        cumulative = [(str(b), float(sum(v <= b for v in values))) for b in buckets] + [("+Inf", float(len(values)))]
        h.add_metric(list(label_values), cumulative, sum_value=sum(values))
    return h


class LetheCollector(Collector):
    def __init__(self, db: DatabaseInfo) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        with self.db.connect() as conn:
            snap = snapshot(conn, OPEN)
        yield from self._deletions(snap.now, snap.by_status, snap.open_rows, snap.done, snap.failed)
        yield GaugeMetricFamily(
            "lethe_rollouts_waiting",
            "In-progress deletions whose rollout waits: no replica "
            "acknowledged the clean model in time and routing is never emptied.",
            value=float(snap.rollouts_waiting),
        )
        vc = CounterMetricFamily(
            "lethe_deletion_verdicts", "Completed deletions by verification verdict.", labels=["verdict"]
        )
        for verdict in ("passed", "inconclusive", "failed"):
            vc.add_metric([verdict], float(snap.verdicts.get(verdict, 0)))
        yield vc
        jobs = GaugeMetricFamily(
            "lethe_jobs_pending", "Jobs waiting in each queue (deletions, training).", labels=["queue"]
        )
        for queue in sorted({"deletions", "verifications", "training", *snap.pending_jobs}):
            jobs.add_metric([queue], float(snap.pending_jobs.get(queue, 0)))
        yield jobs
        yield _histogram(
            "lethe_time_to_forgotten_seconds",
            "From accepted request to forgotten: every routable replica serves weights without its records.",
            FORGET_BUCKETS,
            {(): [float(t) for (t,) in snap.forgotten]},
        )
        yield from self._ledger(snap.now, snap.ledger_size, snap.last_checkpoint, snap.first_unsigned)
        yield from self._serving(snap.now, snap.served_generation, snap.replicas)
        if snap.layout:
            yield from self._shards(snap.layout, snap.units)

    # -- deletion requests --------------------------------------------------------------------
    def _deletions(
        self, now: datetime, by_status: dict[str, int], open_rows: list[Any], done: list[Any], failed: list[Any]
    ) -> Iterator[Metric]:
        c = CounterMetricFamily("lethe_deletion_requests", "Deletion requests by current status.", labels=["status"])
        for s in Status:
            c.add_metric([s.value], float(by_status.get(s.value, 0)))
        yield c
        yield from self._deadlines(now, open_rows)
        yield from self._outcomes(done, failed)

    def _deadlines(self, now: datetime, open_rows: list[Any]) -> Iterator[Metric]:
        windows = dict.fromkeys((w for w, _ in DEADLINE_WINDOWS), 0)
        for _, deadline in open_rows:
            left = deadline - now
            windows[next(w for w, bound in DEADLINE_WINDOWS if left < bound)] += 1
        g = GaugeMetricFamily(
            "lethe_deletion_open_requests",
            "Open (pending or in-progress) deletion requests by the time left to their deadline.",
            labels=["deadline_window"],
        )
        for w, n in windows.items():
            g.add_metric([w], float(n))
        yield g
        oldest_received = min((r for r, _ in open_rows), default=None)
        yield GaugeMetricFamily(
            "lethe_deletion_oldest_pending_age_seconds",
            "Age of the oldest open (pending or in-progress) deletion request; 0 when none.",
            value=(now - oldest_received).total_seconds() if oldest_received else 0.0,
        )
        earliest = min((d for _, d in open_rows), default=None)
        if earliest is not None:
            yield GaugeMetricFamily(
                "lethe_oldest_pending_deadline_seconds",
                "Seconds until the earliest deadline of an open request (negative: overdue).",
                value=(earliest - now).total_seconds(),
            )

    def _outcomes(self, done: list[Any], failed: list[Any]) -> Iterator[Metric]:
        checks = dict.fromkeys(VERIFICATION_CHECKS, 0)
        for (verification,) in failed:
            for check in Checks.of(verification or {}).failed:
                checks[check] += 1
        v = CounterMetricFamily(
            "lethe_deletion_verification_failures",
            "Failed deletion requests by the verification check they did not pass"
            " (a request failing two checks counts in both).",
            labels=["check"],
        )
        for check, n in checks.items():
            v.add_metric([check], float(n))
        yield v
        yield _histogram(
            "lethe_time_to_forget_seconds",
            "From accepted request to completion.",
            FORGET_BUCKETS,
            {(): [float(t) for t, _ in done]},
        )
        stages: dict[tuple[str, ...], list[float]] = {(s,): [] for s in STEPS if s != "complete"}
        for _, timings in done:
            for step, secs in (timings or {}).items():
                stages.setdefault((step,), []).append(float(secs))
        yield _histogram(
            "lethe_deletion_stage_seconds", "Duration of each workflow step.", STAGE_BUCKETS, stages, labels=["stage"]
        )

    # -- ledger -------------------------------------------------------------------------------
    def _ledger(self, now: datetime, size: int, last_cp: Any, first_unsigned: Any) -> Iterator[Metric]:
        yield CounterMetricFamily("lethe_ledger_entries", "Entries appended to the ledger.", value=float(size))
        signed = int(last_cp[0]) if last_cp else 0
        yield GaugeMetricFamily(
            "lethe_ledger_unsigned_entries",
            "Ledger entries no signed checkpoint covers yet.",
            value=float(size - signed),
        )
        if last_cp:
            yield GaugeMetricFamily(
                "lethe_ledger_checkpoint_age_seconds",
                "Age of the newest signed checkpoint.",
                value=(now - last_cp[1]).total_seconds(),
            )
        age = 0.0
        if first_unsigned:
            age = max(0.0, (now - datetime.fromisoformat(first_unsigned[0]).astimezone(UTC)).total_seconds())
        yield GaugeMetricFamily(
            "lethe_ledger_oldest_unsigned_entry_age_seconds",
            "Age of the oldest ledger entry no signed checkpoint covers yet; 0 when none.",
            value=age,
        )

    # -- serving ------------------------------------------------------------------------------
    def _serving(self, now: datetime, served: Any, replicas: list[Any]) -> Iterator[Metric]:
        if served is not None:
            yield GaugeMetricFamily(
                "lethe_served_generation", "Generation of the served model (one per change).", value=float(served)
            )
        acked = GaugeMetricFamily(
            "lethe_replica_acknowledged_generation",
            "Generation each replica has acknowledged serving (0: none yet).",
            labels=["replica"],
        )
        routable = GaugeMetricFamily(
            "lethe_replica_routable", "1 if the gateway routes requests to the replica.", labels=["replica"]
        )
        heartbeat = GaugeMetricFamily(
            "lethe_replica_heartbeat_age_seconds",
            "Seconds since the replica's reconciler last reported it in sync.",
            labels=["replica"],
        )
        for rid, is_routable, gen, beat in replicas:
            acked.add_metric([rid], float(gen))
            routable.add_metric([rid], 1.0 if is_routable else 0.0)
            heartbeat.add_metric([rid], max(0.0, (now - beat).total_seconds()))
        yield acked
        yield routable
        yield heartbeat

    # -- S3T capacity -------------------------------------------------------------------------
    def _shards(self, layout: tuple[int, int], units: list[s3t.LiveUnit]) -> Iterator[Metric]:
        """Depth of a shard: the longest clean prefix (live stages) of any of its sequences, i.e.
        the slices the served shard model still holds. Shards never trained are left out."""
        shards, slices = layout
        depth: dict[int, int] = {}
        for u in units:
            if u.next_version > 0:
                depth[u.shard] = max(depth.get(u.shard, 0), u.depth)
        yield GaugeMetricFamily(
            "lethe_shard_slices", "Slices per shard (the full depth of a shard model).", value=float(slices)
        )
        d = GaugeMetricFamily(
            "lethe_shard_depth", "Slices the best surviving clean prefix of each shard holds.", labels=["shard"]
        )
        for k in sorted(depth):
            d.add_metric([str(k)], float(depth[k]))
        yield d
        yield GaugeMetricFamily(
            "lethe_shards_dead",
            "Trained shards with no clean prefix left (out of the ensemble).",
            value=float(sum(v == 0 for v in depth.values())),
        )
        yield GaugeMetricFamily("lethe_shards", "Shards in the S3T layout.", value=float(shards))
