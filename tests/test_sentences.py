"""The report's "What this shows" sentences against planted cases, on synthetic run records.

Every case builds run records by hand (no training), so each number is known exactly; the
records go through :func:`mtl_bench.aggregate.aggregate_records` like real ones, and each test
checks the table (the ``best`` column, the bold cells of the leaderboard, the intervals) and the
sentence computed from it. Each planted case comes with a control that must produce the claim
the planted case must not, so a sentence that never says "best" (or "faster") would fail too.
"""

import math
import re

import numpy as np
import pandas as pd
import pytest

from mtl_bench import aggregate as agg
from mtl_bench import display, plots, sentences, stats
from mtl_bench import speed as speed_stage
from mtl_bench.report import Text, build_report

PAIR = "toy"
SEEDS = (0, 1, 2)
BATCH = 16
#: task cls reports accuracy (primary) and ECE; task reg reports MAE (primary)
TASKS = [{"name": "cls", "kind": "classification", "metrics": ["accuracy", "ece"],
          "primary": "accuracy"},
         {"name": "reg", "kind": "regression", "metrics": ["mae"], "primary": "mae"}]
DIRECTIONS = {"accuracy": True, "ece": False, "mae": False}
ACC, MAE, DM, RANK = "cls accuracy ↑", "reg mae ↓", "Δm% ↓", "mean rank ↓"
SPEED_WORDS = re.compile(r"\b(?:fast|slow|quick)(?:er|est)?\b|speed-?up", re.IGNORECASE)


def _record(label, seed, values, *, strategy=None, params=None, single_task=None,
            samples_per_s=1000.0):
    """A schema-2 run record of pair 'toy' whose test (and validation) metrics at the selected
    epoch 2 are ``values[(task, metric)]``; validation curves reach those values at epoch 2."""
    strategy = strategy or label.split("(")[0]
    tasks = [t for t in TASKS if single_task in (None, t["name"])]
    cfg = {"task": PAIR, "task_options": {}, "architecture": "shared", "strategy": strategy,
           "strategy_params": params or {}, "seed": seed, "single_task": single_task,
           "epochs": 2, "batch_size": BATCH, "lr": 0.01, "weight_decay": 0.0,
           "sampling": "proportional", "select": "primary", "device": "cpu", "threads": 1,
           "diag_every": 0}
    cols = [(t["name"], m) for t in tasks for m in t["metrics"]]
    summary = [[2, split, t, m, values[(t, m)]] for split in ("val", "test") for t, m in cols]
    curves = [[epoch, "val", t, m, values[(t, m)]] for epoch in (1, 2) for t, m in cols]
    return {
        "schema": 2, "run_id": f"{label}-{single_task}-{seed}", "config": cfg,
        "task_pair": PAIR, "strategy": "single-task" if single_task else label, "seed": seed,
        "tasks": tasks, "metric_directions": {m: DIRECTIONS[m] for _, m in cols},
        "code": {"strategy": strategy, "task": "task0", "harness": "harness0"},
        "status": "ok", "summary": summary, "selected_epoch": 2,
        "curves": {"columns": ["epoch", "split", "task", "metric", "value"], "rows": curves},
        "throughput": {"samples_per_s": samples_per_s, "steps_per_s": samples_per_s / BATCH,
                       "step_ms": 1000 * BATCH / samples_per_s, "forward_ms": 1.0,
                       "strategy_ms": 0.1, "backward_ms": 1.0, "optimizer_ms": 0.5,
                       "peak_memory_mb": 100.0},
        "provenance": {"device": "cpu", "machine": "box", "threads": 1}}


def _values(acc, mae, ece=0.05):
    return {("cls", "accuracy"): acc, ("cls", "ece"): ece, ("reg", "mae"): mae}


def _single_task(seed, acc, mae, ece=0.05):
    return [_record("single-task", seed, _values(acc, mae, ece), strategy="fixed",
                    single_task=task) for task in ("cls", "reg")]


