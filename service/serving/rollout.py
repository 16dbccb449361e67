"""Rolling a new served model out: materialise it from the plan, publish it as a new generation,
wait until every routable replica has acknowledged it, and delete the superseded files.

A replica that does not acknowledge within the timeout is taken out of routing, atomically with
the check, so no completed deletion ever coexists with a routable replica on older weights. Its
reconciler brings it back (routable again) once it serves the current generation. Rollouts are
serialised by a PostgreSQL advisory lock: one served model, one rollout at a time.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from service.store import serving as store
from service.store.database import DatabaseInfo
from service.tracing import tracer

ROLLOUT_LOCK = 0x1E7E_5E27


@dataclass(frozen=True)
class Rollout:
    served: store.Served
    acked: list[str]  # replicas that serve this generation
    removed: list[str]  # replicas taken out of routing for not acknowledging in time
    seconds: float  # publish → every routable replica acknowledged (or removed)

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.served.generation, "adapter_sha256": self.served.adapter_sha256,
                "aggregation": self.served.aggregation, "replicas_acked": self.acked,
                "replicas_removed": self.removed, "ack_seconds": round(self.seconds, 4)}  # fmt: skip


def materialise(db: DatabaseInfo, plan: Any, served_root: Path) -> tuple[Path | None, str | None, str, list[Path]]:
    """(path, content hash, aggregation, shard adapters) of what to serve: the one shard's clean
    adapter, or for m > 1 the merge of the live shards' clean adapters (rank m·r); (None, None,
    "base", []) if all are dead."""
    from service import training
    from shards import materialise as mat

    per_shard = training.served_adapters(db, plan, served_root)
    live = [m for _, m in sorted(per_shard.items()) if m is not None]
    parts = [m.path for m in live]
    if not live:
        return None, None, "base", parts
    if len(per_shard) == 1:
        return live[0].path, live[0].sha256, "single", parts
    merged = mat.merge(parts, served_root, "merged")
    return merged.path, merged.sha256, "merged", parts


def roll_out(db: DatabaseInfo, plan: Any, served_root: Path, request_id: object, timeout: float) -> Rollout:
    with tracer.start_as_current_span("serving.rollout"), psycopg.connect(db.url, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(%s)", (ROLLOUT_LOCK,))
        try:
            path, sha, aggregation, parts = materialise(db, plan, served_root)
            with db.connect() as conn:
                served = store.publish(conn, str(path) if path else None, sha, aggregation, request_id)
            out = wait_acknowledged(db, served, timeout)
            purge_superseded(served_root, keep=[p for p in [path, *parts] if p is not None])
            return out
        finally:
            lock.execute("SELECT pg_advisory_unlock(%s)", (ROLLOUT_LOCK,))


def wait_acknowledged(db: DatabaseInfo, served: store.Served, timeout: float) -> Rollout:
    """Wait (woken by routing notifications) until no routable replica is behind ``served``."""
    t0 = time.monotonic()
    with psycopg.connect(db.url, autocommit=True) as listen:
        listen.execute(f"LISTEN {store.ROUTING_CHANNEL}")
        while True:
            with db.connect() as conn:
                behind = store.lagging(conn, served.generation)
            if not behind:
                removed: list[str] = []
                break
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                with db.connect() as conn:
                    removed = store.remove_lagging(conn, served.generation,
                                                   f"no acknowledgement of generation {served.generation}")  # fmt: skip
                break
            for _ in listen.notifies(timeout=min(left, 0.5), stop_after=1):
                pass
    with db.connect() as conn:
        acked = [r.id for r in store.replicas(conn) if (r.acked_generation or 0) >= served.generation and r.routable]
    return Rollout(served, acked, removed, time.monotonic() - t0)


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
