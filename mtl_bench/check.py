"""Regression check: the rule that compares new runs with a baseline -> marks per metric.

The rule follows asv: a metric is *worse* only when its change exceeds a factor (default 10%)
AND the change is significant across seeds. Significance is a two-sided Mann-Whitney U test;
when there are too few seeds for that test to ever reach ``p < alpha`` (3 against 3 gives at
best p = 0.1), it falls back to non-overlapping 95% confidence intervals of the mean.

Quality (the test metrics) is compared by default. Speed is compared only when asked for, and
only from the speed stage (``mtl-bench speed``, :mod:`mtl_bench.speed`): the runs folder's
``speed.json`` against the speed section saved in the baseline, never from the per-run timers of
a sweep (runs timed side by side in a loaded sweep are noise). A strategy's step-time ratio to
fixed weights, measured in interleaved rounds in one process, survives a change of machine; it
is worse only when new / baseline exceeds the factor AND the two 95% log-scale intervals do not
overlap. Absolute samples/s gate only on the same machine fingerprint, device and threads.

Runs are matched by (task pair + settings, strategy label, seed); the settings are the task-pair
options and the architecture, as in ``aggregate``. A matched pair whose config (device, threads
and diagnostics cadence aside), record schema or strategy code hash differs is *not
comparable*.

This module owns the rule: factors (with the optional ``check.toml`` next to a baseline, see
:func:`load_factors_file`), significance, marks, the comparison of quality and speed rows, the
verdict and the formatted table. It works on compact runs and speed entries it is handed; the
baseline files, the compact-run format, the run key and what makes two configs differ belong
to :mod:`mtl_bench.baselines`, which never imports this module.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import statistics
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtl_bench.aggregate import REFERENCE_STRATEGY
from mtl_bench.baselines import config_diff, run_key
from mtl_bench.errors import UserError
from mtl_bench.stats import t_interval
from mtl_bench.store import METRIC, STRATEGY, TASK_PAIR

FACTORS_FILE = "check.toml"
DEFAULT_FACTOR = 0.10
DEFAULT_ALPHA = 0.05

WORSE, BETTER, NOT_SIGNIFICANT, NOT_COMPARABLE, NEWLY_FAILING, NEWLY_FIXED = (
    "+", "-", "~", "x", "!", "*")
#: Marks that make ``check`` exit 1.
FAILING_MARKS = (WORSE, NEWLY_FAILING)

QUALITY, SPEED, STATUS = "quality", "speed", "status"
#: Speed rows: a strategy's step time / fixed's in the same round (lower is better), samples/s.
STEP_TIME_RATIO = f"step_time_vs_{REFERENCE_STRATEGY}"
SAMPLES_PER_S = "samples_per_s"
SPEED_ENTRY = "speed"
RUNS_OK = "runs_ok"


# -- factors -------------------------------------------------------------------------------------
def parse_factor(text: str | float) -> float:
    """``0.1``, ``10%`` -> 0.1 (relative change allowed before a row may be marked)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and math.isfinite(value)):
        raise UserError(f"factor should be a non-negative number such as 0.1 or 10%; "
                        f"got '{text}'")
    return value


@dataclass
class Factors:
    """Default factor plus ``(pattern, factor)`` overrides; the last matching pattern wins.

    A pattern (shell-style, ``fnmatch``) is matched against the metric (``mae``), the task and
    metric (``body_mass.mae``) and the full row name (``clsreg/dwa/body_mass.mae``).
    """

    default: float = DEFAULT_FACTOR
    patterns: list[tuple[str, float]] = field(default_factory=list)

    def add(self, spec: str) -> None:
        if "=" not in spec or not spec.split("=", 1)[0].strip():
            raise UserError(f"--factor-for expects PATTERN=FACTOR such as 'ece=0.5'; "
                            f"got '{spec}'")
        pattern, value = spec.split("=", 1)
        self.patterns.append((pattern.strip(), parse_factor(value)))

    def for_row(self, pair: str, strategy: str, metric: str) -> float:
        names = (metric.rsplit(".", 1)[-1], metric, f"{pair}/{strategy}/{metric}")
        factor = self.default
        for pattern, value in self.patterns:
            if any(fnmatch.fnmatchcase(n, pattern) for n in names):
                factor = value
        return factor


