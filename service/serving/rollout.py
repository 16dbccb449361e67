"""Rolling a new served model out: materialise it from the plan, publish it as a new generation,
wait until every routable replica has acknowledged it, and delete the superseded files.

A replica that does not acknowledge within the timeout is taken out of routing, atomically with
the check, so no completed deletion ever coexists with a routable replica on older weights. Its
reconciler brings it back (routable again) once it serves the current generation. The last
routable replicas are never all removed: when none has acknowledged, the rollout keeps waiting
(``on_wait`` reports it) unless the operator chose to fail closed (``fail_closed``: every lagging
replica leaves routing and the endpoint serves nothing until one catches up). Rollouts are
serialised by a PostgreSQL advisory lock: one served model, one rollout at a time.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import training
from service.store import serving as store
from service.store.database import DatabaseInfo
from service.tracing import tracer

if TYPE_CHECKING:
    from shards.materialise import Materialised

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Materialisation:
    """What to serve: the one shard's clean adapter, or for m > 1 the merge of the live shards'
    clean adapters (rank m·r) or a routing table over them; no path if every shard is dead (the
    base model is served)."""

    path: Path | None
    sha256: str | None
    aggregation: str  # single | merged | routing | base
    shards: dict[int, Materialised | None]  # each shard's clean adapter (None: dead)

    def files(self) -> list[Path]:
        """Every directory this serves from (kept when superseded ones are purged)."""
        return [p for p in [self.path, *(m.path for m in self.shards.values() if m)] if p is not None]


@dataclass(frozen=True)
class Acks:
    acked: list[str]  # replicas that serve the generation
    removed: list[str]  # replicas taken out of routing for not acknowledging in time
    seconds: float  # publish → every routable replica acknowledged (or removed)


@dataclass(frozen=True)
class Rollout:
    served: store.Served
    shards: dict[int, Materialised | None]
    acks: Acks
    before: store.Served | None = None  # what was served when this rollout began
    stage_seconds: dict[str, float] | None = None  # materialise, publish, acknowledge

    def to_dict(self) -> dict[str, Any]:
        b = self.before
        return {
            "before": {"generation": b.generation, "adapter": b.name, "adapter_sha256": b.adapter_sha256}
            if b
            else None,
            "generation": self.served.generation,
            "adapter_sha256": self.served.adapter_sha256,
            "aggregation": self.served.aggregation,
            "replicas_acked": self.acks.acked,
            "replicas_removed": self.acks.removed,
            "ack_seconds": round(self.acks.seconds, 4),
            "stage_seconds": {k: round(v, 4) for k, v in (self.stage_seconds or {}).items()},
        }


AGGREGATIONS = ("merged", "routing")


def materialise(db: DatabaseInfo, plan: Any, served_root: Path, aggregation: str = "merged") -> Materialisation:
    from shards import materialise as mat  # torch: loaded where adapters are merged, not on import

    per_shard = training.served_adapters(db, plan, served_root)
    live = [m for _, m in sorted(per_shard.items()) if m is not None]
    if not live:
        return Materialisation(None, None, "base", per_shard)
    if len(per_shard) == 1:
        return Materialisation(live[0].path, live[0].sha256, "single", per_shard)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
    if aggregation == "routing":
        table = mat.routing({k: m for k, m in per_shard.items() if m is not None}, served_root, "routing")
        return Materialisation(table.path, table.sha256, "routing", per_shard)
    merged = mat.merge([m.path for m in live], served_root, "merged", mat.serving_dtype(live[0].path))
    return Materialisation(merged.path, merged.sha256, "merged", per_shard)


def warm(db: DatabaseInfo, served_root: Path, aggregation: str = "merged") -> None:
    """Materialise what is served now, under the rollout lock (no purge meanwhile): a worker that
    has just started then reads and hashes only the shard its first deletion cuts, not all of them
    (materialise keeps the parts it read). Best effort: skipped while another rollout holds the
    lock (it may wait long for a replica); whatever fails here fails again, and is reported, in
    the rollout that needs it."""
    try:
        with store.rollout_lock_if_free(db.url) as free:
            if free:
                from shards import materialise as mat

                plan = training.plan_for(db, [])
                for unit in training.served_units(db, plan):
                    mat.remember(unit)
                materialise(db, plan, served_root, aggregation)
    except Exception as e:  # a warm-up never stops a worker from starting
        log.warning("materialise warm-up skipped: %s", type(e).__name__)


def roll_out(
    db: DatabaseInfo,
    plan: Any,
    served_root: Path,
    request_id: object,
    timeout: float,
    aggregation: str = "merged",
    *,
    fail_closed: bool = False,
    on_wait: Callable[[int, list[str], float], None] | None = None,
) -> Rollout:
    """Materialise (under the rollout lock, so a concurrent rollout's purge cannot take the files
    away before they are published), publish, wait, purge."""
    stages: dict[str, float] = {}
    with tracer.start_as_current_span("serving.rollout"), store.rollout_lock(db.url):
        with _stage("materialise", stages):
            m = materialise(db, plan, served_root, aggregation)
        with _stage("publish", stages), db.connect() as conn:
            before = store.served(conn)
            served = store.publish(conn, str(m.path) if m.path else None, m.sha256, m.aggregation, request_id)
        with _stage("acknowledge", stages):
            acks = wait_acknowledged(db, served, timeout, fail_closed=fail_closed, on_wait=on_wait)
        purge_superseded(served_root, keep=m.files())
        return Rollout(served, m.shards, acks, before, stages)


@contextlib.contextmanager
def _stage(name: str, stages: dict[str, float]) -> Iterator[None]:
    t = time.perf_counter()
    with tracer.start_as_current_span(f"serving.{name}"):
        yield
    stages[name] = time.perf_counter() - t


def wait_acknowledged(
    db: DatabaseInfo,
    served: store.Served,
    timeout: float,
    *,
    fail_closed: bool = False,
    on_wait: Callable[[int, list[str], float], None] | None = None,
) -> Acks:
    """Wait (woken by routing notifications) until no routable replica is behind ``served``. After
    ``timeout`` the laggards leave routing if a replica serves ``served``; if none does, keep
    waiting, calling ``on_wait(generation, laggards, seconds waited)`` once per ``timeout``
    (``fail_closed``: remove them all instead)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    removed: list[str] = []
    with store.listening(db.url, store.ROUTING_CHANNEL) as listen:
        while True:
            with db.connect() as conn:
                behind = store.lagging(conn, served.generation)
            if not behind:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                with db.connect() as conn:
                    removed = store.remove_lagging(
                        conn,
                        served.generation,
                        f"no acknowledgement of generation {served.generation}",
                        keep_one=not fail_closed,
                    )
                if removed:
                    break
                log.warning(
                    "no replica acknowledged generation %s in %.0f s; waiting (never all out of routing)",
                    served.generation,
                    time.monotonic() - t0,
                )
                if on_wait is not None:
                    on_wait(served.generation, behind, time.monotonic() - t0)
                deadline = time.monotonic() + max(timeout, 1.0)
                continue
            for _ in listen.notifies(timeout=min(left, 0.5), stop_after=1):
                pass
    with db.connect() as conn:
        acked = [r.id for r in store.replicas(conn) if (r.acked_generation or 0) >= served.generation and r.routable]
    return Acks(acked, removed, time.monotonic() - t0)


def purge_superseded(served_root: Path, keep: list[Path]) -> list[str]:
    """Delete every materialised adapter but the served one and its current shard parts: nothing
    superseded stays loadable."""
    kept = {k.resolve() for k in keep}
    gone = []
    if served_root.exists():
        for d in served_root.iterdir():
            if d.is_dir() and d.resolve() not in kept:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
    return sorted(gone)
