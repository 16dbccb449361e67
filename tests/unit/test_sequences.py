import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shards.sequences import bms, cyclic, score


def test_cyclic_within_budget_is_a_latin_rectangle():
    assert cyclic(4, 4) == [(0, 1, 2, 3), (1, 2, 3, 0), (2, 3, 0, 1), (3, 0, 1, 2)]
    assert cyclic(4, 2) == [(0, 1, 2, 3), (1, 2, 3, 0)]
    assert cyclic(1, 1) == [(0,)]


@given(st.integers(1, 5), st.data())
def test_cyclic_gives_distinct_permutations_for_any_budget(num, data):
    budget = data.draw(st.integers(1, len(list(itertools.permutations(range(num))))))
    orders = cyclic(num, budget)
    assert len(orders) == budget == len(set(orders))
    assert all(sorted(o) == list(range(num)) for o in orders)
    for pos in range(num):  # the first min(B, L) orders put every slice at most once per position
        column = [o[pos] for o in orders[: min(budget, num)]]
        assert len(set(column)) == len(column)


def test_permutation_tree_beyond_l():
    orders = cyclic(3, 6)
    assert orders[:3] == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    assert sorted(orders) == sorted(itertools.permutations(range(3)))
    with pytest.raises(ValueError):
        cyclic(3, 7)


def test_score_prefers_likely_deleted_slices_last():
    prior = [0.7, 0.1, 0.1, 0.1]
    assert score((1, 2, 3, 0), prior) > score((0, 1, 2, 3), prior)


def test_bms_puts_the_likely_deleted_slice_last_and_matches_cyclic_score_when_uniform():
    prior = [0.55, 0.15, 0.15, 0.15]
    orders = bms(prior, 2)
    assert len(orders) == 2 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert orders[0][-1] == 0 or orders[1][-1] == 0
    assert sum(score(o, prior) for o in orders) >= sum(score(o, prior) for o in cyclic(4, 2))
    uniform = [0.25] * 4
    assert sorted(score(o, uniform) for o in bms(uniform, 4)) == pytest.approx(
        sorted(score(o, uniform) for o in cyclic(4, 4))
    )


@given(st.lists(st.floats(0.01, 1), min_size=1, max_size=5), st.integers(1, 8))
def test_bms_returns_budget_distinct_permutations(weights, budget):
    prior = [w / sum(weights) for w in weights]
    budget = min(budget, len(list(itertools.permutations(range(len(prior))))))
    orders = bms(prior, budget)
    assert len(orders) == budget == len(set(orders))
    assert all(sorted(o) == list(range(len(prior))) for o in orders)


def test_bad_prior_is_rejected():
    with pytest.raises(ValueError):
        bms([0.5, 0.6], 1)
