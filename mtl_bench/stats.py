"""Statistics for comparing strategies over seeds and over task pairs.

* :func:`mean_ci` — mean with a confidence interval over seeds: Student-t (default) or a
  percentile bootstrap with a fixed resampling seed (so a report is reproducible).
* :func:`paired_test` — a strategy against the reference, paired by seed. With at least
  :data:`WILCOXON_MIN_N` pairs: the Wilcoxon signed-rank test (scipy). With fewer: the exact
  paired permutation (sign-flip) test on the mean difference, enumerating all 2^n sign patterns.
  Both are two-sided. With n pairs and no ties neither can give p below 2 / 2^n
  (:func:`min_attainable_p`): n = 5 gives 0.0625, n = 6 gives 0.03125 — the smallest n at which
  a 5% test can reject at all, hence the switch at 6.
* :func:`bounded_interval` — mean of a metric bounded in an interval (accuracy, F1, AUROC, ECE:
  [0, 1]) with a confidence interval that stays inside the bounds: the t-interval of the mean
  cut at the bounds (and marked so), or the percentile bootstrap.
* :func:`log_interval` — geometric mean of a positive ratio-like quantity (speed ratio, step
  time, samples/s) with a t-interval on the log scale, so the interval is always positive.
* :func:`interval_for` — one entry point choosing among the above by the metric's kind.
* :func:`holm` — Holm-Bonferroni step-down adjusted p values for a family of tests.
* :func:`rank_values` — ranks with the metric's direction (1 = best, ties share the mean rank).
* :func:`unique_best` — which entry (if any) is best without a tie: strictly best mean and the
  runner-up's mean outside the best's interval.
* :func:`friedman_nemenyi` — Friedman test over task pairs (blocks) x strategies plus the
  Nemenyi critical difference CD = q_alpha sqrt(k (k + 1) / (6 N)), with
  q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2) (Demšar, "Statistical
  Comparisons of Classifiers over Multiple Data Sets", JMLR 2006, section 3.2.2).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from mtl_bench.errors import UserError

CI_METHODS = ("t", "bootstrap")
KINDS = ("unbounded", "unit", "positive")
WILCOXON_MIN_N = 6
WILCOXON = "Wilcoxon signed-rank"
SIGN_FLIP = "exact sign-flip permutation"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` finite values with a two-sided confidence interval (NaN when n < 2).

    ``scale`` says how the interval was formed: ``"linear"`` (as is), ``"clipped"`` (a
    t-interval cut at the metric's bounds, :func:`bounded_interval`) or ``"log"``
    (:func:`log_interval`; ``mean`` is then the geometric mean).
    """

    mean: float
    low: float
    high: float
    sd: float
    n: int
    scale: str = "linear"


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def check_ci(method: str, level: float) -> None:
    if method not in CI_METHODS:
        raise UserError(f"--ci must be one of {', '.join(CI_METHODS)}; got '{method}'")
    if not 0 < level < 1:
        raise UserError(f"--level must be between 0 and 1 (e.g. 0.95); got {level!r}")


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} * sd / sqrt(n); non-finite values are ignored."""
    v = _finite(values)
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def bootstrap_interval(values: Sequence[float] | np.ndarray, level: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile bootstrap of the mean (resampling seeds with replacement, fixed RNG seed)."""
    v = _finite(values)
    n = len(v)
    if n < 2:
        return t_interval(v, level)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(v.mean()), float(low), float(high), float(v.std(ddof=1)), n)


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95,
            method: str = "t") -> Interval:
    """Mean and confidence interval over seeds with the chosen method (``t`` or ``bootstrap``)."""
    check_ci(method, level)
    if method == "bootstrap":
        return bootstrap_interval(values, level)
    return t_interval(values, level)


def _bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:  # one side may be infinite (an error is bounded below only)
        raise ValueError(f"bounds must be two numbers, low < high; got {bounds!r}")
    return lo, hi