def _sentences(tables, label=PAIR):
    """Every "What this shows" sentence of a setting that is computed from the tables."""
    s = tables.setting(label)
    ranked = [lb for lb in s["strategies"] if s["roles"][lb] in agg.RANKED_ROLES]
    curves = tables["curves"][tables["curves"][agg.SETTING] == label]
    tp = tables["throughput"][tables["throughput"][agg.SETTING] == label]
    chosen = {t["name"]: t["primary"] for t in s["tasks"]}
    return {"leaderboard": sentences.comparison_line(tables, s),
            "tests": sentences.significance_line(tables, s),
            "speed": sentences.speed_line(tables, s),
            "tuning": sentences.tuning_line(tables, s),
            "curves": sentences.curves_line(curves, s, chosen, ranked),
            "timers": sentences.throughput_line(tp, s)}


def _board(tables, label=PAIR, full=False):
    """(text, bold) of the leaderboard (or the table of every metric), indexed by strategy."""
    d = (display.comparison_display(tables, label) if full
         else display.leaderboard_display(tables, label))
    index = d.text["strategy"].str.replace(r" \((reference|front)\)$", "", regex=True)
    return d.text.set_index(index), d.bold.set_index(index)


def _bold_in(bold, column):
    return sorted(bold.index[bold[column]])


def _row(tables, table, strategy, metric=None):
    df = tables[table]
    df = df[df[agg.SETTING] == PAIR]
    df = df[df["strategy"] == strategy]
    if metric is not None:
        df = df[df["metric"] == metric]
    assert len(df) == 1
    return df.iloc[0]


def _best_claims(texts, label):
    """The clauses that call ``label`` the single best."""
    lb = re.escape(label)
    pattern = re.compile(rf"(?<![\w-]){lb} has the best|the lowest Δm% is {lb}'s")
    return [t for t in texts if pattern.search(t)]


# -- 1. a tie ---------------------------------------------------------------------------------
def _two_leaders(alpha_acc, beta_acc, alpha_mae=(0.9, 0.95, 1.0), beta_mae=(0.9, 0.95, 1.0),
                 alpha_ece=(0.05,) * 3, beta_ece=(0.05,) * 3, metrics=(), seeds=SEEDS):
    """fixed (clearly worse on everything), alpha and beta, single-task runs: per seed accuracy,
    MAE and ECE of alpha and beta."""
    recs = []
    for seed in seeds:
        recs.append(_record("fixed", seed, _values(0.70 + 0.01 * seed, 2.0 + 0.05 * seed, 0.2)))
        recs.append(_record("alpha", seed, _values(alpha_acc[seed], alpha_mae[seed],
                                                   alpha_ece[seed])))
        recs.append(_record("beta", seed, _values(beta_acc[seed], beta_mae[seed],
                                                  beta_ece[seed])))
        recs += _single_task(seed, 0.85, 1.0 + 0.05 * seed)
    return agg.aggregate_records(recs, metrics=metrics)


@pytest.mark.parametrize("seeds", [SEEDS, (0,)], ids=["3 seeds", "1 seed, no intervals"])
def test_an_exact_tie_is_bold_nowhere_and_shared_in_every_sentence(tmp_path, seeds):
    tables = _two_leaders((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), seeds=seeds)
    summ = tables["summary"]
    top = summ[(summ["metric"] == "accuracy") & summ["strategy"].isin(["alpha", "beta"])]
    assert list(top["mean"]) == [1.0, 1.0] and not top["best"].any()
    assert not summ["best"].any()  # MAE is tied as well
    text, bold = _board(tables)
    for column in (ACC, MAE, DM, RANK):
        assert _bold_in(bold, column) == [], column
    assert text.loc["alpha", RANK] == text.loc["beta", RANK] == "1.50"

    said = _sentences(tables)
    everything = list(said.values())
    assert not any("has the best" in t or "clear of the runner-up" in t for t in everything)
    assert not _best_claims(everything, "alpha") and not _best_claims(everything, "beta")
    assert "alpha and beta share the best mean rank (1.50 over cls accuracy, reg mae" \
        in said["leaderboard"]
    assert ("no single strategy has the lowest Δm%: alpha and beta lie within the interval "
            "of the lowest") in said["leaderboard"]
    assert "alpha and beta share the best validation cls accuracy" in said["curves"]

    # the report reads the tables back from their files: the same sentence comes out
    display.write_tables(tables, tmp_path)
    back = agg.Tables.read(tmp_path)
    assert sentences.comparison_line(back, back.setting(PAIR)) == said["leaderboard"]
    assert _bold_in(_board(back)[1], ACC) == []


