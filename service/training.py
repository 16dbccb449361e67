"""S3T orchestration over the database: train every unit, plan and apply cuts, retrain, materialise.

Each (shard, sequence) is an independent unit of work (its own process here; its own job on a
cluster later). Artifacts are registered in PostgreSQL with their lineage once a unit finishes;
a cut marks the tainted stages destroyed and deletes their files in *every* version of every
sequence of the shard, so no longer-prefix adapter stays on disk or loadable.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.store import s3t as store
from service.store.database import DatabaseInfo
from shards import sequences
from shards.planner import Plan, Unit, plan
from shards.specs import S3TSpec, TrainConfig

if TYPE_CHECKING:
    from shards.materialise import Materialised
    from shards.train import TrainRecord, UnitSpec


@dataclass(frozen=True)
class TrainingJob:
    base_model: Path
    artifacts: Path
    spec: S3TSpec
    config: TrainConfig


def orders_for(spec: S3TSpec) -> list[tuple[int, ...]]:
    if spec.prior is not None:
        return sequences.bms(spec.prior, spec.budget)
    return sequences.cyclic(spec.slices, spec.budget)


def _workers(spec: S3TSpec, units: int) -> int:
    return max(1, min(units, spec.workers or (os.cpu_count() or 1)))


def _run_unit(
    job: TrainingJob, unit: UnitSpec, slices: dict[int, list[TrainRecord]], threads: int, position: int
) -> str:
    """Process entry point: train one unit with ``threads`` torch threads; return its directory."""
    import torch

    from shards import train

    torch.set_num_threads(threads)
    train.train_unit(job.base_model, unit, slices, job.config, job.artifacts, position=position)
    return str(job.artifacts / unit.dir_name())


def train_all(db: DatabaseInfo, job: TrainingJob, *, retrain: bool = True) -> list[tuple[int, int, int]]:
    """Train every unit that has no complete live version; with ``retrain``, also bring cut units
    back to full depth on the remaining data (deleted records excluded). Returns (shard, seq, version)."""
    from shards.train import TrainRecord, UnitSpec

    with db.connect() as conn:
        layout = store.layout(conn)
        if layout is None:
            raise ValueError("nothing ingested yet: the S3T layout is fixed by the first ingest")
        if layout != (job.spec.shards, job.spec.slices):
            raise ValueError(f"database layout {layout} differs from settings ({job.spec.shards}, {job.spec.slices})")
        orders = orders_for(job.spec)
        store.ensure_units(conn, {k: orders for k in range(job.spec.shards)})
        cells = store.records_by_cell(conn)
        deleted = store.deleted_records(conn)
        placement = store.placement(conn)
        units = store.live_units(conn)
    _check_base_model(units, job.base_model)

    todo: list[UnitSpec] = []
    for u in units:
        if u.version is not None and u.depth == job.spec.slices:
            continue
        if u.version is not None and not retrain:
            continue
        excluded = frozenset(r for r in deleted if placement.get(r, (-1,))[0] == u.shard)
        if u.version is None:  # never trained, or every stage destroyed: from scratch
            todo.append(UnitSpec(u.shard, u.sequence, u.order, u.next_version, excluded))
        else:
            old_dir = job.artifacts / UnitSpec(u.shard, u.sequence, u.order, u.version).dir_name()
            todo.append(UnitSpec(u.shard, u.sequence, u.order, u.next_version, excluded, old_dir, u.depth))
    if not todo:
        return []

    slices_of = {
        k: {s: [TrainRecord(*rec) for rec in cells.get((k, s), [])] for s in range(job.spec.slices)}
        for k in {u.shard for u in todo}
    }
    workers = _workers(job.spec, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    done: list[tuple[int, int, int]] = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {
            pool.submit(_run_unit, job, spec, slices_of[spec.shard], threads, i % workers): spec
            for i, spec in enumerate(todo)
        }
        for fut in cf.as_completed(futures):
            spec = futures[fut]
            _publish(db, Path(fut.result()), spec.shard, spec.sequence, spec.version)
            done.append((spec.shard, spec.sequence, spec.version))
    return sorted(done)


def _publish(db: DatabaseInfo, unit_dir: Path, shard: int, sequence: int, version: int) -> None:
    """Register a finished unit's stages, then retire older versions (their clean stages were carried)."""
    from shards.lineage import UnitLineage
    from shards.train import LINEAGE_FILE, completed_stages, stage_dir

    with db.connect() as conn, conn.transaction():
        for stage in completed_stages(unit_dir):
            d = stage_dir(unit_dir, stage)
            store.register(conn, UnitLineage.read(d / LINEAGE_FILE), str(d))
        old = store.destroy_versions_before(conn, shard, sequence, version)
    _delete_dirs(old)


