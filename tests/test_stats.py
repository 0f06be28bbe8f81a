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


# -- intervals that respect the metric's range ----------------------------------------------
def test_interval_keeps_its_positional_fields():
    iv = stats.Interval(1.0, 0.5, 1.5, 0.2, 3)
    assert (iv.mean, iv.low, iv.high, iv.sd, iv.n, iv.scale) == (1.0, 0.5, 1.5, 0.2, 3, "linear")


def test_bounded_interval_stays_in_unit_range_where_t_does_not():
    acc = [1.0, 1.0, 0.96]
    t = stats.t_interval(acc)
    assert t.high > 1  # the problem: 0.987 ± 0.057
    iv = stats.bounded_interval(acc)
    assert iv.scale == "clipped" and iv.n == 3
    assert iv.mean == pytest.approx(np.mean(acc)) and iv.sd == pytest.approx(np.std(acc, ddof=1))
    assert iv.low == pytest.approx(t.low) and iv.high == 1.0  # only the impossible part is cut
    ece = stats.bounded_interval([0.0, 0.02, 0.0])
    assert ece.low == 0.0 < ece.mean < ece.high <= 1.0 and ece.scale == "clipped"
    for const in ([1.0, 1.0, 1.0], [0.0, 0.0], [0.7, 0.7, 0.7]):
        iv = stats.bounded_interval(const)
        assert iv.low == iv.high == iv.mean == pytest.approx(const[0])


def test_bounded_interval_near_a_bound_stays_as_narrow_as_the_values():
    # three seeds at 1, 1, 0.985: the interval must not balloon (a logit interval gave 0.72)
    iv = stats.bounded_interval([1.0, 1.0, 0.985])
    assert 0.96 < iv.low < iv.mean < iv.high == 1.0


def test_bounded_interval_by_hand_and_with_other_bounds():
    # [0.2, 0.4, 0.6]: 0.4 ± t_{0.975, 2} * 0.2 / sqrt(3) = 0.4 ± 0.4968 -> cut at 0 below
    half = 4.302653 * 0.2 / math.sqrt(3)
    iv = stats.bounded_interval([0.2, 0.4, 0.6])
    assert (iv.low, iv.mean, iv.high) == pytest.approx((0.0, 0.4, 0.4 + half), rel=1e-6)
    pct = stats.bounded_interval([20.0, 40.0, 60.0], bounds=(0.0, 100.0))
    assert (pct.low, pct.high) == pytest.approx((0.0, 100 * (0.4 + half)))
    # an error (bounded below only) is cut at 0 and nowhere else
    mae = stats.bounded_interval([0.01, 0.5, 0.02], bounds=(0.0, math.inf))
    assert mae.low == 0.0 and mae.high == pytest.approx(stats.t_interval([0.01, 0.5, 0.02]).high)


def test_bounded_interval_matches_t_far_from_the_bounds():
    v = np.array([0.49, 0.50, 0.51, 0.50, 0.505])
    t, b = stats.t_interval(v), stats.bounded_interval(v)
    assert (b.low, b.high) == (t.low, t.high) and b.scale == "linear"


def test_clipped_band_matches_the_interval():
    vals = [1.0, 1.0, 0.96]
    low, high = stats.clipped_band(np.array([np.mean(vals)]), np.array([np.std(vals, ddof=1)]),
                                   np.array([3]))
    iv = stats.bounded_interval(vals)
    assert (low[0], high[0]) == pytest.approx((iv.low, iv.high))


def test_bounded_interval_edge_cases_and_bootstrap():
    assert stats.bounded_interval([]).n == 0
    one = stats.bounded_interval([0.9])
    assert one.mean == 0.9 and math.isnan(one.low) and math.isnan(one.high)
    # values a hair outside the bounds (rounding) are clipped: mean and interval stay in range
    iv = stats.bounded_interval([1.0 + 1e-9, 0.99, 0.98, float("nan")])
    assert iv.n == 3 and iv.mean <= iv.high <= 1.0
    boot = stats.bounded_interval([1.0, 1.0, 0.96], method="bootstrap")
    assert boot.scale == "linear" and 0.96 <= boot.low <= boot.mean <= boot.high <= 1.0
    assert stats.bounded_interval([0.0, 0.0, 0.0], method="bootstrap").high == 0.0
    with pytest.raises(ValueError, match="bounds"):
        stats.bounded_interval([0.5, 0.6], bounds=(1.0, 0.0))
    with pytest.raises(UserError, match="--ci"):
        stats.bounded_interval([0.5, 0.6], method="wald")


