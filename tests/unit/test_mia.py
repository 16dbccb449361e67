import math
import zlib

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


def test_token_scores_from_log_probabilities():
    from shards.mia import token_scores

    lps = [-1.0, -2.0, -3.0, -4.0, -5.0]  # k = int(5 * 0.4) = 2 lowest: -5, -4
    s = token_scores("abc", lps, [0.5, -0.5, 1.0, -1.5, 2.0])
    assert s["loss"] == pytest.approx(3.0) and s["min_k"] == pytest.approx(4.5)
    assert s["min_k_pp"] == pytest.approx(1.0)  # lowest two z: -1.5, -0.5
    assert s["zlib"] == pytest.approx(15.0 / len(zlib.compress(b"abc")))


def test_moments_from_the_top_log_probabilities():
    from shards.mia import moments_from_top

    flat = [math.log(0.1)] * 3  # a flat distribution over 10 tokens: the estimate is exact
    assert moments_from_top(flat, 10) == pytest.approx((math.log(0.1), 1e-6), abs=1e-9)
    w = [1 / (i + 1) ** 2 for i in range(2000)]  # peaked (Zipf, s = 2): 97 % of the mass in the top 20
    lp = [math.log(x / sum(w)) for x in w]
    mu = sum(math.exp(x) * x for x in lp)
    sigma = math.sqrt(sum(math.exp(x) * x * x for x in lp) - mu * mu)
    est_mu, est_sigma = moments_from_top(lp[:20], 2000)
    assert abs(est_mu - mu) < 0.1 and abs(est_sigma - sigma) / sigma < 0.2
    assert moments_from_top(lp, 2000) == pytest.approx((mu, sigma), rel=1e-9)  # the whole vocabulary: exact
