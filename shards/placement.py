"""Records → (shard, slice), fixed at ingest (design.md §2).

The unit of placement is a *group*: all records of one data subject (keyed by the smallest of
the record's subject hashes), so that forgetting a person touches one slice of one shard. New
groups are ordered by that keyed hash and dealt round-robin over the m·L cells after the groups
already placed, which keeps cells balanced to within one group and depends only on what was
ingested before — never on what is deleted later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    shards: int
    slices: int

    def __post_init__(self) -> None:
        if self.shards < 1 or self.slices < 1:
            raise ValueError("shards and slices must be positive")

    @property
    def cells(self) -> int:
        return self.shards * self.slices

    def cell(self, index: int) -> tuple[int, int]:
        """The (shard, slice) of the index-th placed group: shards vary fastest."""
        c = index % self.cells
        return c % self.shards, c // self.shards


def group_key(subject_hashes: Iterable[bytes]) -> bytes:
    return min(subject_hashes)


def place_groups(new_groups: Iterable[bytes], already_placed: int, layout: Layout) -> dict[bytes, tuple[int, int]]:
    """Cells for groups not placed yet, continuing the round-robin after ``already_placed`` groups."""
    return {g: layout.cell(already_placed + i) for i, g in enumerate(sorted(set(new_groups)))}
