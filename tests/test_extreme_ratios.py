"""Gradient strategies at extreme gradient-norm ratios, against exact references.

A battery of float64 gradient matrices (T in {2, 3, 5}, P in {10, 1000}; Gaussian, conflicting,
nearly parallel, with one zero row, rank-deficient; row norms all 1, spread over 1e-2..1e2 or
over 1e-3..1e3, i.e. ratios up to 1e6). Each reference solves the method's defining problem
from the Gram matrix of the vectors computed in 50-digit arithmetic (mpmath), by a route other
than the strategy's: KKT conditions checked for every support (MGDA, CAGrad's primal problem),
a direct linear solve (IMTL-G), Newton's method to full precision (Nash-MTL), KKT conditions
of each dual-cone projection (UPGrad, P = 10 only), the sequential projections and cosine moves
on the P-length vectors themselves with the same fixed task orders (PCGrad; GradVac, one step
from known targets), a 50-digit eigen-decomposition with the strategy's float32 rank rule
(Aligned-MTL: at a 1e6 norm ratio the smallest tasks' directions fall under it and are dropped,
as in the official code). Errors are relative: ||d - d*|| / ||d*|| for the update d = alpha @ G.
"""

import importlib
import itertools

import mpmath
import numpy as np
import pytest
import torch

from mtl_bench import registry
from mtl_bench.strategy import REGRESSION, TaskGradients, TaskInfo
from mtl_bench.train import build_strategy

mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
mp.dps = 50
TOL = 1e-6
KINDS = ["gauss", "conflict", "parallel", "zero_row", "rank_def"]
SCALES = {"unit": 0.0, "1e4": 2.0, "1e6": 3.0}  # row norms 10^[-e, e]