def load_factors_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file ``factor = 0.1``, ``alpha = 0.05``, ``[factors] "ece" = 0.5``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"factors file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"factors file '{path}' is not valid TOML: {exc}") from None
    unknown = set(data) - {"factor", "alpha", "factors"}
    if unknown:
        raise UserError(f"factors file '{path}': unknown key(s) {', '.join(sorted(unknown))}; "
                        "expected factor, alpha and a [factors] table")
    out: dict[str, Any] = {"patterns": []}
    if "factor" in data:
        out["factor"] = parse_factor(data["factor"])
    if "alpha" in data:
        out["alpha"] = check_alpha(data["alpha"])
    table = data.get("factors", {})
    if not isinstance(table, dict):
        raise UserError(f"factors file '{path}': [factors] should be a table of "
                        "\"pattern\" = factor")
    out["patterns"] = [(str(k), parse_factor(v)) for k, v in table.items()]
    return out


def check_alpha(value: Any) -> float:
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not 0 < alpha < 1:
        raise UserError(f"alpha should be a number between 0 and 1 such as 0.05; got '{value}'")
    return alpha


# -- statistics ----------------------------------------------------------------------------------
def min_mann_whitney_p(n1: int, n2: int) -> float:
    """Smallest two-sided exact Mann-Whitney p-value two samples of these sizes can give:
    complete separation, 2 of the C(n1+n2, n1) equally likely orderings (no ties)."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def ci95(values: Sequence[float]) -> tuple[float, float] | None:
    """Student-t 95% confidence interval of the mean; None for fewer than two values."""
    if len(values) < 2:
        return None
    ci = t_interval(values, 0.95)
    return ci.low, ci.high


@dataclass
class Evidence:
    p: float | None  # Mann-Whitney p-value, None when the CI fallback decided
    test: str | None  # "mann-whitney", "ci95", or None when undecidable
    significant: bool


def significance(base: Sequence[float], new: Sequence[float],
                 alpha: float = DEFAULT_ALPHA) -> Evidence:
    """Is ``new`` different from ``base`` across seeds?"""
    from scipy.stats import mannwhitneyu

    if not base or not new:
        return Evidence(None, None, False)
    if min_mann_whitney_p(len(base), len(new)) < alpha:
        if len(set(base) | set(new)) == 1:
            return Evidence(1.0, "mann-whitney", False)
        p = float(mannwhitneyu(new, base, alternative="two-sided").pvalue)
        return Evidence(p, "mann-whitney", p < alpha)
    a, b = ci95(base), ci95(new)
    if a is None or b is None:
        return Evidence(None, None, False)  # one seed: no evidence either way
    disjoint = a[1] < b[0] or b[1] < a[0]
    return Evidence(None, "ci95", disjoint)


def badness(base: float, new: float, higher_is_better: bool) -> float:
    """Ratio > 1 when ``new`` is worse than ``base`` (1.5: 50% worse), < 1 when better.

    For positive values: new/base for lower-is-better metrics, base/new for higher-is-better
    (so a 10% factor means the same in both directions, as in asv). Negative pairs swap the
    roles; a sign change or a zero gives inf (worse) or 0 (better): beyond any factor.
    """
    if base == new:
        return 1.0
    if base > 0 and new > 0 or base < 0 and new < 0:
        r = new / base if base > 0 else base / new
        return 1 / r if higher_is_better else r
    worse = new < base if higher_is_better else new > base
    return math.inf if worse else 0.0


# -- comparison ----------------------------------------------------------------------------------
@dataclass
class Row:
    task_pair: str
    strategy: str
    metric: str
    kind: str
    n: int = 0
    baseline: float | str | None = None
    new: float | str | None = None
    ratio: float | None = None
    p: float | None = None
    test: str | None = None
    factor: float | None = None
    mark: str = ""
    note: str = ""


@dataclass
class Options:
    factors: Factors = field(default_factory=Factors)
    alpha: float = DEFAULT_ALPHA
    quality: bool = True
    speed: bool = False  # speed rows come from speed-stage entries, see compare_speed
    ignore_code_hash: bool = False


def _not_comparable(b: dict[str, Any], n: dict[str, Any], ignore_code: bool) -> list[str]:
    reasons = []
    if b["schema"] != n["schema"]:
        reasons.append(f"record schema {b['schema']}->{n['schema']}")
    diff = config_diff(b["config"], n["config"])
    if diff:
        reasons.append("config differs: " + ", ".join(diff))
    if not ignore_code and b["code"].get("strategy") != n["code"].get("strategy"):
        reasons.append("strategy code changed")
    return reasons


def _pick(candidates: list[dict[str, Any]], base: dict[str, Any] | None) -> dict[str, Any]:
    """Among new runs with one key, the one whose config matches the baseline's; else newest."""
    if base is not None:
        for c in candidates:
            if not config_diff(base["config"], c["config"]):
                return c
    return max(candidates, key=lambda c: (c.get("created") or "", c.get("run_id") or ""))


