"""Prometheus metrics derived from PostgreSQL at scrape time.

Every API replica and worker shares one database, so reading the figures from it gives the same
answer whichever replica is scraped, survives restarts, and needs no push gateway. Labels are
statuses and step names only: never a subject, identity or request id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from service.core.deletions import Status
from service.store.database import DatabaseInfo
from service.workflow.steps import STEPS

FORGET_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)


def _histogram(name: str, doc: str, buckets: Sequence[float], series: dict[tuple[str, ...], list[float]],
               labels: Sequence[str] = ()) -> HistogramMetricFamily:  # fmt: skip
    h = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, values in series.items():
        cumulative = [(str(b), float(sum(v <= b for v in values))) for b in buckets] + [("+Inf", float(len(values)))]
        h.add_metric(list(label_values), cumulative, sum_value=sum(values))
    return h


class LetheCollector(Collector):
    def __init__(self, db: DatabaseInfo) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        with self.db.connect() as conn:
            by_status: dict[str, int] = dict(
                conn.execute("SELECT status, count(*) FROM deletion_requests GROUP BY status").fetchall()
            )
            pending_jobs = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'").fetchone()
            entries = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()
            last_cp = conn.execute("SELECT max(created_at) FROM ledger_checkpoints").fetchone()
            oldest = conn.execute(
                "SELECT min(deadline) FROM deletion_requests WHERE status IN ('pending', 'in_progress')"
            ).fetchone()
            done = conn.execute(
                "SELECT extract(epoch FROM completed_time - received_time), result->'stage_seconds'"
                " FROM deletion_requests WHERE status = 'completed'"
            ).fetchall()

        c = CounterMetricFamily("lethe_deletion_requests", "Deletion requests by current status.", labels=["status"])
        for s in Status:
            c.add_metric([s.value], float(by_status.get(s.value, 0)))
        yield c
        yield GaugeMetricFamily("lethe_jobs_pending", "Workflow jobs waiting in the queue.",
                                value=float(pending_jobs[0] if pending_jobs else 0))  # fmt: skip
        yield CounterMetricFamily("lethe_ledger_entries", "Entries appended to the ledger.",
                                  value=float(entries[0] if entries else 0))  # fmt: skip
        if last_cp and last_cp[0] is not None:
            yield GaugeMetricFamily("lethe_ledger_checkpoint_age_seconds", "Age of the newest signed checkpoint.",
                                    value=(now - last_cp[0]).total_seconds())  # fmt: skip
        if oldest and oldest[0] is not None:
            yield GaugeMetricFamily(
                "lethe_oldest_pending_deadline_seconds",
                "Seconds until the deadline of the oldest open request (negative: overdue).",
                value=(oldest[0] - now).total_seconds(),
            )
        yield _histogram("lethe_time_to_forget_seconds", "From accepted request to completion.", FORGET_BUCKETS,
                         {(): [float(t) for t, _ in done]})  # fmt: skip
        stages: dict[tuple[str, ...], list[float]] = {(s,): [] for s in STEPS if s != "complete"}
        for _, timings in done:
            for step, secs in (timings or {}).items():
                stages.setdefault((step,), []).append(float(secs))
        yield _histogram("lethe_deletion_stage_seconds", "Duration of each workflow step.", STAGE_BUCKETS, stages,
                         labels=["stage"])  # fmt: skip