def test_bounded_t_interval_covers_the_true_mean_of_beta_samples():
    # Beta(9, 1): mean 0.9, skewed against the bound at 1; 2000 samples of n = 5
    rng = np.random.default_rng(12345)
    samples = rng.beta(9.0, 1.0, size=(2000, 5))
    ivs = [stats.bounded_interval(row) for row in samples]
    assert all(0.0 <= iv.low <= iv.mean <= iv.high <= 1.0 for iv in ivs)
    coverage = np.mean([iv.low <= 0.9 <= iv.high for iv in ivs])
    assert 0.85 <= coverage <= 0.99


def test_log_interval_is_positive_around_the_geometric_mean():
    tp = [30000.0, 5000.0, 60000.0]
    assert stats.t_interval(tp).low < 0  # the problem: a negative throughput
    iv = stats.log_interval(tp)
    geo = (30000.0 * 5000.0 * 60000.0) ** (1 / 3)
    assert iv.scale == "log" and iv.n == 3
    assert iv.mean == pytest.approx(geo)
    assert 0 < iv.low < iv.mean < iv.high
    logs = np.log(tp)
    low, high = sps.t.interval(0.95, 2, loc=logs.mean(), scale=sps.sem(logs))
    assert (iv.low, iv.high) == pytest.approx((math.exp(low), math.exp(high)))
    assert iv.sd == pytest.approx(np.std(tp, ddof=1))


def test_log_interval_edge_cases():
    iv = stats.log_interval([0.0, -1.0, 2.0, 8.0, float("inf")])  # non-positive ignored
    assert iv.n == 2 and iv.mean == pytest.approx(4.0)
    assert stats.log_interval([-1.0, 0.0]).n == 0
    one = stats.log_interval([3.0])
    assert one.mean == pytest.approx(3.0) and math.isnan(one.low)
    const = stats.log_interval([2.0, 2.0, 2.0])
    assert const.low == const.high == const.mean == pytest.approx(2.0)
    assert stats.log_interval([1e-150, 1e150]).low > 0  # exp would underflow to 0
    const = stats.log_interval([0.7, 0.7, 0.7])
    assert const.low == const.high == const.mean == pytest.approx(0.7)
    boot = stats.log_interval([30000.0, 5000.0, 60000.0], method="bootstrap")
    assert 5000.0 <= boot.low < boot.mean < boot.high <= 60000.0


def test_interval_for_dispatches_on_the_kind():
    v = [0.9, 0.95, 0.99, 1.0]
    assert stats.interval_for(v, 0.9, "t", "unit") == stats.bounded_interval(v, 0.9, "t")
    assert stats.interval_for(v, 0.9, "bootstrap", "positive") == stats.log_interval(
        v, 0.9, "bootstrap")
    assert stats.interval_for(v, 0.9, "t", "unbounded") == stats.mean_ci(v, 0.9, "t")
    with pytest.raises(ValueError, match="kind"):
        stats.interval_for(v, 0.9, "t", "percent")
    with pytest.raises(UserError, match="--level"):
        stats.interval_for(v, 95, "t", "unit")