def _seeds(seeds: Iterable[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def _mark(base: list[float], new: list[float], higher: bool, factor: float, alpha: float,
          row: Row) -> None:
    row.n = min(len(base), len(new))
    if not base or not new:
        row.mark, row.note = NOT_COMPARABLE, "no finite values on one side"
        return
    mb, mn = statistics.fmean(base), statistics.fmean(new)
    row.baseline, row.new, row.factor = mb, mn, factor
    row.ratio = mn / mb if mb != 0 and (mb > 0) == (mn > 0) else None
    bad = badness(mb, mn, higher)
    if 1 / (1 + factor) <= bad <= 1 + factor:
        return  # within the factor: no test needed, no mark (asv does the same)
    ev = significance(base, new, alpha)
    row.p, row.test = ev.p, ev.test
    if bad > 1:
        row.mark = WORSE if ev.significant else NOT_SIGNIFICANT
    else:
        row.mark = BETTER if ev.significant else NOT_SIGNIFICANT


def compare(baseline_runs: Sequence[dict[str, Any]], new_runs: Sequence[dict[str, Any]],
            options: Options | None = None) -> list[Row]:
    """Rows per (task pair, strategy, metric) with marks; see the module docstring."""
    opt = options or Options()
    base = {run_key(r): r for r in baseline_runs}
    new_all: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in new_runs:
        new_all.setdefault(run_key(r), []).append(r)
    new = {k: _pick(v, base.get(k)) for k, v in new_all.items()}

    groups = sorted({k[:2] for k in base} | {k[:2] for k in new})
    rows: list[Row] = []
    for pair, strategy in groups:
        b_runs = {k[2]: r for k, r in base.items() if k[:2] == (pair, strategy)}
        n_runs = {k[2]: r for k, r in new.items() if k[:2] == (pair, strategy)}
        status = Row(pair, strategy, RUNS_OK, STATUS)
        rows.append(status)
        if not n_runs or not b_runs:
            status.mark = NOT_COMPARABLE
            status.note = "not in the new runs" if not n_runs else "not in the baseline"
            continue
        common = sorted(set(b_runs) & set(n_runs))
        if not common:
            status.mark = NOT_COMPARABLE
            status.note = (f"no common seeds (baseline {_seeds(b_runs)}, "
                           f"new {_seeds(n_runs)})")
            continue
        reasons: list[str] = []
        for s in common:
            for reason in _not_comparable(b_runs[s], n_runs[s], opt.ignore_code_hash):
                if reason not in reasons:
                    reasons.append(reason)
        b_ok = [s for s in common if b_runs[s]["status"] == "ok"]
        n_ok = [s for s in common if n_runs[s]["status"] == "ok"]
        status.n = len(common)
        status.baseline, status.new = f"{len(b_ok)}/{len(common)}", f"{len(n_ok)}/{len(common)}"
        failing = [s for s in b_ok if s not in n_ok]
        fixed = [s for s in n_ok if s not in b_ok]
        notes = []
        if failing:
            status.mark = NEWLY_FAILING  # a new failure counts whatever else changed
            first = n_runs[failing[0]].get("reason", "")
            notes.append(f"newly failing seed(s) {_seeds(failing)}: {first}")
        elif reasons:
            status.mark = NOT_COMPARABLE
        elif fixed:
            status.mark = NEWLY_FIXED
        if fixed:
            notes.append(f"newly ok seed(s) {_seeds(fixed)}")
        if len(common) < max(len(b_runs), len(n_runs)):
            notes.append(f"seeds compared {_seeds(common)} (baseline {_seeds(b_runs)}, "
                         f"new {_seeds(n_runs)})")
        notes += reasons
        status.note = "; ".join(notes)
        both = [s for s in b_ok if s in n_ok]
        if opt.quality:
            rows += _quality_rows(pair, strategy, both, b_runs, n_runs, reasons, opt)
    return rows


def _quality_rows(pair: str, strategy: str, seeds: list[int], b_runs: dict[int, Any],
                  n_runs: dict[int, Any], reasons: list[str], opt: Options) -> list[Row]:
    rows = []
    metrics: list[str] = []
    for s in seeds:
        for name in [*b_runs[s]["test"], *n_runs[s]["test"]]:
            if name not in metrics:
                metrics.append(name)
    for name in metrics:
        metric = name.rsplit(".", 1)[-1]
        higher = b_runs[seeds[0]]["directions"].get(
            metric, n_runs[seeds[0]]["directions"].get(metric))
        row = Row(pair, strategy, name, QUALITY)
        bv = [v for s in seeds if (v := b_runs[s]["test"].get(name)) is not None]
        nv = [v for s in seeds if (v := n_runs[s]["test"].get(name)) is not None]
        if higher is None:
            row.mark, row.note = NOT_COMPARABLE, f"no direction known for metric '{metric}'"
        else:
            _mark(bv, nv, bool(higher), opt.factors.for_row(pair, strategy, name), opt.alpha,
                  row)
        _set_not_comparable(row, reasons)
        rows.append(row)
    return rows


def _set_not_comparable(row: Row, reasons: list[str]) -> None:
    if reasons:
        row.mark = NOT_COMPARABLE
        row.note = "; ".join(reasons) if not row.note else f"{row.note}; {'; '.join(reasons)}"


def _speed_key(entry: dict[str, Any]) -> tuple[str, str, str, int]:
    return entry["setting"], entry["strategy"], entry["device"], entry["threads"]


def _speed_pair(entry: dict[str, Any]) -> str:
    """The setting, with the device and threads when they are not the default cpu / 1."""
    if (entry["device"], entry["threads"]) == ("cpu", 1):
        return entry["setting"]
    return f"{entry['setting']} @ {entry['device']}/{entry['threads']}t"


def _interval(entry: dict[str, Any], name: str) -> tuple[float, float] | None:
    low, high = entry.get(f"{name}_low"), entry.get(f"{name}_high")
    return None if low is None or high is None else (float(low), float(high))


def _mark_speed(b: dict[str, Any], n: dict[str, Any], name: str, higher: bool, factor: float,
                row: Row) -> None:
    """The speed rule: beyond the factor AND disjoint 95% log-scale intervals."""
    mb, mn = b.get(name), n.get(name)
    row.n = min(b["n_rounds"], n["n_rounds"])
    if mb is None or mn is None or mb <= 0 or mn <= 0:
        row.mark, row.note = NOT_COMPARABLE, "no measurement on one side"
        return
    row.baseline, row.new, row.factor, row.ratio = mb, mn, factor, mn / mb
    ib, in_ = _interval(b, name), _interval(n, name)
    if ib and in_:
        row.note = f"95% intervals {_num(ib[0])}-{_num(ib[1])} -> {_num(in_[0])}-{_num(in_[1])}"
    bad = badness(mb, mn, higher)
    if 1 / (1 + factor) <= bad <= 1 + factor:
        return
    row.test = "ci95"
    disjoint = bool(ib and in_ and (ib[1] < in_[0] or in_[1] < ib[0]))
    row.mark = (WORSE if bad > 1 else BETTER) if disjoint else NOT_SIGNIFICANT


def compare_speed(baseline: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]],
                  options: Options | None = None) -> list[Row]:
    """Rows per (setting, strategy) from speed-stage entries (:mod:`mtl_bench.speed`): the
    step-time ratio to fixed weights, and samples/s, which gates only on the same machine.
    Entries are matched by (setting, strategy, device, threads)."""
    opt = options or Options()
    base = {_speed_key(e): e for e in baseline}
    fresh = {_speed_key(e): e for e in new}
    rows: list[Row] = []
    for key in sorted(set(base) | set(fresh), key=lambda k: (k[0], k[1] != REFERENCE_STRATEGY,
                                                             k[1], k[2], k[3])):
        b, n = base.get(key), fresh.get(key)
        pair = _speed_pair(b or n)
        strategy = key[1]
        if b is None or n is None:
            rows.append(Row(pair, strategy, SPEED_ENTRY, SPEED, mark=NOT_COMPARABLE,
                            note="not in the baseline's speed entries" if b is None else
                            "not in the new speed entries (speed.json)"))
            continue
        reasons = []
        if not opt.ignore_code_hash and b.get("code") != n.get("code"):
            reasons.append("strategy code changed")
        if b.get("batch_size") != n.get("batch_size") or \
                b.get("samples_per_step") != n.get("samples_per_step"):
            reasons.append(f"batch differs: {b.get('samples_per_step')}->"
                           f"{n.get('samples_per_step')} samples")
        if strategy != REFERENCE_STRATEGY:
            row = Row(pair, strategy, STEP_TIME_RATIO, SPEED)
            _mark_speed(b, n, "ratio", False,
                        opt.factors.for_row(pair, strategy, STEP_TIME_RATIO), row)
            ref_changed = not opt.ignore_code_hash and \
                b.get("reference_code") != n.get("reference_code")
            _set_not_comparable(row, reasons + ([f"'{REFERENCE_STRATEGY}' code changed"]
                                                if ref_changed else []))
            rows.append(row)
        row = Row(pair, strategy, SAMPLES_PER_S, SPEED)
        _mark_speed(b, n, "samples_per_s", True,
                    opt.factors.for_row(pair, strategy, SAMPLES_PER_S), row)
        if reasons:
            _set_not_comparable(row, reasons)
        elif b.get("machine") != n.get("machine") or "unknown" in (b.get("machine"),
                                                                    n.get("machine")):
            # absolute speed only means something on the machine the baseline was taken on
            row.mark, row.note = "", "other machine: shown, not gated"
        rows.append(row)
    return rows