def test_a_near_tie_inside_the_interval_is_no_best_even_in_the_mean_rank():
    alpha_acc, beta_acc = (0.90, 0.91, 0.92), (0.905, 0.895, 0.925)
    tables = _two_leaders(alpha_acc, beta_acc)
    alpha = _row(tables, "summary", "alpha", "accuracy")
    beta = _row(tables, "summary", "beta", "accuracy")
    # planted: beta trails alpha by a difference inside alpha's interval
    assert alpha["ci_low"] < beta["mean"] < alpha["mean"] < alpha["ci_high"]
    assert not alpha["best"] and not beta["best"]
    # ... which still orders the ranks of the means: the mean ranks differ
    assert _row(tables, "ranks", "alpha")["mean_rank"] == 1.25
    assert _row(tables, "ranks", "beta")["mean_rank"] == 1.75
    dm_a, dm_b = _row(tables, "delta_m", "alpha"), _row(tables, "delta_m", "beta")
    assert dm_a["ci_low"] <= dm_b["mean"] <= dm_a["ci_high"]

    text, bold = _board(tables)
    for column in (ACC, MAE, DM, RANK):
        assert _bold_in(bold, column) == [], column
    said = _sentences(tables)
    everything = list(said.values())
    assert not _best_claims(everything, "alpha") and not _best_claims(everything, "beta")
    assert not any("clear of the runner-up" in t for t in everything)
    assert ("no single strategy has the best mean rank: alpha has the lowest (1.25 over cls "
            "accuracy, reg mae; 3 strategies ranked), but beta trails only by differences "
            "inside the intervals") in said["leaderboard"]
    assert "no single strategy has the lowest Δm%: alpha and beta lie within" \
        in said["leaderboard"]
    assert "alpha and beta share the best validation cls accuracy" in said["curves"]


def test_a_clear_winner_is_bold_and_called_best():
    tables = _two_leaders((0.95, 0.96, 0.97), (0.80, 0.81, 0.82))
    alpha = _row(tables, "summary", "alpha", "accuracy")
    assert alpha["best"] and alpha["ci_low"] > _row(tables, "summary", "beta", "accuracy")["mean"]
    text, bold = _board(tables)
    assert _bold_in(bold, ACC) == ["alpha"]
    assert _bold_in(bold, RANK) == ["alpha"] and text.loc["alpha", RANK] == "1.25"
    assert _bold_in(bold, DM) == ["alpha"]
    assert _bold_in(bold, MAE) == []  # alpha and beta have the same MAE
    said = _sentences(tables)
    assert said["leaderboard"].startswith(
        "alpha has the best mean rank (1.25 over cls accuracy, reg mae; 3 strategies ranked)")
    assert "the lowest Δm% is alpha's (" in said["leaderboard"]
    assert "clear of the runner-up" in said["leaderboard"]
    assert "alpha has the best validation cls accuracy" in said["curves"]
    claims = _best_claims(list(said.values()), "alpha")
    assert claims == [said["leaderboard"], said["curves"]]
    assert not _best_claims(list(said.values()), "beta")


