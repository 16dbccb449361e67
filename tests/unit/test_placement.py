from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from shards.placement import Layout, group_key, place_groups

keys = st.lists(st.binary(min_size=32, max_size=32), unique=True, max_size=200)


@given(st.lists(keys, max_size=5), st.integers(1, 5), st.integers(1, 6))
def test_cells_stay_balanced_across_ingest_batches(batches, m, slices):
    layout, placed = Layout(m, slices), {}
    for batch in batches:
        new = [g for g in batch if g not in placed]
        placed.update(place_groups(new, len(placed), layout))
    counts = Counter(placed.values())
    assert all(0 <= s < m and 0 <= sl < slices for s, sl in placed.values())
    if placed:
        full = [counts.get((s, sl), 0) for s in range(m) for sl in range(slices)]
        assert max(full) - min(full) <= 1


@given(keys, st.sets(st.integers(0, 199)))
def test_placement_ignores_what_is_deleted_later(groups, deleted):
    layout = Layout(3, 4)
    before = place_groups(groups, 0, layout)
    survivors = [g for i, g in enumerate(groups) if i not in deleted]
    again = place_groups(groups, 0, layout)  # recomputing never consults deletions
    assert before == again
    assert all(before[g] == again[g] for g in survivors)


def test_group_is_the_smallest_subject_hash():
    assert group_key([b"\x02" * 32, b"\x01" * 32]) == b"\x01" * 32
    assert Layout(2, 3).cell(0) == (0, 0) and Layout(2, 3).cell(1) == (1, 0) and Layout(2, 3).cell(2) == (0, 1)
