"""Exactness of deletion planning as properties over random placements and deletion sets."""

import dataclasses
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from shards.planner import Unit, plan
from shards.sequences import cyclic
from shards.simulate import capacity, closed_form, served_after


@st.composite
def scenarios(draw):
    m, slices = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    budget = draw(st.integers(1, min(6, math.factorial(slices))))
    n = draw(st.integers(0, 60))
    placement = {f"r{i}": (draw(st.integers(0, m - 1)), draw(st.integers(0, slices - 1))) for i in range(n)}
    deleted = draw(st.sets(st.sampled_from(sorted(placement)) if placement else st.nothing()))
    # Some units are retrained versions that already left some deleted records out.
    excluded = draw(st.sets(st.sampled_from(sorted(deleted)))) if deleted else set()
    units = [
        Unit(k, j, o, version=v, excluded=frozenset(excluded) if v else frozenset())
        for k in range(m)
        for j, o in enumerate(cyclic(slices, budget))
        for v in [draw(st.integers(0, 1))]
    ]
    return units, placement, deleted


def trained_on(unit, block, placement):
    """Records block `block` of `unit` saw: cumulative slices σ0..σblock of its shard, minus exclusions."""
    seen = set(unit.order[: block + 1])
    return {r for r, (k, s) in placement.items() if k == unit.shard and s in seen} - unit.excluded


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_no_active_block_ever_saw_a_deleted_record(scenario):
    units, placement, deleted = scenario
    result = plan(units, placement, deleted)
    by_key = {(u.shard, u.sequence): u for u in units}
    for k, sp in result.shards.items():
        served = by_key[(k, sp.sequence)]
        for block in range(sp.prefix):
            assert not trained_on(served, block, placement) & deleted
        assert sp.dead == (sp.prefix == 0)
        assert list(sp.deactivated) == list(range(sp.prefix, len(served.order)))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_served_prefix_is_the_longest_clean_one_and_every_cut_is_reported(scenario):
    units, placement, deleted = scenario
    result = plan(units, placement, deleted)
    for u in units:
        clean = 0
        while clean < len(u.order) and not trained_on(u, clean, placement) & deleted:
            clean += 1
        sp = result.shards[u.shard]
        assert clean <= sp.prefix
        if clean < len(u.order):
            assert sp.tainted[u.sequence] == clean and u.shard in result.affected
        else:
            assert u.sequence not in sp.tainted


def test_destroyed_blocks_are_not_planned_again_and_a_retrain_restores_depth():
    units = [Unit(0, j, o) for j, o in enumerate(cyclic(4, 2))]  # (0,1,2,3) and (1,2,3,0)
    placement = {"a": (0, 2), "b": (0, 1)}
    p = plan(units, placement, ["a"])
    assert (p.shards[0].sequence, p.shards[0].prefix, dict(p.shards[0].tainted)) == (0, 2, {0: 2, 1: 1})
    cut = [dataclasses.replace(u, depth=p.shards[0].tainted[u.sequence]) for u in units]
    again = plan(cut, placement, ["a"])
    assert again.shards[0].prefix == 2 and not again.shards[0].tainted and not again.affected
    retrained = [*cut, Unit(0, 0, (0, 1, 2, 3), version=1, excluded=frozenset({"a"}))]
    assert plan(retrained, placement, ["a"]).shards[0].prefix == 4
    both = plan(retrained, placement, ["a", "b"])
    assert both.shards[0].prefix == 1 and both.shards[0].version == 1


def test_a_shard_whose_every_sequence_starts_dirty_is_dead():
    units = [Unit(0, j, o) for j, o in enumerate(cyclic(3, 3))] + [Unit(1, 0, (0, 1, 2))]
    placement = {"x": (0, 0), "y": (0, 1), "z": (0, 2)}
    p = plan(units, placement, ["x", "y", "z"])
    assert p.dead == {0} and p.affected == {0} and p.shards[1].prefix == 3


def test_capacity_simulator_matches_the_closed_form_within_3_percent():
    for m, slices, budget in [(5, 4, 1), (5, 4, 4), (4, 8, 8)]:
        r = capacity(m, slices, budget, trials=2000, seed=1)
        assert r.relative_error < 0.03, r
    assert closed_form(5, 4, 4) / closed_form(5, 4, 1) > 1.5  # S3T beats SISA on capacity


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 3),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=8),
)
def test_the_burst_prediction_serves_the_longest_prefix_free_of_every_deleted_cell(m, slices, budget, cells):
    """``served_after`` (what a burst's bench compares the service with): per shard, the longest
    sequence prefix that holds no deleted cell; cut units are those whose order holds one."""
    orders = {k: cyclic(slices, min(budget, slices)) for k in range(m)}
    cells = [(k % m, s % slices) for k, s in cells]
    depth, cut = served_after(orders, cells)
    for k, seqs in orders.items():
        dirty = {s for kk, s in cells if kk == k}
        prefixes = [next((i for i, s in enumerate(o) if s in dirty), len(o)) for o in seqs]
        assert depth[k] == max(prefixes)
        assert {j for kk, j in cut if kk == k} == {j for j, p in enumerate(prefixes) if p < len(seqs[j])}