@pytest.mark.parametrize("beta_mae,alpha_best", [
    ((0.85, 0.95, 1.05), True),    # beta ahead on MAE inside its interval: alpha's lead is clear
    ((0.50, 0.51, 0.52), False),   # beta clearly ahead on MAE: only ECE noise puts alpha ahead
])
def test_a_mean_rank_lead_is_best_only_when_it_does_not_rest_on_noise(beta_mae, alpha_best):
    # summary metrics accuracy, ECE and MAE: alpha clearly ahead on accuracy, ahead on ECE by
    # less than its interval; beta ahead on MAE (by less than its interval, or clearly)
    tables = _two_leaders((0.95, 0.96, 0.97), (0.80, 0.81, 0.82), alpha_mae=(0.9, 1.0, 1.1),
                          beta_mae=beta_mae, alpha_ece=(0.04, 0.05, 0.06),
                          beta_ece=(0.05, 0.045, 0.062), metrics=("accuracy", "ece", "mae"))
    ece_a, ece_b = (_row(tables, "summary", lb, "ece") for lb in ("alpha", "beta"))
    assert ece_a["mean"] < ece_b["mean"] <= ece_a["ci_high"]
    mae_b = _row(tables, "summary", "beta", "mae")
    assert bool(_row(tables, "summary", "alpha", "mae")["mean"] > mae_b["ci_high"]) \
        == (not alpha_best)
    # the same mean ranks either way
    assert _row(tables, "ranks", "alpha")["mean_rank"] == pytest.approx(4 / 3)
    assert _row(tables, "ranks", "beta")["mean_rank"] == pytest.approx(5 / 3)
    line = _sentences(tables)["leaderboard"]
    assert _bold_in(_board(tables)[1], RANK) == (["alpha"] if alpha_best else [])
    assert ("alpha has the best mean rank (1.33 over cls accuracy, cls ece, reg mae"
            in line) == alpha_best
    assert ("no single strategy has the best mean rank: alpha has the lowest (1.33" in line
            and "beta trails only by differences inside the intervals" in line) \
        == (not alpha_best)


# -- 2. a speed difference inside noise --------------------------------------------------------
#: the sweep's own timers: wildly different, and in the opposite order of the speed stage
SWEEP_SPS = {"fixed": 100.0, "wobbly": 50_000.0, "heavy": 90_000.0, "light": 1.0}


def _speed_records():
    return [_record(lb, seed, _values(0.8, 1.0), samples_per_s=sps * (1 + 0.3 * seed))
            for seed in SEEDS for lb, sps in SWEEP_SPS.items()]


def _entry(strategy, ratio, low, high, *, pair=PAIR, batch=BATCH):
    e = dict.fromkeys(speed_stage.COLUMNS)
    e.update(setting=pair, task_pair=pair, options={}, architecture="shared",
             strategy=strategy, batch_size=batch, samples_per_step=batch, device="cpu",
             threads=1, n_rounds=9, rounds=9, steps=20, step_ms=10.0 * ratio,
             samples_per_s=1600 / ratio, samples_per_s_low=1500 / ratio,
             samples_per_s_high=1700 / ratio, ratio=ratio, ratio_low=low, ratio_high=high,
             verdict=(speed_stage.IS_REFERENCE if strategy == "fixed"
                      else speed_stage.ratio_verdict(low, high)))
    return e


def _clauses(line):
    """speed_line's clauses by kind -> the strategies each names."""
    out = {}
    for clause in line.rstrip(".").split("; "):
        kind = ("slower" if clause.startswith("slower") else "faster"
                if clause.startswith("faster") else "unclear")
        listed = clause.split(": ", 1)[1]
        out[kind] = sorted(re.sub(r" \(.*?\)", "", x) for x in re.split(r", | and ", listed))
    return out