# -- verdict and output --------------------------------------------------------------------------
@dataclass
class Verdict:
    exit_code: int
    lines: list[str]
    counts: dict[str, int]


def verdict(rows: Sequence[Row], fail_on_x: float | None = None) -> Verdict:
    """Exit code (0 fine, 1 worse) and the summary lines that say which rows and why."""
    counts = {m: sum(r.mark == m for r in rows) for m in
              (WORSE, BETTER, NOT_SIGNIFICANT, NOT_COMPARABLE, NEWLY_FAILING, NEWLY_FIXED)}
    lines = []
    for r in rows:
        if r.mark in FAILING_MARKS:
            what = f"{r.task_pair} / {r.strategy} / {r.metric}"
            if r.mark == WORSE:
                ev = f"p = {r.p:.3g}" if r.p is not None else "95% CIs do not overlap"
                ratio = f"x{r.ratio:.3g}" if r.ratio is not None else "sign changed"
                unit = "rounds" if r.kind == SPEED else "seeds"
                lines.append(f"worse: {what}: {_num(r.baseline)} -> {_num(r.new)} ({ratio}, "
                             f"beyond {r.factor:.0%}, {ev}, {r.n} {unit})")
            else:
                lines.append(f"newly failing: {r.task_pair} / {r.strategy}: {r.note}")
    n_x = counts[NOT_COMPARABLE]
    x_failed = False
    if n_x:
        top = "; ".join(f"{k} ({v})" for k, v in _x_reasons(rows))
        lines.append(f"NOT COMPARABLE: {n_x} of {len(rows)} rows were not compared: {top}")
        if fail_on_x is not None and n_x / max(len(rows), 1) > fail_on_x:
            x_failed = True
            lines.append(f"failing: more than {fail_on_x:.0%} of the rows are not comparable "
                         "(--fail-on-x); if the change is intended, regenerate the baseline "
                         "(docs/check.md)")
    compared = sum(r.kind != STATUS and r.mark != NOT_COMPARABLE for r in rows)
    failed = counts[WORSE] + counts[NEWLY_FAILING]
    lines.append(f"{compared} rows compared: {counts[WORSE]} worse (+), {counts[BETTER]} better "
                 f"(-), {counts[NOT_SIGNIFICANT]} beyond the factor but not significant (~), "
                 f"{counts[NEWLY_FAILING]} newly failing (!), {counts[NEWLY_FIXED]} newly fixed "
                 f"(*), {n_x} not comparable (x)")
    code = 1 if failed or x_failed else 0
    lines.append("result: " + ("REGRESSION" if failed else "FAILED (not comparable)" if x_failed
                               else "ok, nothing worse"))
    return Verdict(code, lines, counts)


