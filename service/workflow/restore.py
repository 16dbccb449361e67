"""Serving the depth a background retrain restored (job ``restore_depth``, deletion lane).

A retrained unit is published by its training worker; nothing served changes until it is rolled
out. The unit's job queues this rollout (one for every unit that finishes while it is queued);
it runs under the apply lock, like a deletion batch, so its plan already holds every cut made so
far and no batch's plan goes stale under it. The plan serves only blocks whose lineage excludes
every deleted record, so a deletion verified meanwhile stays clean on what this publishes."""

from __future__ import annotations

import logging
from typing import cast

import procrastinate

from service.serving import rollout
from service.store import s3t, serving
from service.tracing import tracer
from service.workflow.deps import DEPS, DeletionDeps
from service.workflow.queue import QUEUE, REGISTRY

log = logging.getLogger(__name__)


@REGISTRY.task(name="restore_depth", queue=QUEUE, retry=5, pass_context=True)
def restore_depth(context: procrastinate.JobContext) -> None:
    restore(cast(DeletionDeps, context.additional_context[DEPS]))


def restore(deps: DeletionDeps) -> rollout.Rollout:
    """Roll out what the plan allows now; a plan that serves what is served already publishes
    nothing new (the generation stays)."""
    with tracer.start_as_current_span("workflow.restore_depth"), serving.apply_lock(deps.db.url):
        plan = deps.planner.plan([])
        out = deps.engine.roll_out(plan, None, _on_wait)
        with deps.db.connect() as conn, conn.transaction():
            desired = s3t.desired(conn)
            for shard, m in out.shards.items():  # what each shard serves now, set by no request
                name, path, sha = (m.path.name, str(m.path), m.sha256) if m else (None, None, None)
                if desired.get(shard, (None, None))[1] != sha:
                    s3t.set_desired(conn, shard, name, path, sha, None)
    depth = {k: p.prefix for k, p in sorted(plan.shards.items())}
    log.warning("restored depth served: generation %d, prefix by shard %s", out.served.generation, depth)
    return out


def _on_wait(generation: int, behind: list[str], waited: float) -> None:
    log.warning("restore: generation %d not acknowledged by %s after %.0f s", generation, behind, waited)