def test_a_speed_difference_inside_noise_is_not_called_faster():
    speed = pd.DataFrame([
        _entry("fixed", 1.0, 1.0, 1.0),
        _entry("wobbly", 0.8, 0.6, 1.1),  # planted: 20% less step time, interval holds 1
        _entry("heavy", 1.3, 1.2, 1.5),   # control: interval above 1
        _entry("light", 0.7, 0.6, 0.8),   # control: interval below 1
        # measurements of other settings must not be matched to this one
        _entry("wobbly", 0.5, 0.4, 0.6, batch=4 * BATCH),
        _entry("heavy", 0.5, 0.4, 0.6, pair="other"),
    ], columns=speed_stage.COLUMNS)
    tables = agg.aggregate_records(_speed_records(), speed=speed)
    sp = tables["speed"].set_index("strategy")
    assert sorted(sp.index) == ["fixed", "heavy", "light", "wobbly"]  # the others not matched
    assert (sp.loc["wobbly", "ratio_low"], sp.loc["wobbly", "ratio_high"]) == (0.6, 1.1)
    shown = display.speed_display(tables, PAIR).text.set_index("strategy")
    assert shown.loc["wobbly", "step time / fixed [95% CI]"] == "0.80× [0.60, 1.10]"
    assert shown.loc["wobbly", "verdict"] == speed_stage.NO_CLEAR
    assert not display.speed_display(tables, PAIR).bold.to_numpy().any()

    line = _sentences(tables)["speed"]
    said = _clauses(line)
    assert said == {"slower": ["heavy"], "faster": ["light"], "unclear": ["wobbly"]}
    assert "heavy (1.30×)" in line and "light (0.70×)" in line
    # fixed is the reference: not "no clear difference" from itself
    assert not re.search(r"\bfixed\b", line.split(": ", 1)[1].replace("fixed weights", ""))
    # nothing else speaks of speed: the sweep's timers (wobbly at 500x fixed) are never ranked
    others = [t for k, t in _sentences(tables).items() if k != "speed"]
    assert not any(SPEED_WORDS.search(t) for t in others)


def test_the_sweep_timers_never_rank_strategies(tmp_path):
    tables = agg.aggregate_records(_speed_records())  # no speed stage
    tp = tables["throughput"].set_index("strategy")
    assert tp["samples_per_s"].max() / tp["samples_per_s"].min() > 1e4  # planted
    assert tables["speed"].empty
    said = _sentences(tables)
    assert said["speed"] == "no speed measurement for this setting (run `mtl-bench speed`)."
    assert not any(SPEED_WORDS.search(t) for k, t in said.items() if k != "speed")
    assert not display.throughput_display(tables, PAIR).bold.to_numpy().any()
    # the whole report: no "What this shows" line ranks the sweep's timers
    rep = build_report(tables, tmp_path)
    lines = [b.text for b in rep.blocks
             if isinstance(b, Text) and b.text.startswith("What this shows")]
    assert any("wall times of runs that shared the machine" in t for t in lines)
    assert not any(SPEED_WORDS.search(t.replace("mtl-bench speed", "")) for t in lines), lines


# -- 3. a Delta_m driven by a non-primary metric -----------------------------------------------
def _calibration_records(ece_factor):
    """Single-task runs; fixed (worse on the primary metrics); calib equal to single-task on
    the primary metrics with ``ece_factor`` times the single-task ECE."""
    recs = []
    for seed in SEEDS:
        acc, mae, ece = 0.80 + 0.01 * seed, 1.0 + 0.1 * seed, 0.02 + 0.002 * seed
        recs += _single_task(seed, acc, mae, ece)
        recs.append(_record("fixed", seed, _values(acc - 0.05, mae * 1.1, ece)))
        recs.append(_record("calib", seed, _values(acc, mae, ece * ece_factor)))
    return recs