def _delete_dirs(paths: Iterable[str]) -> None:
    """Delete stage directories, and their version directory once it is empty."""
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
        parent = Path(p).parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()


def planner_units(db: DatabaseInfo) -> list[Unit]:
    with db.connect() as conn:
        return [
            Unit(u.shard, u.sequence, u.order, u.version, u.depth, u.excluded)
            for u in store.live_units(conn)
            if u.version is not None
        ]


def plan_for(db: DatabaseInfo, record_ids: Iterable[str]) -> Plan:
    """What-if: the plan for the records already deleted plus ``record_ids``."""
    with db.connect() as conn:
        deleted = store.deleted_records(conn) | set(record_ids)
        placement = store.placement(conn)
    return plan(planner_units(db), placement, deleted)


def forget(db: DatabaseInfo, record_ids: Iterable[str], *, purge: bool = True) -> Plan:
    """Plan, destroy every tainted stage in every sequence (rows, then files), purge the text
    (unless ``purge`` is False: the workflow purges after its probes read the text).

    Idempotent: run again after a crash, it finds the same cuts already applied and finishes.
    """
    ids = sorted(set(record_ids))
    p = plan_for(db, ids)
    paths: list[str] = []
    with db.connect() as conn, conn.transaction():
        for shard in p.affected:
            for seq, cut in p.shards[shard].tainted.items():
                paths += store.destroy(conn, shard, seq, cut)
        if purge:
            store.purge_records(conn, ids)
    _delete_dirs(paths)
    # Files of stages destroyed by an earlier, interrupted run.
    with db.connect() as conn:
        leftover = [r[0] for r in conn.execute("SELECT path FROM s3t_artifacts WHERE destroyed_at IS NOT NULL")]
    _delete_dirs(p for p in leftover if Path(p).exists())
    return p


def served_adapters(db: DatabaseInfo, p: Plan, out_root: Path) -> dict[int, Materialised | None]:
    """Materialise each live shard's clean adapter (blocks before its prefix); None for dead shards.

    Idempotent: an adapter directory is named by its content hash and never rewritten."""
    from shards import materialise

    units = {(u.shard, u.sequence): u for u in _live(db)}
    out: dict[int, Materialised | None] = {}
    for shard, sp in sorted(p.shards.items()):
        if sp.dead:
            out[shard] = None
            continue
        u = units[(shard, sp.sequence)]
        assert u.path is not None
        out[shard] = materialise.truncate(Path(u.path), sp.prefix, _num_layers(Path(u.path)), len(u.order), out_root,
                                          f"s{shard:02d}-q{sp.sequence}-p{sp.prefix}-v{sp.version}")  # fmt: skip
    return out


def _check_base_model(units: list[store.LiveUnit], base_model: Path) -> None:
    """Adapters only mean something on the base model they were trained on (PEFT records its path;
    a rebuilt local model gets a new directory): refuse to mix them."""
    for u in units:
        if u.path is None or not (Path(u.path) / "adapter_config.json").exists():
            continue
        trained_on = json.loads((Path(u.path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        if Path(trained_on).resolve() != Path(base_model).resolve():
            raise ValueError(f"the S3T units in this database were trained on {trained_on}, not on {base_model}: "
                             "use a fresh database (and var dir) for another base model")  # fmt: skip


def _num_layers(adapter_dir: Path) -> int:
    """Layers of the base model an adapter was trained on (PEFT records the base model's path)."""
    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    return int(json.loads((Path(base) / "config.json").read_text())["num_hidden_layers"])


def _live(db: DatabaseInfo) -> list[store.LiveUnit]:
    with db.connect() as conn:
        return store.live_units(conn)


def describe(p: Plan) -> str:
    return json.dumps(
        {
            "affected": sorted(p.affected),
            "dead": sorted(p.dead),
            "shards": {
                str(k): {"sequence": sp.sequence, "version": sp.version, "prefix": sp.prefix,
                         "deactivated": list(sp.deactivated), "cut": {str(s): c for s, c in sp.tainted.items()}}
                for k, sp in sorted(p.shards.items())
            },
        },
        indent=1,
    )  # fmt: skip