def _matrix(t, p, kind, scale, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((t, p))
    if kind == "conflict":
        z = z - 0.9 * z.mean(axis=0)  # pairwise negative cosines
    elif kind == "parallel":
        z = rng.standard_normal(p) + 1e-3 * z
    elif kind == "rank_def":
        # rank max(T - 1, 1); positive coefficients keep 0 out of the cone of the gradients
        r = max(t - 1, 1)
        z = np.abs(rng.standard_normal((t, r))) @ rng.standard_normal((r, p))
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    e = SCALES[scale]
    z = z * (10.0 ** np.linspace(-e, e, t))[rng.permutation(t), None]
    if kind == "zero_row":
        z[1] = 0.0
    return z


CASES = [(t, p, kind, scale, 100 * t + 10 * i + j)
         for t in (2, 3, 5) for p in (10, 1000)
         for i, kind in enumerate(KINDS) for j, scale in enumerate(SCALES)]
IDS = [f"T{t}-P{p}-{kind}-{scale}" for t, p, kind, scale, _ in CASES]
_GRAMS = {}


def _mp_gram(g):
    key = g.tobytes()
    if key not in _GRAMS:
        rows = [[mp.mpf(float(x)) for x in r] for r in g]
        t = len(rows)
        m = mp.matrix(t, t)
        for i in range(t):
            for j in range(i, t):
                m[i, j] = m[j, i] = mp.fdot(rows[i], rows[j])
        _GRAMS[key] = m
    return _GRAMS[key]


def _quad(m, a, b):
    return mp.fsum(a[i] * m[i, j] * b[j] for i in range(len(a)) for j in range(len(b)))


def _rel_err(m, alpha, ref):
    """||d - d*|| / ||d*|| with d = alpha @ G, exactly (from the 50-digit Gram)."""
    a = [mp.mpf(float(x)) for x in alpha]
    diff = [a[i] - ref[i] for i in range(len(a))]
    return float(mp.sqrt(abs(_quad(m, diff, diff))) / mp.sqrt(_quad(m, ref, ref)))


def _solve(mat, rhs):
    try:
        return mp.lu_solve(mat, mp.matrix(rhs))
    except ZeroDivisionError:
        return None


def _weights(name, g, **params):
    s = build_strategy(name, params)
    s.setup([TaskInfo(f"t{i}", REGRESSION) for i in range(len(g))], seed=0)
    grads = TaskGradients(torch.as_tensor(g), "shared")
    w = s.combine(torch.ones(len(g), dtype=torch.float64), grads).weights.numpy()
    assert s.solver_failures == 0
    return w


# -- exact references ------------------------------------------------------------------------
def _min_norm_ref(m):
    """argmin over the simplex of a^T M a: the support whose KKT point is primal and dual
    feasible (M_SS a_S = lam 1, a >= 0, (M a)_j >= lam off S)."""
    t = m.rows
    tol = mp.mpf(10) ** -30 * max(abs(m[i, i]) for i in range(t))
    for k in range(1, t + 1):
        for s in itertools.combinations(range(t), k):
            mat = mp.matrix(k + 1, k + 1)
            for a, i in enumerate(s):
                for b, j in enumerate(s):
                    mat[a, b] = m[i, j]
                mat[a, k], mat[k, a] = -1, 1
            sol = _solve(mat, [0] * k + [1])
            if sol is None or any(sol[a] < -tol for a in range(k)):
                continue
            alpha = [mp.mpf(0)] * t
            for a, i in enumerate(s):
                alpha[i] = sol[a]
            lam = sol[k]
            if all(mp.fsum(m[j, i] * alpha[i] for i in range(t)) >= lam - tol
                   for j in range(t) if j not in s):
                return alpha
    raise AssertionError("no KKT point")


def _cagrad_ref(m, c):
    """CAGrad's primal max_d min_i g_i.d, ||d - g0|| <= c ||g0||, by its KKT conditions:
    d = g0 + sum_{i in S} y_i g_i, y >= 0, g_i.d = t on S, >= t off S, ||d - g0|| = c ||g0||.
    Returns (alpha*, t*) with d* = alpha* @ G, or None when no such point exists (0 in the
    hull of the gradients and a primal value of 0, attained by many d)."""
    n = m.rows
    b = [mp.fsum(m[i, j] for j in range(n)) / n for i in range(n)]
    r2 = c * c * mp.fsum(b) / n
    tol = mp.mpf(10) ** -30 * max(abs(m[i, i]) for i in range(n))
    best = None
    for k in range(1, n + 1):
        for s in itertools.combinations(range(n), k):
            sub = mp.matrix([[m[i, j] for j in s] for i in s])
            p, q = _solve(sub, [1] * k), _solve(sub, [b[i] for i in s])
            if p is None or q is None:
                continue
            a2, a1 = mp.fsum(p), mp.fsum(q)
            a0 = mp.fsum(b[i] * q[x] for x, i in enumerate(s)) - r2
            disc = a1 * a1 - a2 * a0
            if disc < 0 or a2 == 0:
                continue
            for t_val in ((a1 + mp.sqrt(disc)) / a2, (a1 - mp.sqrt(disc)) / a2):
                y = [t_val * p[x] - q[x] for x in range(k)]
                if any(v < -tol for v in y):
                    continue
                alpha = [mp.mpf(1) / n] * n
                for x, i in enumerate(s):
                    alpha[i] += y[x]
                gains = [mp.fsum(m[j, i] * alpha[i] for i in range(n)) for j in range(n)]
                if all(v >= t_val - tol * 10 for v in gains):
                    if best is None or t_val > best[1]:
                        best = (alpha, t_val)
    return best


def _imtl_g_ref(m, keep):
    """IMTL-G on the kept tasks: sum alpha = 1, d.u_1 = d.u_i, a direct linear solve."""
    ks = list(keep)
    k = len(ks)
    norms = [mp.sqrt(m[i, i]) for i in ks]
    mat = mp.matrix(k, k)
    for a in range(k):
        mat[0, a] = 1
        for i in range(1, k):
            mat[i, a] = m[ks[a], ks[0]] / norms[0] - m[ks[a], ks[i]] / norms[i]
    sol = _solve(mat, [1] + [0] * (k - 1))
    alpha = [mp.mpf(0)] * m.rows
    for a, i in enumerate(ks):
        alpha[i] = sol[a]
    return alpha


def _nash_ref(m, keep, start):
    """alpha > 0 with alpha_i (M alpha)_i = 1 on the kept tasks: Newton on C beta = 1 / beta
    from the strategy's answer, to 50 digits."""
    ks = list(keep)
    norms = [mp.sqrt(m[i, i]) for i in ks]
    cos = mp.matrix([[m[i, j] / (norms[a] * norms[b]) for b, j in enumerate(ks)]
                     for a, i in enumerate(ks)])
    beta = mp.matrix([mp.mpf(float(start[i])) * norms[a] for a, i in enumerate(ks)])
    for _ in range(60):
        f = cos * beta - mp.matrix([1 / x for x in beta])
        jac = cos + mp.diag([1 / x**2 for x in beta])
        beta = beta - mp.lu_solve(jac, f)
    assert mp.norm(cos * beta - mp.matrix([1 / x for x in beta])) < mp.mpf(10) ** -30
    alpha = [mp.mpf(0)] * m.rows
    for a, i in enumerate(ks):
        alpha[i] = beta[a] / norms[a]
    return alpha


# -- the battery -----------------------------------------------------------------------------
def _zero_in_hull(m, ref):
    return _quad(m, ref, ref) < mp.mpf(10) ** -20 * max(m[i, i] for i in range(m.rows))


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_mgda_is_the_exact_min_norm_point(t, p, kind, scale, seed):
    g = _matrix(t, p, kind, scale, seed)
    m = _mp_gram(g)
    alpha = _weights("mgda", g)
    ref = _min_norm_ref(m)
    assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0, abs=1e-12)
    if _zero_in_hull(m, ref):  # the min-norm point is 0: d at rounding level of the largest g
        d = alpha @ g
        assert np.linalg.norm(d) <= 1e-7 * np.linalg.norm(g, axis=1).max()
    else:
        assert _rel_err(m, alpha, ref) <= TOL


