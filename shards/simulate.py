"""Deletion capacity: how many requests until every shard is dead, driving the real planner.

Each trial places a fresh record for every request in a uniformly random (shard, slice),
plans it, and applies the plan the way the service does: every unit cut by the plan loses
its blocks from the cut on (depth := clean prefix). Closed form for comparison (design.md
§2): m·L·H_{m·min(B,L)}.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shards.planner import Unit, plan
from shards.sequences import cyclic


@dataclass(frozen=True)
class CapacityResult:
    shards: int
    slices: int
    budget: int
    trials: int
    mean: float
    stdev: float
    closed_form: float

    @property
    def relative_error(self) -> float:
        return abs(self.mean - self.closed_form) / self.closed_form


def closed_form(shards: int, slices: int, budget: int) -> float:
    n = shards * min(budget, slices)
    return shards * slices * sum(1 / k for k in range(1, n + 1))


def requests_until_dead(shards: int, slices: int, budget: int, rng: random.Random) -> int:
    orders = cyclic(slices, budget)
    units = {(k, j): Unit(k, j, o) for k in range(shards) for j, o in enumerate(orders)}
    alive = set(range(shards))
    requests = 0
    while alive:
        requests += 1
        rid = f"r{requests}"
        cell = (rng.randrange(shards), rng.randrange(slices))
        p = plan(units.values(), {rid: cell}, [rid])
        for k in p.affected:
            for seq, cut in p.shards[k].tainted.items():
                units[(k, seq)] = dataclasses.replace(units[(k, seq)], depth=cut)
        alive -= p.dead
    return requests


def capacity(shards: int, slices: int, budget: int, trials: int = 2000, seed: int = 0) -> CapacityResult:
    rng = random.Random(seed)
    runs = [requests_until_dead(shards, slices, budget, rng) for _ in range(trials)]
    return CapacityResult(
        shards,
        slices,
        budget,
        trials,
        statistics.fmean(runs),
        statistics.stdev(runs) if trials > 1 else 0.0,
        closed_form(shards, slices, budget),
    )


def served_after(
    orders: Mapping[int, Sequence[Sequence[int]]], cells: Iterable[tuple[int, int]]
) -> tuple[dict[int, int], set[tuple[int, int]]]:
    """The planner's prediction for deleting one record in each (shard, slice) of ``cells`` from
    units at full depth: the depth served per shard (its best clean prefix) and the (shard,
    sequence) units cut, which the background retrain trains again (each to full depth)."""
    units = [Unit(k, j, tuple(o)) for k, seqs in orders.items() for j, o in enumerate(seqs)]
    placement = {f"r{i}": cell for i, cell in enumerate(cells)}
    p = plan(units, placement, placement)
    return {k: sp.prefix for k, sp in sorted(p.shards.items())}, {
        (k, seq) for k, sp in p.shards.items() for seq in sp.tainted
    }