def test_a_delta_m_driven_by_a_non_primary_metric_names_that_metric():
    tables = agg.aggregate_records(_calibration_records(5.0))
    dm = _row(tables, "delta_m", "calib")
    assert dm["mean"] == pytest.approx(0.0, abs=1e-9) and dm["n"] == 3  # primary metrics only
    ece = _row(tables, "delta_m_terms", "calib", "ece")
    assert ece["term"] == pytest.approx(400.0) and not ece["in_delta_m"]
    text, _ = _board(tables)
    assert [c for c in text.columns if c[-1] in "↑↓"] == [ACC, MAE, DM, RANK]
    assert float(text.loc["calib", DM].split()[0]) == 0.0
    line = _sentences(tables)["leaderboard"]
    assert ("Δm% counts cls accuracy, reg mae only; cls ece alone would move calib's by "
            "+400.0 points") in line

    # the same runs with ECE among the summary metrics: Δm% moves by half of the ECE term
    tables = agg.aggregate_records(_calibration_records(5.0), metrics=("ece",))
    assert _row(tables, "delta_m", "calib")["mean"] == pytest.approx(200.0)
    assert _row(tables, "delta_m_terms", "calib", "ece")["in_delta_m"]
    text, _ = _board(tables)
    assert "cls ece ↓" in text.columns and ACC not in text.columns
    line = _sentences(tables)["leaderboard"]
    assert "the lowest Δm% is fixed's" in line
    assert "cls ece alone" not in line and "primary metrics only" not in line
    # accuracy is now the metric left out, and it would move fixed's Δm% (+5.0) by +6.2
    assert "Δm% counts cls ece, reg mae only; cls accuracy alone would move fixed's by +6.2" \
        in line


def test_a_small_non_primary_term_is_not_named():
    tables = agg.aggregate_records(_calibration_records(1.02))
    assert _row(tables, "delta_m_terms", "calib", "ece")["term"] == pytest.approx(2.0)
    assert "alone would move" not in _sentences(tables)["leaderboard"]


# -- 4. a dominated fixed-sweep point ----------------------------------------------------------
#: w (the weight of cls) -> (cls accuracy, reg mae); w = 0.6 is dominated by w = 0.5
SWEEP = {0.25: (0.70, 1.0), 0.5: (0.80, 1.2), 0.6: (0.75, 1.3), 0.75: (0.90, 1.5)}
METHODS = {"fixed": (0.80, 1.2),
           "inside": (0.78, 1.25),     # worse than w = 0.5 on both
           "shadow": (0.74, 1.35),     # worse than the dominated w = 0.6 (and so w = 0.5)
           "beyond": (0.85, 1.1),      # better than w = 0.5 on both
           "onfront": (0.70, 1.0)}     # equal to w = 0.25: not beaten


def _sweep_label(w):
    return f"fixed(weights={w:g}/{1 - w:g})"


def _pareto_records(sweep=SWEEP):
    recs = []
    for seed in SEEDS:
        for w, (acc, mae) in sweep.items():
            recs.append(_record(_sweep_label(w), seed, _values(acc, mae), strategy="fixed",
                                params={"weights": [w, 1 - w]}))
        recs += [_record(lb, seed, _values(acc, mae)) for lb, (acc, mae) in METHODS.items()]
    return recs


def _pareto_lists(line):
    m = re.search(r"better on one\): (.*); on or beyond the front: (.*)\.$", line)
    assert m, line
    return [sorted(re.split(r", | and ", g)) if g != "none" else [] for g in m.groups()]


def test_a_dominated_sweep_point_and_methods_inside_and_beyond_the_front():
    tables = agg.aggregate_records(_pareto_records())
    s = tables.setting(PAIR)
    assert s["reference"] == "fixed"
    assert {lb for lb, r in s["roles"].items() if r == "front"} == {
        _sweep_label(w) for w in SWEEP}
    assert s["front_weights"][_sweep_label(0.6)] == pytest.approx(0.6)
    pts = agg.pareto_points(tables, PAIR, [("cls", "accuracy"), ("reg", "mae")])
    pts = pts.set_index("strategy")
    assert pts.loc[_sweep_label(0.6), "dominated_by"] == [_sweep_label(0.5)]
    assert pts.loc["inside", "dominated_by"] == [_sweep_label(0.5)]
    assert sorted(pts.loc["shadow", "dominated_by"]) == [_sweep_label(0.5), _sweep_label(0.6)]
    assert pts.loc["beyond", "dominated_by"] == [] and pts.loc["onfront", "dominated_by"] == []

    sweep = pts[pts["on_front"]]
    keep = plots.nondominated(sweep[["a", "b"]].to_numpy(), True, False)
    assert sorted(sweep.index[keep]) == sorted(_sweep_label(w) for w in (0.25, 0.5, 0.75))

    line = sentences.pareto_line(pts.reset_index(), "cls", "accuracy", "reg", "mae")
    assert line.startswith("comparing means of cls accuracy and reg mae")
    inside, beyond = _pareto_lists(line)
    assert inside == ["inside", "shadow"]
    assert beyond == ["beyond", "fixed", "onfront"]
    assert "weights=" not in line  # sweep points are the front, not methods placed against it