@pytest.mark.parametrize("c", [0.5, 0.9])
@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_cagrad_solves_its_primal_problem_exactly(t, p, kind, scale, seed, c):
    g = _matrix(t, p, kind, scale, seed)
    m = _mp_gram(g)
    alpha = _weights("cagrad", g, c=c, rescale=0)
    d, g0 = alpha @ g, g.mean(axis=0)
    # the ball constraint
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + TOL)
    worst = min(_quad(m, [mp.mpf(float(x)) for x in alpha], [mp.mpf(i == j) for i in range(t)])
                for j in range(t))
    scale = float(mp.sqrt(max(m[i, i] for i in range(t)))) * np.linalg.norm(g0)
    found = _cagrad_ref(m, c)
    if found is None:
        # 0 is in the hull and the optimum is 0 (the dual's g_w* = 0): d must attain it
        assert _zero_in_hull(m, _min_norm_ref(m))
        assert float(worst) >= -TOL * scale
        return
    ref, best = found
    # the ball constraint is active, the worst task's improvement is the optimum, and d is the
    # maximiser
    assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=TOL)
    assert abs(float(worst - best)) <= TOL * scale
    assert _rel_err(m, alpha, ref) <= TOL


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_imtl_g_equal_projections_exactly(t, p, kind, scale, seed):
    g = _matrix(t, p, kind, scale, seed)
    alpha = _weights("imtl_g", g)
    keep = np.flatnonzero(np.linalg.norm(g, axis=1) > 0)
    assert (alpha[np.linalg.norm(g, axis=1) == 0] == 0).all()
    if kind == "rank_def":
        # T gradients in T - 1 dimensions: the equal-projection system is singular
        assert np.isfinite(alpha).all()
        return
    m = _mp_gram(g)
    ref = _imtl_g_ref(m, keep)
    assert alpha.sum() == pytest.approx(1.0, rel=1e-9)
    assert _rel_err(m, alpha, ref) <= TOL
    # the paper's condition: equal projections of d on every kept unit gradient
    a = [mp.mpf(float(x)) for x in alpha]
    proj = [mp.fsum(m[i, j] * a[j] for j in range(t)) / mp.sqrt(m[i, i]) for i in keep]
    assert float((max(proj) - min(proj)) / max(abs(x) for x in proj)) <= TOL


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_nash_mtl_bargaining_equations_exactly(t, p, kind, scale, seed):
    g = _matrix(t, p, kind, scale, seed)
    alpha = _weights("nash_mtl", g, max_norm=0.0)
    keep = np.flatnonzero(np.linalg.norm(g, axis=1) > 0)
    assert (alpha[keep] > 0).all() and (alpha[np.linalg.norm(g, axis=1) == 0] == 0).all()
    m = _mp_gram(g)
    ref = _nash_ref(m, keep, alpha)
    err = max(abs(float((mp.mpf(float(alpha[i])) - ref[i]) / ref[i])) for i in keep)
    assert err <= TOL
    # the paper's condition: alpha_i (G alpha)_i = 1 for every kept task
    a = [mp.mpf(float(x)) for x in alpha]
    cond = [a[i] * mp.fsum(m[i, j] * a[j] for j in range(t)) for i in keep]
    assert max(abs(float(x - 1)) for x in cond) <= TOL


