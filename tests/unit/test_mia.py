import pytest

from shards.mia import auc, person_scores


def test_auc_counts_member_losses_below_non_members_with_ties_half():
    assert auc([0.1, 0.2], [0.5, 0.6]) == 1.0
    assert auc([0.9], [0.1, 0.2]) == 0.0
    assert auc([0.5], [0.5]) == 0.5
    assert auc([0.1, 0.7], [0.5]) == 0.5
    with pytest.raises(ValueError):
        auc([], [1.0])


def test_person_scores_average_their_records():
    losses = {"a1": 1.0, "a2": 3.0, "b1": 5.0}
    assert person_scores(losses, {"a": ["a1", "a2"], "b": ["b1"], "c": []}) == {"a": 2.0, "b": 5.0}