def test_without_a_sweep_there_is_no_front_to_be_inside():
    tables = agg.aggregate_records(_pareto_records({0.6: SWEEP[0.6]}))  # one weighted run
    assert "front" not in tables.setting(PAIR)["roles"].values()
    pts = agg.pareto_points(tables, PAIR, [("cls", "accuracy"), ("reg", "mae")])
    assert not pts["on_front"].any()
    line = sentences.pareto_line(pts, "cls", "accuracy", "reg", "mae")
    assert line.startswith("no fixed-weight sweep in this setting")


# -- 5. an interval near a bound ---------------------------------------------------------------
NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def _numbers(cell):
    return [float(x.replace(",", "")) for x in NUMBER.findall(cell.split(" (n=")[0])]


@pytest.mark.parametrize("ci", ["t", "bootstrap"])
def test_an_interval_near_a_bound_stays_inside_the_range(ci):
    acc, ece, mae = (1.0, 1.0, 0.96), (0.0, 0.0, 0.04), (0.001, 0.002, 0.05)
    # planted: the plain t-interval leaves [0, 1] for accuracy and [0, inf) for MAE
    assert stats.t_interval(acc).high > 1 and stats.t_interval(mae).low < 0
    recs = []
    for seed in SEEDS:
        recs.append(_record("fixed", seed, _values(0.5, 1.0, 0.2)))
        recs.append(_record("edge", seed, _values(acc[seed], mae[seed], ece[seed])))
    tables = agg.aggregate_records(recs, ci=ci)
    for metric, values, (low_b, high_b) in (("accuracy", acc, (0, 1)), ("ece", ece, (0, 1)),
                                            ("mae", mae, (0, math.inf))):
        row = _row(tables, "summary", "edge", metric)
        assert row["mean"] == pytest.approx(np.mean(values))
        assert low_b <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= high_b, metric
        assert row["ci_high"] > row["ci_low"]  # an interval, not a point

    text, bold = _board(tables, full=True)
    for column, (low_b, high_b) in ((ACC, (0, 1)), ("cls ece ↓", (0, 1)), (MAE, (0, math.inf))):
        cell = text.loc["edge", column]
        numbers = _numbers(cell)
        assert len(numbers) == 3 and "±" not in cell, cell  # mean [low, high]: asymmetric
        assert all(low_b <= x <= high_b for x in numbers), cell
        assert numbers[1] <= numbers[0] <= numbers[2], cell
    # the bold agrees with the table's `best` column (computed on those intervals)
    summ = tables["summary"]
    for column, metric in ((ACC, "accuracy"), (MAE, "mae")):
        best = summ[(summ["metric"] == metric) & summ["best"]]["strategy"].tolist()
        assert _bold_in(bold, column) == best
    # the curves' bands follow the same rules (their best is what curves_line speaks of)
    curves = tables["curves"][tables["curves"]["strategy"] == "edge"]
    band = curves[curves["metric"] == "accuracy"]
    assert len(band) == 2 and (band["ci_low"] >= 0).all() and (band["ci_high"] <= 1).all()
    assert (curves.loc[curves["metric"] == "mae", "ci_low"] >= 0).all()