def _upgrad_ref(m):
    """UPGrad: the mean over i of the projection of g_i onto {x: g_j . x >= 0 for all j},
    x = g_i + sum_j y_j g_j, y >= 0, by the KKT conditions of each projection."""
    t = m.rows
    tol = mp.mpf(10) ** -30 * max(abs(m[i, i]) for i in range(t))
    alpha = [mp.mpf(0)] * t
    for i in range(t):
        found = None
        for k in range(0, t + 1):
            for s in itertools.combinations(range(t), k):
                y = [mp.mpf(0)] * t
                if k:
                    sol = _solve(mp.matrix([[m[a, b] for b in s] for a in s]),
                                 [-m[a, i] for a in s])
                    if sol is None or any(sol[x] < -tol for x in range(k)):
                        continue
                    for x, a in enumerate(s):
                        y[a] = sol[x]
                y[i] += 1
                if all(mp.fsum(m[j, a] * y[a] for a in range(t)) >= -tol for j in range(t)):
                    found = y
                    break
            if found is not None:
                break
        assert found is not None
        for a in range(t):
            alpha[a] += found[a] / t
    return alpha


UPGRAD_CASES = [pytest.param(*c, id=i) for c, i in zip(CASES, IDS) if c[1] == 10]


@pytest.mark.parametrize("t,p,kind,scale,seed", UPGRAD_CASES)
def test_upgrad_is_the_mean_exact_dual_cone_projection(t, p, kind, scale, seed):
    g = _matrix(t, p, kind, scale, seed)
    m = _mp_gram(g)
    alpha = _weights("upgrad", g)
    ref = _upgrad_ref(m)
    if _zero_in_hull(m, ref):
        assert np.linalg.norm(alpha @ g) <= 1e-7 * np.linalg.norm(g, axis=1).max()
    else:
        assert _rel_err(m, alpha, ref) <= TOL


@pytest.mark.parametrize("kind", ["gauss", "conflict", "zero_row"])
def test_upgrad_beyond_the_exact_solve_meets_the_optimality_conditions(kind):
    # ten tasks: past EXACT_MAX_TASKS, each projection is an NNLS; its KKT conditions, checked
    # in 50 digits, certify it: v >= e_i, (M v)_j >= 0 for all j, (M v)_j = 0 where v_j > e_ij
    g = _matrix(10, 12, kind, "1e6", 7)
    module = importlib.import_module(registry.strategies.get("upgrad").__module__)
    v, converged = module.dual_cone_weights(g @ g.T)
    assert converged
    m = _mp_gram(g)
    norms = [mp.sqrt(m[j, j]) for j in range(10)]
    for i in range(10):
        lam = v[i] - np.eye(10)[i]
        assert lam.min() >= 0
        y = [mp.mpf(float(x)) for x in v[i]]
        for j in range(10):
            mv = mp.fsum(m[j, a] * y[a] for a in range(10)) / (norms[j] * norms[i] or 1)
            assert mv >= -1e-12 and (lam[j] == 0 or abs(mv) <= 1e-12)
    np.testing.assert_allclose(_weights("upgrad", g), v.mean(axis=0), rtol=1e-12)


def test_upgrad_counts_an_nnls_that_hits_its_iteration_limit(monkeypatch):
    module = importlib.import_module(registry.strategies.get("upgrad").__module__)

    def stuck(*args, **kwargs):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(module, "nnls", stuck)
    g = _matrix(10, 12, "conflict", "unit", 3)
    s = _setup("upgrad", 10)
    grads = TaskGradients(torch.as_tensor(g), "shared")
    w = s.combine(torch.ones(10, dtype=torch.float64), grads).weights.numpy()
    # every projection failed: each gradient is left unprojected, i.e. the mean gradient
    assert s.solver_failures == 1
    np.testing.assert_allclose(w, np.full(10, 0.1))


# -- PCGrad, GradVac (fixed task orders) and Aligned-MTL -------------------------------------
_ROWS = {}


def _mp_rows(g):
    """The rows of G as 50-digit vectors (exact copies of the float64 values)."""
    key = g.tobytes()
    if key not in _ROWS:
        _ROWS[key] = [[mp.mpf(float(x)) for x in r] for r in g]
    return _ROWS[key]