# -- multiple comparisons ------------------------------------------------------------------------
def test_holm_by_hand():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running
    # max 0.02, 0.03, 0.06, 0.06; back in the input order [0.03, 0.06, 0.06, 0.02]
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN is no test: m = 2, so 0.01 * 2 = 0.02 and 0.04 * 1 = 0.04
    np.testing.assert_allclose(stats.holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    # capped at 1: 0.5 * 2 = 1.0 and max(1.0, 0.6) = 1.0
    np.testing.assert_array_equal(stats.holm([0.6, 0.5]), [1.0, 1.0])
    # tied p values get the same adjusted value: 0.02 * 3 = 0.06, max(0.06, 0.04), 0.5
    np.testing.assert_allclose(stats.holm([0.02, 0.5, 0.02]), [0.06, 0.5, 0.06])
    assert stats.holm([]).shape == (0,)
    assert np.isnan(stats.holm([np.nan, np.nan])).all()
    assert stats.holm(np.array([[0.01, 0.04], [0.03, 0.005]])).shape == (2, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.5, 1.2])


def test_holm_matches_the_step_down_procedure():
    # Holm's procedure at level alpha: walk the sorted p values and reject p_(k) while
    # p_(k) <= alpha / (m - k + 1), stopping at the first that is not. The adjusted p values
    # must reject exactly the same hypotheses (adjusted p <= alpha) at every alpha.
    rng = np.random.default_rng(7)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 9))
        adj = stats.holm(p)
        assert np.all(adj >= p) and np.all(adj <= 1)
        order = np.argsort(p)
        assert np.all(np.diff(adj[order]) >= 0)  # monotone in p
        for alpha in rng.uniform(0, 0.5, size=20):
            rejected = set()
            for k, i in enumerate(order):
                if p[i] > alpha / (len(p) - k):
                    break
                rejected.add(int(i))
            assert rejected == set(np.flatnonzero(adj <= alpha).tolist())


# -- ties ----------------------------------------------------------------------------------------
def test_rank_values_average_tied_ranks():
    np.testing.assert_array_equal(stats.rank_values([0.9, 0.9, 0.8], True), [1.5, 1.5, 3.0])
    np.testing.assert_array_equal(stats.rank_values([0.2, 0.1, 0.1, 0.1], False),
                                  [4.0, 2.0, 2.0, 2.0])


def test_unique_best_needs_a_strict_winner_outside_the_interval():
    nan = np.nan
    # planted tie: every strategy at 1.00 -> nothing is best
    ones = np.ones(4)
    assert not stats.unique_best(ones, ones, ones, True).any()
    # exact tie at the top with a third below
    assert not stats.unique_best([0.9, 0.9, 0.8], [0.85] * 3, [0.95] * 3, True).any()
    # runner-up inside the best's interval (0.89 >= 0.88), and exactly on its edge
    assert not stats.unique_best([0.90, 0.89], [0.88, 0.87], [0.92, 0.91], True).any()
    assert not stats.unique_best([0.90, 0.88], [0.88, 0.87], [0.92, 0.91], True).any()
    # clear winner
    np.testing.assert_array_equal(
        stats.unique_best([0.90, 0.95, 0.80], [0.88, 0.93, 0.78], [0.92, 0.97, 0.82], True),
        [False, True, False])
    # lower is better: the runner-up must lie above the best's high
    np.testing.assert_array_equal(
        stats.unique_best([0.30, 0.10, 0.25], [0.2, 0.05, 0.2], [0.4, 0.15, 0.3], False),
        [False, True, False])
    assert not stats.unique_best([0.30, 0.10], [0.2, 0.05], [0.4, 0.35], False).any()
    # no interval (n < 2): strictly better is enough
    np.testing.assert_array_equal(stats.unique_best([0.9, 0.8], [nan, nan], [nan, nan], True),
                                  [True, False])


def test_unique_best_never_picks_nan():
    nan = np.nan
    np.testing.assert_array_equal(
        stats.unique_best([nan, 0.95, 0.80], [nan, 0.93, 0.78], [nan, 0.97, 0.82], True),
        [False, True, False])
    assert not stats.unique_best([nan, 0.9], [nan, 0.8], [nan, 1.0], True).any()  # one entry
    assert not stats.unique_best([nan, nan], [nan, nan], [nan, nan], True).any()
    with pytest.raises(ValueError, match="equal shapes"):
        stats.unique_best([0.9, 0.8], [0.8], [1.0, 0.9], True)
