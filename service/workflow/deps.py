"""What the workflow's jobs act on, built once by the composition root (service.app) and handed to
each job through procrastinate's job context: no module-level state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.store.database import DatabaseInfo
from service.store.keystore import DataKeys
from service.workflow.ports import Engine, Planner, ReplicaRollout, S3TPlanner

if TYPE_CHECKING:
    from service.ledger.log import Ledger
    from service.rag.proxy import RagProxy
    from service.training import TrainingJob
    from service.verify.probes import ProbeConfig

DEPS = "lethe"  # the key of the dependencies in a job context's additional_context


@dataclass(frozen=True)
class DeletionDeps:
    """The deletion saga's dependencies."""

    db: DatabaseInfo
    keys: DataKeys  # opens the records' and documents' text (the probes read it before the purge)
    planner: Planner
    engine: Engine
    ledger: Ledger | None = None  # signs status callbacks and checkpoints after each job
    hmac_key: bytes = b""  # keys the forget entries' n-gram hashes
    probes: ProbeConfig | None = None  # the verify step's membership and VerbMem probes; None: not run
    rag: RagProxy | None = None  # the closed-model path's probes go through it; None: not run
    batch_window: float = 0.0  # seconds a claimed request waits for others to join its batch
    batch_max: int = 256  # requests a batch holds at most
    retrain_delay: float = 0.0  # seconds after the last cut before the cut units retrain (debounce)


def deletion_deps(
    db: DatabaseInfo,
    keys: DataKeys,
    artifacts: Path,
    *,
    ack_timeout: float = 60.0,
    aggregation: str = "merged",
    fail_closed: bool = False,
    ledger: Ledger | None = None,
    hmac_key: bytes = b"",
    probes: ProbeConfig | None = None,
    rag: RagProxy | None = None,
    batch_window: float = 0.0,
    batch_max: int = 256,
    retrain_delay: float = 0.0,
) -> DeletionDeps:
    """The saga over S3T units and replica rollouts (the default adapters of its ports)."""
    engine = ReplicaRollout(db, artifacts / "served", ack_timeout, aggregation, fail_closed)
    return DeletionDeps(
        db, keys, S3TPlanner(db), engine, ledger, hmac_key, probes, rag, batch_window, batch_max, retrain_delay
    )


@dataclass(frozen=True)
class TrainingDeps:
    """A training worker's dependencies."""

    db: DatabaseInfo
    job: TrainingJob
    position: int = 0  # the progress bar's line
    progress: bool = True
    restore: bool = True  # a retrained unit queues the rollout that serves its depth