def _orders(t, seed):
    """For each task, the other tasks in an order drawn from ``seed`` (not the identity)."""
    rng = np.random.default_rng(seed)
    return [[j for j in rng.permutation(t).tolist() if j != i] for i in range(t)]


def _fixed_orders(s, orders):
    # the random order is an input of the method, not its result: the test fixes it
    s.task_orders = lambda n: [list(o) for o in orders]
    return s


def _step_weights(s, g):
    grads = TaskGradients(torch.as_tensor(g), "shared")
    w = s.combine(torch.ones(len(g), dtype=torch.float64), grads).weights.numpy()
    assert s.solver_failures == 0
    return w


def _setup(name, t, **params):
    s = build_strategy(name, params)
    s.setup([TaskInfo(f"t{i}", REGRESSION) for i in range(t)], seed=0)
    return s


def _pcgrad_ref(g, orders):
    """Yu et al. (2020), Algorithm 1 on the P-length vectors in 50 digits: each g_i has its
    component along g_j removed when they conflict, j in orders[i], one after the other.
    Returns the coefficients of d = sum_i g_i^PC on the rows of G."""
    rows = _mp_rows(g)
    t = len(rows)
    alpha = [mp.mpf(0)] * t
    for i in range(t):
        vec, coef = list(rows[i]), [mp.mpf(int(a == i)) for a in range(t)]
        for j in orders[i]:
            dot, nj2 = mp.fdot(vec, rows[j]), mp.fdot(rows[j], rows[j])
            if dot < 0 and nj2 > 0:
                c = dot / nj2
                vec = [v - c * x for v, x in zip(vec, rows[j])]
                coef[j] -= c
        alpha = [a + c for a, c in zip(alpha, coef)]
    return alpha


def _gradvac_ref(g, orders, target, beta):
    """Wang et al. (2021), one step on the P-length vectors in 50 digits from the targets
    ``target``: g_i' moves along g_j until cos(g_i', g_j) equals the target when below it, and
    the target moves towards the cosine before the move (EMA rate beta). Returns the
    coefficients of d = sum_i g_i' and the new targets."""
    rows = _mp_rows(g)
    t = len(rows)
    alpha = [mp.mpf(0)] * t
    target = [[mp.mpf(float(x)) for x in r] for r in target]
    for i in range(t):
        vec, coef = list(rows[i]), [mp.mpf(int(a == i)) for a in range(t)]
        for j in orders[i]:
            ni, nj = mp.sqrt(mp.fdot(vec, vec)), mp.sqrt(mp.fdot(rows[j], rows[j]))
            if ni == 0 or nj == 0:
                continue
            phi, goal = mp.fdot(vec, rows[j]) / (ni * nj), target[i][j]
            if phi < goal:
                c = ni * (goal * mp.sqrt(1 - phi**2) - phi * mp.sqrt(1 - goal**2)) / (
                    nj * mp.sqrt(1 - goal**2))
                vec = [v + c * x for v, x in zip(vec, rows[j])]
                coef[j] += c
            target[i][j] = (1 - beta) * goal + beta * phi
        alpha = [a + c for a, c in zip(alpha, coef)]
    return alpha, target


def _d_err(g, m, alpha, ref):
    """_rel_err, with the zero update (every gradient projected away) judged absolutely."""
    if _zero_in_hull(m, ref):
        return float(np.linalg.norm(alpha @ g) / np.linalg.norm(g, axis=1).max())
    return _rel_err(m, alpha, ref)


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_pcgrad_is_the_sequential_projection_exactly(t, p, kind, scale, seed):
    g = _matrix(t, p, kind, scale, seed)
    orders = _orders(t, seed)
    alpha = _step_weights(_fixed_orders(_setup("pcgrad", t), orders), g)
    assert _d_err(g, _mp_gram(g), alpha, _pcgrad_ref(g, orders)) <= TOL


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_gradvac_one_step_from_known_targets_exactly(t, p, kind, scale, seed):
    g = _matrix(t, p, kind, scale, seed)
    orders = _orders(t, seed)
    # targets in (-0.6, 0.9): some pairs above their target, some below (both branches)
    target = np.random.default_rng(seed + 1).uniform(-0.6, 0.9, (t, t))
    s = _fixed_orders(_setup("gradvac", t, beta=0.3), orders)
    s.target.copy_(torch.as_tensor(target))
    alpha = _step_weights(s, g)
    ref, ref_target = _gradvac_ref(g, orders, target, mp.mpf("0.3"))
    assert _d_err(g, _mp_gram(g), alpha, ref) <= TOL
    new = s.target.numpy()
    for i in range(t):
        for j in range(t):
            assert abs(new[i, j] - float(ref_target[i][j])) <= TOL


