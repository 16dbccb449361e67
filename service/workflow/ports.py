"""The deletion saga's ports: what it needs from the S3T units and from the serving replicas,
typed as protocols so a step depends on a capability, not on a module. The default adapters wrap
service.training and service.serving.rollout; tests may hand in others."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service import training
from service.serving import rollout
from service.store.database import DatabaseInfo
from shards.planner import Plan

OnWait = Callable[[int, list[str], float], None]  # (generation, replicas behind, seconds waited)


class Planner(Protocol):
    """S3T over the stored units."""

    def plan(self, record_ids: Sequence[str]) -> Plan:
        """What-if: the plan with these records deleted too (nothing changes)."""
        ...

    def cut(self, record_ids: Sequence[str]) -> Plan:
        """Destroy every stage that saw these records, in every sequence; idempotent."""
        ...


class Engine(Protocol):
    """The serving side: the clean model a plan allows, served by every routable replica."""

    def roll_out(self, plan: Plan, request_id: uuid.UUID | None, on_wait: OnWait) -> rollout.Rollout: ...

    def warm(self) -> None:
        """Load what is served now into the process, so its first rollout costs what later ones do."""
        ...


@dataclass(frozen=True)
class S3TPlanner:
    db: DatabaseInfo

    def plan(self, record_ids: Sequence[str]) -> Plan:
        return training.plan_for(self.db, record_ids)

    def cut(self, record_ids: Sequence[str]) -> Plan:
        return training.forget(self.db, record_ids)


@dataclass(frozen=True)
class ReplicaRollout:
    """Materialise, publish a generation, wait for every routable replica's acknowledgement."""

    db: DatabaseInfo
    served_root: Path  # where clean adapters are published (artifacts/served)
    ack_timeout: float = 60.0
    aggregation: str = "merged"  # several shards' adapters: merged or a routing table
    fail_closed: bool = False  # past the timeout, every lagging replica leaves routing

    def roll_out(self, plan: Plan, request_id: uuid.UUID | None, on_wait: OnWait) -> rollout.Rollout:
        return rollout.roll_out(
            self.db,
            plan,
            self.served_root,
            request_id,
            self.ack_timeout,
            self.aggregation,
            fail_closed=self.fail_closed,
            on_wait=on_wait,
        )

    def warm(self) -> None:
        rollout.warm(self.db, self.served_root, self.aggregation)
