"""Slice orders (sequences) per shard under a budget B (design.md §2).

- B ≤ L: the first B cyclic rotations of 0..L−1 (rows of a Latin square), so every slice
  appears at every position at most once and a deletion in any slice leaves some sequence a
  long clean prefix.
- B > L: a permutation tree: the L rotations, then for each rotation the rotations of its
  suffix after the first element, and so on, breadth first, until B distinct orders exist.
- BMS (bipartite-matching sequence selection) for a known deletion prior p₁..p_L: grow B
  partial sequences position by position; at each position solve a max-weight assignment of
  slices to sequences (scipy's ``linear_sum_assignment``) whose weight is the gain in
  score(σ) = Σₙ n·(1 − Σ_{i≤n} p_{σᵢ})^t.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

Order = tuple[int, ...]


def cyclic(num_slices: int, budget: int) -> list[Order]:
    """B orders for a uniform deletion prior: rotations, then a permutation tree beyond L."""
    if num_slices < 1 or budget < 1:
        raise ValueError("num_slices and budget must be positive")
    base = tuple(range(num_slices))
    out: list[Order] = []
    seen: set[Order] = set()
    queue: deque[tuple[Order, int]] = deque([(base, 0)])  # (order, index where its free suffix starts)
    while queue and len(out) < budget:
        order, fixed = queue.popleft()
        suffix = order[fixed:]
        for r in range(len(suffix)):
            child = order[:fixed] + suffix[r:] + suffix[:r]
            if child not in seen:
                seen.add(child)
                out.append(child)
                if len(out) == budget:
                    break
            queue.append((child, fixed + 1))
    if len(out) < budget:
        raise ValueError(f"only {len(out)} distinct orders of {num_slices} slices exist")
    return out


def score(order: Sequence[int], prior: Sequence[float], t: float = 1.0) -> float:
    """Σₙ n·(1 − Σ_{i≤n} p_{σᵢ})^t, n counted from 1: high when likely-deleted slices come late."""
    total, mass = 0.0, 0.0
    for n, s in enumerate(order, start=1):
        mass += prior[s]
        total += n * max(0.0, 1.0 - mass) ** t
    return total


def bms(prior: Sequence[float], budget: int, t: float = 1.0) -> list[Order]:
    """B orders for a known deletion prior by bipartite matching, one position at a time.

    min(B, L) sequences grow together; at every position each gets a distinct slice by a
    max-weight matching on the score gain (a Latin rectangle where one can be extended, as
    the cyclic construction gives for a uniform prior). Beyond L, the permutation tree's orders are added
    best score first.
    """
    num = len(prior)
    if num < 1 or budget < 1:
        raise ValueError("prior must be non-empty and budget positive")
    if any(p < 0 for p in prior) or not np.isclose(sum(prior), 1.0):
        raise ValueError("prior must be a probability distribution")
    group = min(num, budget)
    partial: list[list[int]] = [[] for _ in range(group)]
    for _position in range(num):
        gain = np.full((group, num), -1e9)
        for g, seq in enumerate(partial):
            base = score(seq, prior, t)
            for s in set(range(num)) - set(seq):
                gain[g, s] = score([*seq, s], prior, t) - base
        rows, cols = linear_sum_assignment(gain, maximize=True)
        for g, s in zip(rows, cols, strict=True):
            # A partial Latin rectangle cannot always be extended column-wise; a sequence left
            # with only used slices takes its best remaining one (a repeat in this position).
            partial[g].append(int(s) if s not in partial[g] else int(np.argmax(gain[g])))
    out = list(dict.fromkeys(tuple(seq) for seq in partial))
    if len(out) < budget:
        pool = [o for o in cyclic(num, min(math.factorial(num), budget * num)) if o not in out]
        pool.sort(key=lambda o: -score(o, prior, t))
        out += pool[: budget - len(out)]
    if len(out) < budget:
        raise ValueError(f"only {len(out)} distinct orders of {num} slices exist")
    return out