def bounded_interval(values: Sequence[float] | np.ndarray, level: float = 0.95,
                     method: str = "t", bounds: tuple[float, float] = (0.0, 1.0)) -> Interval:
    """Mean of a bounded metric with an interval inside ``bounds`` that contains the mean.

    For accuracy, F1, precision, recall, AUROC, ECE (bounds [0, 1]) the plain t-interval can
    cross a bound when the mean is near it (e.g. [1.0, 1.0, 0.96] gives a high of 1.04).

    Non-finite values are ignored; values outside the bounds (floating-point noise) are clipped
    to them first, so ``mean`` is the plain mean of the values in range. ``sd`` is the plain
    sample standard deviation.

    * ``method="t"``: the Student-t interval of the mean, cut at the bounds; ``scale`` is
      ``"clipped"`` when a bound cut it (the report says so), else ``"linear"``. The mean of a
      bounded quantity cannot lie outside its bounds, so the cut drops only values the mean
      cannot take and the coverage of the true mean is the t-interval's. A transformed interval
      (the logit of the mean by the delta method) was tried first and rejected: its half-width
      grows as 1 / (m (1 - m)), so near a bound with few seeds it explodes (three seeds
      [1, 1, 0.985] gave [0.72, 1.00] where the values spread over 0.015).
    * ``method="bootstrap"``: the percentile bootstrap of the mean (:func:`bootstrap_interval`)
      of the clipped values; resampled means lie between the smallest and largest value, so it
      is inside the bounds already (clamped only against rounding).
    """
    check_ci(method, level)
    lo_b, hi_b = _bounds(bounds)
    v = np.clip(_finite(values), lo_b, hi_b)
    iv = bootstrap_interval(v, level) if method == "bootstrap" else t_interval(v, level)
    if iv.n < 2:
        return iv
    if np.all(v == v[0]):  # no spread (checked on the values: a rounded sd is not 0)
        return Interval(float(v[0]), float(v[0]), float(v[0]), 0.0, iv.n, "linear")
    low = min(max(iv.low, lo_b), iv.mean)
    high = max(min(iv.high, hi_b), iv.mean)
    cut = method == "t" and (low != iv.low or high != iv.high)
    return Interval(iv.mean, low, high, iv.sd, iv.n, "clipped" if cut else "linear")


