"""S3T orchestration over the database: train every unit, plan and apply cuts, retrain, materialise.

Each (shard, sequence) is an independent unit of work (its own process here; its own job on a
cluster later). Artifacts are registered in PostgreSQL with their lineage once a unit finishes;
a cut marks the tainted stages destroyed and deletes their files in *every* version of every
sequence of the shard, so no longer-prefix adapter stays on disk or loadable.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.store import s3t as store
from service.store.database import DatabaseInfo
from service.store.keystore import DataKeys
from shards import sequences
from shards.planner import Plan, Unit, plan
from shards.specs import S3TSpec, TrainConfig

if TYPE_CHECKING:
    from shards.materialise import Materialised
    from shards.train import UnitSpec


@dataclass(frozen=True)
class TrainingJob:
    base_model: Path
    artifacts: Path
    spec: S3TSpec
    config: TrainConfig
    data_keys: Path  # the key store's directory: the records' text opens with it


def orders_for(spec: S3TSpec) -> list[tuple[int, ...]]:
    if spec.prior is not None:
        return sequences.bms(spec.prior, spec.budget)
    return sequences.cyclic(spec.slices, spec.budget)


def pending_units(db: DatabaseInfo, job: TrainingJob, *, retrain: bool = True) -> list[UnitSpec]:
    """The units to train: those without a complete live version and, with ``retrain``, cut ones
    (brought back to full depth from their clean prefix, deleted records excluded)."""
    from shards.train import UnitSpec

    with db.connect() as conn:
        layout = store.layout(conn)
        if layout is None:
            raise ValueError("nothing ingested yet: the S3T layout is fixed by the first ingest")
        if layout != (job.spec.shards, job.spec.slices):
            raise ValueError(f"database layout {layout} differs from settings ({job.spec.shards}, {job.spec.slices})")
        store.ensure_units(conn, {k: orders_for(job.spec) for k in range(job.spec.shards)})
        deleted = store.deleted_records(conn)
        placement = store.placement(conn)
        units = store.live_units(conn)
    _check_base_model(units, job.base_model)

    todo: list[UnitSpec] = []
    for u in units:
        if u.version is not None and (u.depth == job.spec.slices or not retrain):
            continue
        excluded = frozenset(r for r in deleted if placement.get(r, (-1,))[0] == u.shard)
        if u.version is None:  # never trained, or every stage destroyed: from scratch
            todo.append(UnitSpec(u.shard, u.sequence, u.order, u.next_version, excluded))
        else:
            old_dir = job.artifacts / UnitSpec(u.shard, u.sequence, u.order, u.version).dir_name()
            todo.append(UnitSpec(u.shard, u.sequence, u.order, u.next_version, excluded, old_dir, u.depth))
    return todo


def run_unit(
    db: DatabaseInfo, job: TrainingJob, shard: int, sequence: int, *, progress: bool = True, position: int = 0
) -> tuple[int, int, int] | None:
    """Train one unit (resuming from its last completed stage on disk) and publish it; None if it
    needs no training any more (another run finished it). The training queue's job body."""
    from shards import train
    from shards.train import TrainRecord

    spec = next((u for u in pending_units(db, job) if (u.shard, u.sequence) == (shard, sequence)), None)
    if spec is None:
        return None
    with db.connect() as conn:
        cells = store.records_by_cell(conn, DataKeys(job.data_keys), shard)
    slices = {s: [TrainRecord(*rec) for rec in cells.get((shard, s), [])] for s in range(job.spec.slices)}
    train.train_unit(job.base_model, spec, slices, job.config, job.artifacts, progress=progress, position=position)
    _publish(db, job.artifacts / spec.dir_name(), spec.shard, spec.sequence, spec.version)
    return spec.shard, spec.sequence, spec.version


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
    # A deletion that landed while this unit trained cut only what was registered then: cut the
    # new stages too (the planner cuts every stage that saw a deleted record; no new ids here).
    forget(db, [])


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


def placement(db: DatabaseInfo) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Every record's (shard, slice), and the records deleted so far."""
    with db.connect() as conn:
        return store.placement(conn), store.deleted_records(conn)


def plan_for(db: DatabaseInfo, record_ids: Iterable[str]) -> Plan:
    """What-if: the plan for the records already deleted plus ``record_ids``."""
    with db.connect() as conn:
        deleted = store.deleted_records(conn) | set(record_ids)
        placement = store.placement(conn)
    return plan(planner_units(db), placement, deleted)


def forget(db: DatabaseInfo, record_ids: Iterable[str], *, purge: DataKeys | None = None) -> Plan:
    """Plan, destroy every tainted stage in every sequence (rows, then files), and with ``purge``
    (the key store) shred the text (the workflow purges later, after its probes read the text).

    Idempotent: run again after a crash, it finds the same cuts already applied and finishes.
    """
    ids = sorted(set(record_ids))
    p = plan_for(db, ids)
    paths: list[str] = []
    with db.connect() as conn, conn.transaction():
        store.mark_cut(conn, ids)  # from here every plan counts them deleted and no training reads them
        for shard in p.affected:
            for seq, cut in p.shards[shard].tainted.items():
                paths += store.destroy(conn, shard, seq, cut)
        if purge is not None:
            store.purge_records(conn, purge, ids)
    _delete_dirs(paths)
    # Files of stages destroyed by an earlier, interrupted run.
    with db.connect() as conn:
        leftover = store.destroyed_paths(conn)
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
        out[shard] = materialise.truncate(
            Path(u.path),
            sp.prefix,
            _num_layers(Path(u.path)),
            len(u.order),
            out_root,
            f"s{shard:02d}-q{sp.sequence}-p{sp.prefix}-v{sp.version}",
        )
    return out


def served_units(db: DatabaseInfo, p: Plan) -> list[Path]:
    """The adapter directories of the units the plan serves (one per live shard)."""
    units = {(u.shard, u.sequence): u for u in _live(db)}
    out = []
    for shard, sp in sorted(p.shards.items()):
        u = units.get((shard, sp.sequence))
        if not sp.dead and u is not None and u.path is not None:
            out.append(Path(u.path))
    return out


def _check_base_model(units: list[store.LiveUnit], base_model: Path) -> None:
    """Adapters only mean something on the base model they were trained on (PEFT records its path;
    a rebuilt local model gets a new directory): refuse to mix them."""
    for u in units:
        if u.path is None or not (Path(u.path) / "adapter_config.json").exists():
            continue
        trained_on = json.loads((Path(u.path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        if Path(trained_on).resolve() != Path(base_model).resolve():
            raise ValueError(
                f"the S3T units in this database were trained on {trained_on}, not on {base_model}: "
                "use a fresh database (and var dir) for another base model"
            )


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
                str(k): {
                    "sequence": sp.sequence,
                    "version": sp.version,
                    "prefix": sp.prefix,
                    "deactivated": list(sp.deactivated),
                    "cut": {str(s): c for s, c in sp.tainted.items()},
                }
                for k, sp in sorted(p.shards.items())
            },
        },
        indent=1,
    )