def _aligned_ref(m, scale="min"):
    """Senushkin et al. (2023): alpha = B 1, B = sigma V_R Lambda_R^{-1/2} V_R^T from the
    50-digit eigen-decomposition of M, eigenvalues at or below lambda_max T eps(float32) (the
    strategy's documented rank rule) dropped. None when an eigenvalue lies within 1e-6
    (relative) of that cut, where keeping or dropping it is decided by rounding."""
    t = m.rows
    lam, vec = mp.eigsy(m)
    lam = [lam[k] for k in range(t)]
    cut = max(lam) * t * mp.mpf(float(np.finfo(np.float32).eps))
    if any(abs(x - cut) <= mp.mpf(10) ** -6 * cut for x in lam):
        return None
    kept = sorted((k for k in range(t) if lam[k] > cut), key=lambda k: lam[k])
    sigma2 = {"min": lam[kept[0]], "median": lam[kept[(len(kept) - 1) // 2]],
              "rmse": mp.fsum(lam[k] for k in kept) / len(kept)}[scale]
    return [mp.fsum(mp.sqrt(sigma2 / lam[k]) * vec[a, k] * mp.fsum(vec[b, k] for b in range(t))
                    for k in kept) for a in range(t)]


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_aligned_mtl_is_the_exact_spectral_alignment(t, p, kind, scale, seed):
    g = _matrix(t, p, kind, scale, seed)
    m = _mp_gram(g)
    alpha = _weights("aligned_mtl", g)
    ref = _aligned_ref(m)
    assert ref is not None, "an eigenvalue at the rank cut: the case is ill-posed"
    assert _rel_err(m, alpha, ref) <= TOL


def test_solver_failures_are_recorded_per_epoch_and_noted_in_the_tables():
    from mtl_bench import aggregate as agg
    from mtl_bench.train import RunConfig, train_run

    # ten tasks (above 8 MGDA leaves its exact solve for Frank-Wolfe), one iteration and an
    # unreachable tolerance: every solve stops at max_iter, which the strategy counts
    config = RunConfig(task="gradnorm-toy", strategy="mgda", epochs=2,
                       task_options={"n_tasks": 10},
                       strategy_params={"max_iter": 1, "tol": 1e-300})
    rec = train_run(config)
    assert rec["status"] == "ok" and len(rec["solver_failures"]) == 2
    assert all(n > 0 for n in rec["solver_failures"])
    ok = train_run(RunConfig(strategy="fixed", epochs=2))
    assert ok["solver_failures"] == [0, 0]
    tables = agg.aggregate_records([rec])
    notes = " ".join(tables.meta["settings"][0]["notes"])
    assert "inner solver did not converge" in notes
    assert int(tables["runs"]["solver_failures"].iloc[0]) == sum(rec["solver_failures"])


# -- CR-MOGM, MoDo and SDMGrad ---------------------------------------------------------------
def _mp_proj(v):
    """Euclidean projection onto the simplex in 50 digits (sort, largest feasible support)."""
    u = sorted(v, reverse=True)
    total, theta = mp.mpf(0), None
    for k, x in enumerate(u, start=1):
        total += x
        if x - (total - 1) / k > 0:
            theta = (total - 1) / k
    return [max(x - theta, mp.mpf(0)) for x in v]


def _err_d(m, alpha, ref):
    """||d - d*|| / ||d*||, or / the largest ||g_i|| when d* is at rounding level of it."""
    a = [mp.mpf(float(x)) for x in alpha]
    diff = [a[i] - ref[i] for i in range(len(a))]
    top = max(m[i, i] for i in range(m.rows))
    return float(mp.sqrt(abs(_quad(m, diff, diff)) / max(_quad(m, ref, ref), top * 1e-20)))


def _steps(name, g, n, **params):
    s = build_strategy(name, params)
    s.setup([TaskInfo(f"t{i}", REGRESSION) for i in range(len(g))], seed=0)
    grads = TaskGradients(torch.as_tensor(g), "shared")
    out = [s.combine(torch.ones(len(g), dtype=torch.float64), grads).weights.numpy()
           for _ in range(n)]
    assert s.solver_failures == 0
    return out


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_cr_mogm_averages_exact_min_norm_points(t, p, kind, scale, seed):
    # two steps on one G: lambda_1 = lambda_hat, lambda_2 = (lambda_1 + lambda_hat) / 2; both
    # apply the min-norm point d* (the weights themselves need not be unique)
    g = _matrix(t, p, kind, scale, seed)
    m = _mp_gram(g)
    ref = _min_norm_ref(m)
    for alpha in _steps("cr_mogm", g, 2, alpha=0.5):
        if _zero_in_hull(m, ref):
            assert np.linalg.norm(alpha @ g) <= 1e-7 * np.linalg.norm(g, axis=1).max()
        else:
            assert _rel_err(m, alpha, ref) <= TOL


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_modo_first_step_is_the_exact_projected_step(t, p, kind, scale, seed):
    # lambda_1 = Proj(1/T - gamma (M + rho I) 1/T), with gamma relative to the gradient scale
    # so that the step neither vanishes nor always lands on a vertex
    g = _matrix(t, p, kind, scale, seed)
    m = _mp_gram(g)
    gamma = 2.0 / float(np.linalg.norm(g, axis=1).max() ** 2)
    start = [mp.mpf(1) / t] * t
    ref = _mp_proj([start[i] - mp.mpf(gamma) * (mp.fsum(m[i, j] * start[j] for j in range(t))
                                                 + mp.mpf("0.1") * start[i])
                    for i in range(t)])
    (alpha,) = _steps("modo", g, 1, gamma=gamma, rho=0.1)
    assert _err_d(m, alpha, ref) <= TOL


@pytest.mark.parametrize("t,p,kind,scale,seed", CASES, ids=IDS)
def test_sdmgrad_first_step_is_the_exact_inner_iteration(t, p, kind, scale, seed):
    # lambda 0.3, 20 inner steps, momentum 0.5 (official) in 50 digits, with a step size below
    # 1 / trace of the scaled M so that the inner iteration contracts. (With the official step
    # 5 and conflicting gradients it does not: rounding differences grow ~9x per inner step,
    # and float64 and 50 digits end on different vertices of the simplex.)
    g = _matrix(t, p, kind, scale, seed)
    m = _mp_gram(g)
    s2 = (mp.fsum(mp.sqrt(m[i, i]) for i in range(t)) / t) ** 2
    ms = [[m[i, j] / s2 for j in range(t)] for i in range(t)]
    eta = 0.9 / float(mp.fsum(ms[i][i] for i in range(t)))
    pull = [mp.mpf("0.3") * mp.fsum(ms[i]) / t for i in range(t)]
    w, buf = [mp.mpf(1) / t] * t, [mp.mpf(0)] * t
    for _ in range(20):
        buf = [mp.mpf("0.5") * buf[i] + mp.fsum(ms[i][j] * w[j] for j in range(t)) + pull[i]
               for i in range(t)]
        w = _mp_proj([w[i] - mp.mpf(eta) * buf[i] for i in range(t)])
    ref = [(w[i] + mp.mpf("0.3") / t) / mp.mpf("1.3") for i in range(t)]
    (alpha,) = _steps("sdmgrad", g, 1, inner_lr=eta)
    assert _err_d(m, alpha, ref) <= TOL


def test_nash_mtl_anti_parallel_gradients_with_rounding_stay_finite():
    """Two anti-parallel gradients whose float32 Gram matrix puts the cosine just below -1 (as on
    toy-2d's Pareto front) still give the bargaining solution of cosine -1: 1 / sqrt(ridge) per
    unit norm, finite and positive, instead of the square root of a negative number."""
    from mtl_bench.strategies.nash_mtl import RIDGE, nash_solve

    gram = np.array([[4.0, -2.0 * 3.0 * (1 + 1e-7)], [-2.0 * 3.0 * (1 + 1e-7), 9.0]])
    alpha, ok = nash_solve(gram)
    assert ok and np.isfinite(alpha).all() and (alpha > 0).all()
    # rtol: (1 + ridge) - 1 keeps ridge to ~1e-7 relative in float64
    np.testing.assert_allclose(alpha, [1 / (np.sqrt(RIDGE) * 2.0), 1 / (np.sqrt(RIDGE) * 3.0)],
                               rtol=1e-6)
