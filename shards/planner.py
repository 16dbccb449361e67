"""Deletion planning: a pure function from deleted records to what each shard serves (design.md §2).

For every (shard, sequence) unit, the clean prefix is the number of leading blocks whose
training data holds no deleted record: block i of a unit saw the cumulative slices
σ₀..σᵢ, minus the records that were already excluded when that version was trained (a
background retrain leaves deleted records out). A shard serves its unit with the longest
clean prefix, blocks from the prefix on deactivated; a shard whose best prefix is 0 is dead
until retrained. Every unit is tainted from its own first dirty position on, so those blocks
must be destroyed in all of them, not only in the served one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Unit:
    """One trained (shard, sequence) artifact version."""

    shard: int
    sequence: int
    order: tuple[int, ...]  # slice ids, σ₀ first
    version: int = 0
    depth: int | None = None  # blocks still available (None: all L); earlier destruction lowers it
    excluded: frozenset[str] = field(default_factory=frozenset)  # records left out of this version

    @property
    def available(self) -> int:
        return len(self.order) if self.depth is None else self.depth

    def clean_prefix(self, dirty_slices: set[int]) -> int:
        for i, s in enumerate(self.order[: self.available]):
            if s in dirty_slices:
                return i
        return self.available


@dataclass(frozen=True)
class ShardPlan:
    shard: int
    sequence: int  # the unit to serve
    version: int
    prefix: int  # blocks 0..prefix−1 stay active
    num_blocks: int
    tainted: Mapping[int, int]  # sequence → first block to destroy, for every unit cut by this plan

    @property
    def dead(self) -> bool:
        return self.prefix == 0

    @property
    def deactivated(self) -> range:
        return range(self.prefix, self.num_blocks)


@dataclass(frozen=True)
class Plan:
    shards: Mapping[int, ShardPlan]
    affected: frozenset[int]  # shards holding at least one deleted record not yet excluded

    @property
    def dead(self) -> frozenset[int]:
        return frozenset(k for k, p in self.shards.items() if p.dead)


def plan(units: Iterable[Unit], placement: Mapping[str, tuple[int, int]], deleted: Iterable[str]) -> Plan:
    """Plan every shard for the cumulative set of ``deleted`` record ids.

    ``placement`` maps record id → (shard, slice); ids it does not know are ignored (records
    that never reached training). Ties between units go to the newest version, then the
    lowest sequence index, so the result is deterministic.
    """
    by_shard: dict[int, list[Unit]] = {}
    for u in units:
        by_shard.setdefault(u.shard, []).append(u)
    deleted_in: dict[int, list[tuple[str, int]]] = {}
    for rid in set(deleted):
        if rid in placement:
            shard, sl = placement[rid]
            deleted_in.setdefault(shard, []).append((rid, sl))

    plans: dict[int, ShardPlan] = {}
    affected: set[int] = set()
    for shard, shard_units in sorted(by_shard.items()):
        prefixes: dict[int, int] = {}
        tainted: dict[int, int] = {}
        for u in shard_units:
            dirty = {sl for rid, sl in deleted_in.get(shard, ()) if rid not in u.excluded}
            prefixes[u.sequence] = p = u.clean_prefix(dirty)
            if p < u.available:
                tainted[u.sequence] = p
        if tainted:
            affected.add(shard)
        best = max(shard_units, key=lambda u: (prefixes[u.sequence], u.version, -u.sequence))
        plans[shard] = ShardPlan(shard, best.sequence, best.version, prefixes[best.sequence], len(best.order), tainted)
    return Plan(plans, frozenset(affected))
