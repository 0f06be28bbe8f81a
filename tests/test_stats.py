"""Statistics of the aggregate stage against hand computations and independent scipy functions."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from mtl_bench import stats
from mtl_bench.errors import UserError


def test_t_interval_by_hand_and_against_scipy():
    # [1..5]: mean 3, sd sqrt(2.5), se sqrt(0.5); t_{0.975, 4} = 2.776445 (t table)
    iv = stats.t_interval([1, 2, 3, 4, 5], 0.95)
    assert iv.mean == 3 and iv.n == 5
    assert iv.high - iv.mean == pytest.approx(2.776445 * math.sqrt(0.5), rel=1e-6)
    v = np.array([0.91, 0.87, 0.95, 0.90, 0.88, 0.93, 0.92])
    low, high = sps.t.interval(0.9, len(v) - 1, loc=v.mean(), scale=sps.sem(v))
    iv = stats.mean_ci(v, 0.9, "t")
    assert (iv.low, iv.high) == pytest.approx((low, high))
    assert iv.sd == pytest.approx(v.std(ddof=1))


def test_interval_edge_cases():
    assert stats.t_interval([]).n == 0 and math.isnan(stats.t_interval([]).mean)
    one = stats.t_interval([2.0])
    assert one.mean == 2.0 and math.isnan(one.low) and one.n == 1
    assert stats.t_interval([1.0, float("nan"), 3.0, float("inf")]).n == 2  # non-finite ignored
    const = stats.t_interval([0.5, 0.5, 0.5])
    assert const.low == const.high == 0.5


def test_bootstrap_interval_is_deterministic_and_close_to_t_on_normal_data():
    rng = np.random.default_rng(1)
    v = rng.normal(10, 2, size=60)
    a, b = stats.mean_ci(v, 0.95, "bootstrap"), stats.mean_ci(v, 0.95, "bootstrap")
    assert a == b
    t = stats.t_interval(v)
    assert a.low < v.mean() < a.high
    # for n = 60 normal data the percentile bootstrap and the t-interval nearly agree
    assert (a.high - a.low) == pytest.approx(t.high - t.low, rel=0.15)
    assert stats.bootstrap_interval([3.0, 3.0, 3.0]).low == 3.0


def test_bad_ci_options_are_user_errors():
    with pytest.raises(UserError, match="--ci must be one of"):
        stats.mean_ci([1, 2], method="jackknife")
    with pytest.raises(UserError, match="--level"):
        stats.mean_ci([1, 2], level=95)


def test_sign_flip_p_by_hand():
    # d = (1, 2, 3): the 8 sign patterns give sums 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 twice
    assert stats.sign_flip_test([1, 2, 3]) == (6.0, 0.25)
    # d = (3, -1, 2, 0.5): total |d| = 6.5, observed sum 4.5. Flipping a subset with |d|-sum S
    # gives 6.5 - 2S, and |6.5 - 2S| >= 4.5 iff S <= 1 or S >= 5.5: subsets {}, {0.5}, {1},
    # {3, 2, 0.5}, {3, 2, 1}, {3, 2, 1, 0.5} -> 6 of 16.
    statistic, p = stats.sign_flip_test([3, -1, 2, 0.5])
    assert statistic == 4.5 and p == 6 / 16


def test_wilcoxon_p_by_hand():
    # all six differences positive: T = 0; P(T <= 0) = 1/64, two-sided 2/64
    res = stats.paired_test([2, 3, 4, 5, 6, 7], [1, 1, 1, 1, 1, 1])
    assert res.test == stats.WILCOXON and res.n == 6 and res.p == pytest.approx(2 / 64)
    # d = (1, -2, 3, 4, 5, 6): W- = 2; subsets of ranks 1..6 summing to <= 2: {}, {1}, {2}
    # -> P(T <= 2) = 3/64, two-sided 6/64
    res = stats.paired_test(np.array([1, -2, 3, 4, 5, 6]) + 10.0, np.full(6, 10.0))
    assert res.statistic == 2 and res.p == pytest.approx(6 / 64)
    assert res.mean_diff == pytest.approx(17 / 6)


def test_paired_test_switches_at_six_pairs_and_drops_incomplete_pairs():
    a = [1.0, 2.0, 3.0, 4.0, 5.0, float("nan")]
    b = [0.0, 0.5, 1.0, 1.5, 2.0, 1.0]
    res = stats.paired_test(a, b)
    assert res.test == stats.SIGN_FLIP and res.n == 5
    assert res.p == pytest.approx(2 / 32)  # all five differences positive
    assert stats.paired_test([1.0] * 6, [1.0] * 6).p == 1.0
    assert stats.paired_test([], []).n == 0
    assert stats.min_attainable_p(5) == 2 / 32 and stats.min_attainable_p(6) < 0.05


def test_rank_values_use_the_direction_and_share_ties():
    np.testing.assert_array_equal(stats.rank_values([0.9, 0.8, 0.9, np.nan], True),
                                  [1.5, 3.0, 1.5, np.nan])
    np.testing.assert_array_equal(stats.rank_values([3.0, 1.0, 2.0], False), [3.0, 1.0, 2.0])


def test_friedman_statistic_by_hand():
    # rank sums 5, 8, 11 over n = 4 blocks, k = 3:
    # chi2 = 12 / (n k (k+1)) * sum R^2 - 3 n (k+1) = 0.25 * 210 - 48 = 4.5; df 2: p = e^-2.25
    scores = np.array([[1, 2, 3], [1, 3, 2], [1, 2, 3], [2, 1, 3]], dtype=float)
    res = stats.friedman_nemenyi(scores, ["a", "b", "c"])
    assert res.statistic == pytest.approx(4.5)
    assert res.p == pytest.approx(math.exp(-2.25))
    assert res.avg_ranks == pytest.approx({"a": 1.25, "b": 2.0, "c": 2.75})
    # CD = q_0.05(k=3) sqrt(k (k+1) / (6 N)) with q = 2.343 (Demšar 2006, table 5a)
    assert res.cd == pytest.approx(2.343 * math.sqrt(12 / 24), abs=1e-3)
    with pytest.raises(ValueError, match=">= 3 strategies"):
        stats.friedman_nemenyi(scores[:, :2], ["a", "b"])


@pytest.mark.parametrize("k,q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850),
                                 (7, 2.949), (8, 3.031), (9, 3.102), (10, 3.164)])
def test_nemenyi_q_matches_demsar_table(k, q):
    assert stats.nemenyi_cd(k, 10, 0.05)[0] == pytest.approx(q, abs=1e-3)


def test_friedman_with_all_ties_is_not_significant():
    res = stats.friedman_nemenyi(np.ones((3, 3)), ["a", "b", "c"])
    assert res.p == 1.0 and res.avg_ranks == {"a": 2.0, "b": 2.0, "c": 2.0}


def test_cliques_join_ranks_closer_than_cd():
    ranks = {"a": 1.0, "b": 1.5, "c": 2.4, "d": 4.0}
    assert stats.cliques(ranks, 1.0) == [["a", "b"], ["b", "c"]]
    assert stats.cliques(ranks, 0.1) == []