def _x_reasons(rows: Sequence[Row]) -> list[tuple[str, int]]:
    """Why rows are not comparable, most frequent first."""
    reasons: dict[str, int] = {}
    for r in rows:
        if r.mark == NOT_COMPARABLE:
            for reason in (r.note or "not comparable").split("; "):
                if not reason.startswith("95% intervals"):
                    reasons[reason] = reasons.get(reason, 0) + 1
    return sorted(reasons.items(), key=lambda kv: -kv[1])


def nothing_compared(rows: Sequence[Row]) -> str | None:
    """Why no row was compared, or None when some row was (or something newly fails).

    A check that compared nothing must not pass: zero metric rows, or every one of them ``x``.
    """
    if any(r.mark in FAILING_MARKS for r in rows):
        return None
    metric_rows = [r for r in rows if r.kind != STATUS]
    if any(r.mark != NOT_COMPARABLE for r in metric_rows):
        return None
    top = _x_reasons(rows)
    if top:
        why = ", ".join(f"{k} ({v} rows)" for k, v in top[:3])
        return f"{len([r for r in rows if r.mark == NOT_COMPARABLE])} of {len(rows)} rows are " \
               f"not comparable: {why}"
    return "no metric row: no seed finished in both the baseline and the new runs"


def _num(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


COLUMNS = [TASK_PAIR, STRATEGY, METRIC, "n", "baseline", "new", "ratio", "p", "mark", "note"]


def _cells(r: Row) -> list[str]:
    if r.p is not None:
        p = f"{r.p:.3g}"
    elif r.test == "ci95":
        p = "CI"
    else:
        p = ""
    ratio = f"{r.ratio:.3f}" if r.ratio is not None else ""
    return [r.task_pair, r.strategy, r.metric, str(r.n) if r.n else "", _num(r.baseline),
            _num(r.new), ratio, p, r.mark, r.note]


def format_rows(rows: Sequence[Row], fmt: str = "md", extra: dict[str, Any] | None = None
                ) -> str:
    """``md`` (a Markdown table), ``csv`` or ``json`` (rows plus ``extra``)."""
    if fmt == "json":
        return json.dumps({**(extra or {}), "rows": [asdict(r) for r in rows]}, indent=1,
                          allow_nan=False, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*COLUMNS, "kind", "test", "factor"])
        for r in rows:
            cells = _cells(r)
            cells[6] = "" if r.ratio is None else repr(r.ratio)
            cells[7] = "" if r.p is None else repr(r.p)
            w.writerow([*cells, r.kind, r.test or "", "" if r.factor is None else r.factor])
        return buf.getvalue().rstrip("\n")
    table = [COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in table]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def code_notes(baseline_runs: Sequence[dict[str, Any]], new_runs: Sequence[dict[str, Any]]
               ) -> list[str]:
    """Harness or task-pair code that changed since the baseline. Rows stay comparable (such a
    change is what the check is there to catch), but the reader should know."""
    notes = []
    pairs = sorted({r["task_pair"] for r in baseline_runs} & {r["task_pair"] for r in new_runs})
    for part, what in (("harness", "harness (training loop)"), ("task", "task-pair")):
        changed = [p for p in pairs
                   if {r["code"].get(part) for r in baseline_runs if r["task_pair"] == p}
                   != {r["code"].get(part) for r in new_runs if r["task_pair"] == p}]
        if changed:
            notes.append(f"note: {what} code differs from the baseline's for "
                         f"{', '.join(changed)}; differences in these rows may come from it")
    return notes