def clipped_band(mean: np.ndarray, sd: np.ndarray, n: np.ndarray, level: float = 0.95,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`bounded_interval` (``method="t"``) from group means, standard
    deviations and counts: the bands of curves of bounded metrics (NaN where n < 2)."""
    mean = np.asarray(mean, dtype=float)
    half = t_half_width(sd, n, level)
    return np.clip(mean - half, *bounds), np.clip(mean + half, *bounds)


def log_interval(values: Sequence[float] | np.ndarray, level: float = 0.95,
                 method: str = "t") -> Interval:
    """Geometric mean of a positive ratio-like quantity with an interval on the log scale.

    For speed ratios, step times and samples/s, which are positive and multiplicative (a run
    twice as fast and one twice as slow average to "as fast"), a t-interval on the raw values
    can go below zero (34,188 ± 37,339 samples/s). Here the interval is computed on log(x) and
    exponentiated, so it is always positive (low > 0) and asymmetric (x/÷ a factor):
    ``mean = exp(mean(log x))`` is the geometric mean (<= the arithmetic mean). With
    ``method="t"`` the interval is ``exp(mean(log x) ± t_{(1+level)/2, n-1} sd(log x) / √n)``;
    with ``method="bootstrap"`` the percentile bootstrap of mean(log x), exponentiated.
    ``sd`` is the plain sample standard deviation of the values used (original units).

    Values that are not finite or not positive are ignored (they are not measurements of a
    positive quantity and have no logarithm); ``n`` counts the values used.
    """
    check_ci(method, level)
    v = _finite(values)
    v = v[v > 0]
    logs = np.log(v)
    iv = bootstrap_interval(logs, level) if method == "bootstrap" else t_interval(logs, level)
    with np.errstate(over="ignore"):
        sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    if iv.n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, "log")
    mean = math.exp(iv.mean)
    if iv.n == 1:
        return Interval(mean, math.nan, math.nan, sd, 1, "log")
    if np.all(v == v[0]):  # rounding in log/exp must not open a spurious interval
        return Interval(mean, mean, mean, sd, iv.n, "log")
    with np.errstate(over="ignore", under="ignore"):  # absurd spreads: 0 or inf
        low, high = (float(x) for x in np.exp([iv.low, iv.high]))
    low = min(max(low, float(np.finfo(float).tiny)), mean)  # low stays > 0
    high = max(high, mean)
    return Interval(mean, low, high, sd, iv.n, "log")


def interval_for(values: Sequence[float] | np.ndarray, level: float = 0.95, method: str = "t",
                 kind: str = "unbounded") -> Interval:
    """Interval of the kind the metric needs: ``"unbounded"`` -> :func:`mean_ci` (linear),
    ``"unit"`` (bounded in [0, 1]) -> :func:`bounded_interval`, ``"positive"`` ->
    :func:`log_interval` (geometric mean, log scale). ``method`` is ``t`` or ``bootstrap``."""
    if kind == "unit":
        return bounded_interval(values, level, method)
    if kind == "positive":
        return log_interval(values, level, method)
    if kind == "unbounded":
        return mean_ci(values, level, method)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")


def t_half_width(sd: np.ndarray, n: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Vectorised t half-widths for many groups at once (NaN where n < 2)."""
    sd = np.asarray(sd, dtype=float)
    n = np.asarray(n, dtype=float)
    dof = np.where(n > 1, n - 1, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return stats.t.ppf((1 + level) / 2, dof) * sd / np.sqrt(n)


# -- paired tests ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedTest:
    """Two-sided paired test of ``a - b``; ``mean_diff`` is mean(a - b) over the ``n`` pairs."""

    test: str
    n: int
    statistic: float
    p: float
    mean_diff: float


def min_attainable_p(n: int) -> float:
    """Smallest two-sided p an exact sign-based paired test can give with n pairs (no ties)."""
    return 1.0 if n < 1 else min(1.0, 2.0 / 2**n)


def sign_flip_test(diffs: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Exact paired permutation test: (sum of differences, two-sided p).

    Under the null each difference is as likely to have either sign, so the p value is the share
    of the 2^n sign patterns whose |sum| is at least the observed |sum| (observed one included).
    """
    d = _finite(diffs)
    n = len(d)
    if n == 0:
        return math.nan, math.nan
    if n > 20:
        raise ValueError("sign_flip_test enumerates 2^n patterns; use it for n <= 20")
    observed = abs(float(d.sum()))
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    sums = np.abs(signs @ np.abs(d))
    # a relative tolerance so that patterns equal to the observed sum up to rounding count
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))
    return float(d.sum()), float(np.mean(sums >= observed - tol))


def paired_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """Test a - b paired element-wise; pairs where either value is not finite are dropped."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_test needs equal lengths, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = len(d)
    if n == 0:
        return PairedTest("", 0, math.nan, math.nan, math.nan)
    mean_diff = float(d.mean())
    if n < WILCOXON_MIN_N:
        statistic, p = sign_flip_test(d)
        return PairedTest(SIGN_FLIP, n, statistic, p, mean_diff)
    if not np.any(d):  # every pair identical: no evidence of a difference (scipy gives NaN)
        return PairedTest(WILCOXON, n, 0.0, 1.0, 0.0)
    res = stats.wilcoxon(d)
    return PairedTest(WILCOXON, n, float(res.statistic), float(res.pvalue), mean_diff)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p values (same shape as the input).

    With the m non-NaN p values sorted, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``: monotone in p, never below p, capped at 1.
    Rejecting where the adjusted p <= alpha is Holm's procedure, which controls the
    family-wise error rate at alpha under any dependence between the tests (Holm 1979), and is
    uniformly more powerful than Bonferroni. NaN entries (no test) stay NaN and are not counted
    in m. Raises ValueError for a p value outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float)
    flat = p.ravel()
    out = np.full(flat.shape, np.nan)
    ok = ~np.isnan(flat)
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError("p values must lie in [0, 1]")
    idx = np.flatnonzero(ok)
    m = len(idx)
    if m:
        order = idx[np.argsort(flat[idx], kind="stable")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * flat[order])
        out[order] = np.maximum.accumulate(scaled)
    return out.reshape(p.shape)


# -- ranks and the cross-pair test -------------------------------------------------------------
def rank_values(values: Sequence[float] | np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Rank 1 = best; ties share their mean rank; NaN values get NaN and take no rank."""
    v = np.asarray(values, dtype=float)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if ok.any():
        out[ok] = stats.rankdata(-v[ok] if higher_is_better else v[ok])
    return out


def unique_best(means: Sequence[float] | np.ndarray, lows: Sequence[float] | np.ndarray,
                highs: Sequence[float] | np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Boolean mask: True only at an entry that is best without a tie, e.g. to print in bold.

    An entry is best when its mean is strictly better than every other finite mean *and* the
    runner-up's mean lies outside the best's interval (below ``low`` when higher is better, above
    ``high`` when lower is better; a runner-up on the edge counts as inside). If the best has no
    interval on that side (NaN, e.g. n < 2), being strictly better is enough. An exact tie at the
    top or a runner-up inside the interval gives all False, as do fewer than two finite means
    (nothing to be best against). NaN means are never best.
    """
    m = np.asarray(means, dtype=float)
    lo = np.asarray(lows, dtype=float)
    hi = np.asarray(highs, dtype=float)
    if not m.shape == lo.shape == hi.shape:
        raise ValueError(f"unique_best needs equal shapes, got {m.shape}, {lo.shape}, {hi.shape}")
    m, lo, hi = m.ravel(), lo.ravel(), hi.ravel()
    out = np.zeros(m.shape, dtype=bool)
    idx = np.flatnonzero(np.isfinite(m))
    if len(idx) >= 2:
        order = idx[np.argsort(-m[idx] if higher_is_better else m[idx], kind="stable")]
        best, runner = order[0], order[1]
        edge = lo[best] if higher_is_better else hi[best]
        if m[best] != m[runner] and (
                math.isnan(edge) or (m[runner] < edge if higher_is_better else m[runner] > edge)):
            out[best] = True
    return out.reshape(np.shape(means))


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> tuple[float, float]:
    """(q_alpha, critical difference) of the Nemenyi test for k strategies on N blocks."""
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q, q * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


@dataclass
class FriedmanResult:
    """Friedman test over blocks (task pairs/settings) and the Nemenyi critical difference."""

    statistic: float
    p: float
    n_blocks: int
    k: int
    avg_ranks: dict[str, float]
    q_alpha: float
    cd: float
    alpha: float
    cliques: list[list[str]] = field(default_factory=list)


def friedman_nemenyi(scores: np.ndarray, names: Sequence[str], alpha: float = 0.05,
                     higher_is_better: bool = False) -> FriedmanResult:
    """``scores[b, j]`` is strategy j's score in block b (e.g. its mean rank on a task pair).

    Needs at least 2 blocks and 3 strategies (scipy's Friedman test needs k >= 3). Average ranks
    are of the per-block ranks (1 = best), as the critical-difference diagram shows them.
    """
    scores = np.asarray(scores, dtype=float)
    n, k = scores.shape
    if k < 3 or n < 2:
        raise ValueError(f"the Friedman test needs >= 3 strategies and >= 2 blocks; got {k} "
                         f"strategies and {n} block(s)")
    if not np.isfinite(scores).all():
        raise ValueError("the Friedman test needs a score for every strategy in every block")
    ranks = np.vstack([rank_values(row, higher_is_better) for row in scores])
    avg = ranks.mean(axis=0)
    if all(len(np.unique(row)) == 1 for row in scores):  # every block a full tie: 0/0 in scipy
        statistic, p = 0.0, 1.0
    else:
        res = stats.friedmanchisquare(*scores.T)
        statistic, p = float(res.statistic), float(res.pvalue)
    q, cd = nemenyi_cd(k, n, alpha)
    avg_ranks = {name: float(r) for name, r in zip(names, avg)}
    return FriedmanResult(statistic, p, n, k, avg_ranks, q, cd, alpha,
                          cliques(avg_ranks, cd))


def cliques(avg_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Maximal runs of strategies (sorted by average rank) whose ranks differ by less than CD:
    the groups a critical-difference diagram joins with a bar. Singletons are left out."""
    order = sorted(avg_ranks, key=lambda s: (avg_ranks[s], s))
    groups: list[list[str]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and avg_ranks[order[j + 1]] - avg_ranks[order[i]] < cd:
            j += 1
        group = order[i:j + 1]
        if len(group) > 1 and not any(set(group) <= set(g) for g in groups):
            groups.append(group)
    return groups
