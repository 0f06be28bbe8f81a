"""The two-objective toy of CAGrad, Nash-MTL and FAMO: where each strategy's trajectory ends.

Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021 (Figure 1);
Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (the toy figure); Liu et
al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023 (Figure 1). The papers run Adam
(learning rate 1e-3) on a 2-vector x from a few starts and draw each method's path over the
loss landscape: plain equal weights gets stuck from one of the five starts, MGDA and PCGrad stop
near an end of the Pareto front, Nash-MTL and FAMO reach balanced points near its middle.

Grid: equal weights, MGDA, PCGrad, CAGrad, Nash-MTL and FAMO on the task pair ``toy-2d`` (its
default, scaled variant), one run per start: run seed k starts at ``STARTS[k]`` (the five
starts of Nash-MTL and FAMO, then CAGrad's (-8.5, -5)). The records' per-epoch curves hold
the point x (metrics ``x1``, ``x2``), its distance to the front and the position of the
nearest front point; the verdicts below read the last epoch, by the thresholds stated here.

Departure: the grid runs 70 epochs of 500 steps (35,000 steps, Nash-MTL's count) rather than the
pair's longer default, so that it fits 10 minutes on 2 CPU cores; the slowest trajectories
(PCGrad and CAGrad from (9, 9)) have not arrived by then, and the page marks every run that is
still moving at the end (``late_move``), so that no verdict reads a slow run as a stuck one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from mtl_bench.display import Display, markdown_table
from mtl_bench.reproductions.common import (
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Context,
    Finding,
    Reproduction,
    combine_verdicts,
    seeds_text,
    text_display,
    verdict_all_seeds,
)
from mtl_bench.store import EPOCH, METRIC, SPLIT, TASK, VALUE, curves_frame
from mtl_bench.strategy import label
from mtl_bench.sweep import SweepSpec, expand
from mtl_bench.tasks.toy_2d import STARTS, front_curve, losses_numpy
from mtl_bench.train import RunConfig

#: FAMO without logit decay (gamma = 0), as in FAMO's own toy runs.
FAMO_PARAMS: dict[str, Any] = {"gamma": 0.0}
STRATEGY_GRID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fixed", {}), ("mgda", {}), ("pcgrad", {}), ("cagrad", {}), ("nash_mtl", {}),
    ("famo", FAMO_PARAMS))
STRATEGIES = tuple(label(n, p) for n, p in STRATEGY_GRID)
FIXED, MGDA, PCGRAD, CAGRAD, NASH_MTL, FAMO = STRATEGIES
NAMES = {FIXED: "equal weights", MGDA: "MGDA", PCGRAD: "PCGrad", CAGRAD: "CAGrad",
         NASH_MTL: "Nash-MTL", FAMO: "FAMO"}
#: Indices into ``STARTS`` of the five starts in Nash-MTL's and FAMO's figures.
PUBLISHED = (0, 1, 2, 3, 4)
#: A run "reaches the front" when its final distance to the front is below this.
REACH_TOL = 0.05
#: A front point is "near an end" when its position (0: task 1's optimum, 1: task 2's) is
#: within this of 0 or 1 (inclusive).
EXTREME = 0.15
#: A front point is "balanced" when its position lies in this interval (inclusive).
BALANCED = (0.25, 0.75)
#: An off-front run "is still moving" when x moved more than this over the last LATE share of
#: its epochs (it may reach the front given more steps); otherwise it is stuck.
STILL_MOVING = 0.05
LATE = 0.1
#: The split whose per-epoch metrics the analysis reads (every split holds the same point).
SPLIT_READ = "test"
PANEL_SIZE = (4.6, 4.0)


@dataclass
class ToyEnd:
    """One run: its path and where it ended (NaN for a failed run)."""

    strategy: str
    start: int
    ok: bool
    path: np.ndarray  # (epochs + 1, 2): x after each epoch, epoch 0 = the start
    losses: tuple[float, float]  # (L1, L2) at the final x, unshifted
    distance: float  # final distance to the front
    position: float  # final position of the nearest front point, 0..1
    reason: str = ""

    @property
    def late_move(self) -> float:
        """Distance between x at the end and x ``LATE`` of the epochs earlier (at least one
        epoch; 0 for a run of no epochs, NaN for a failed run)."""
        if not self.ok:
            return float("nan")
        epochs = len(self.path) - 1
        back = min(max(1, round(LATE * epochs)), epochs)
        return float(np.linalg.norm(self.path[-1] - self.path[epochs - back]))

    @property
    def stuck(self) -> bool:
        """Off the front and no longer moving."""
        return self.ok and not self.reaches and self.late_move <= STILL_MOVING

    @property
    def reaches(self) -> bool:
        return self.ok and self.distance < REACH_TOL

    @property
    def extreme(self) -> bool:
        return self.reaches and (self.position <= EXTREME or self.position >= 1 - EXTREME)

    @property
    def balanced(self) -> bool:
        return self.reaches and BALANCED[0] <= self.position <= BALANCED[1]

    @property
    def where(self) -> str:
        if not self.ok:
            return "failed"
        if not self.reaches:
            return "off the front, stuck" if self.stuck else "off the front, still moving"
        return "near an end" if self.extreme else "balanced" if self.balanced else "in between"


def start_of(record: dict[str, Any]) -> int:
    """The start index of a record: from its data, else its options, else seed mod 6."""
    data = record.get("data") or {}
    if "start_index" in data:
        return int(data["start_index"])
    opts = (record.get("config") or {}).get("task_options") or {}
    if opts.get("start") is not None:
        return int(opts["start"])
    return int(record.get("seed", 0)) % len(STARTS)


def toy_end(record: dict[str, Any]) -> ToyEnd:
    """What the analysis needs from one record (task1's read-out columns hold x for both)."""
    strategy, start = str(record.get("strategy", "?")), start_of(record)
    if record.get("status") != "ok":
        return ToyEnd(strategy, start, False, np.asarray([STARTS[start]], dtype=float),
                      (np.nan, np.nan), np.nan, np.nan, str(record.get("reason", "")))
    curves = curves_frame([record])
    c = curves[curves[SPLIT] == SPLIT_READ]
    table = c.pivot_table(index=EPOCH, columns=[TASK, METRIC], values=VALUE).sort_index()
    first = record["tasks"][0]["name"]
    path = table[[(first, "x1"), (first, "x2")]].to_numpy(dtype=float)
    last = table.iloc[-1]
    # the papers' losses at the final x (the pair trains them shifted to be positive)
    l1, l2 = losses_numpy(path[-1, 0], path[-1, 1], _variant(record))
    return ToyEnd(strategy, start, True, path, (float(l1), float(l2)),
                  float(last[(first, "pareto_distance")]), float(last[(first, "front_position")]))


def _variant(record: dict[str, Any]) -> str:
    return str((record.get("data") or {}).get("variant", "scaled"))


def _start_text(k: int) -> str:
    return f"({STARTS[k][0]:g}, {STARTS[k][1]:g})"


def _moving_on_front(e: ToyEnd) -> bool:
    """On the front but still sliding along it: its final position is not settled."""
    return e.reaches and e.late_move > STILL_MOVING


def _run_text(e: ToyEnd) -> str:
    if not e.ok:
        return f"{_start_text(e.start)}: failed"
    return (f"{_start_text(e.start)}: d = {e.distance:.3g}, p = {e.position:.2f}"
            + (f", still moving ({e.late_move:.2g})" if _moving_on_front(e) else ""))


def _runs(ends: Sequence[ToyEnd], strategy: str, starts: Sequence[int]) -> list[ToyEnd]:
    return sorted((e for e in ends if e.strategy == strategy and e.start in starts),
                  key=lambda e: e.start)


# -- verdict rules (pure functions of the runs, tested on planted cases) ----------------------
def equal_weights_finding(ends: Sequence[ToyEnd]) -> Finding:
    """Reproduced when at least one finished equal-weights run from the five published starts
    ends off the front (distance >= REACH_TOL) and stuck (moved at most STILL_MOVING over the
    last LATE share of its epochs); partly when runs end off the front but all are still
    moving; not reproduced when every finished run reaches the front (or none finished)."""
    runs = _runs(ends, FIXED, PUBLISHED)
    done = [e for e in runs if e.ok]
    off = [e for e in done if not e.reaches]
    stuck = [e for e in off if e.stuck]
    verdict = REPRODUCED if stuck else PARTLY if off else NOT_REPRODUCED
    failed = len(runs) - len(done)
    moves = "; ".join(f"{_start_text(e.start)} moved {e.late_move:.3g}" for e in off)
    return Finding(
        "Equal weights gets stuck from at least one start",
        "with Adam on the plain sum of the losses, one of the five starts does not reach the "
        "Pareto front (FAMO, Figure 1: 'fails in 1 out of 5 runs'; Nash-MTL's toy figure "
        "shows the same failure).",
        f"{len(off)} of {len(done)} finished runs end at distance >= {REACH_TOL:g} from the "
        f"front (" + "; ".join(_run_text(e) for e in runs) + f"), {len(stuck)} of them stuck"
        + (f" (over the last {LATE:.0%} of the steps: {moves})" if off else "") + "."
        + (f" {failed} run(s) failed and are not counted." if failed else "")
        + f" Rule: reproduced if at least one run ends at distance >= {REACH_TOL:g} and moved "
        f"at most {STILL_MOVING:g} over the last {LATE:.0%} of its steps; partly if runs end "
        "off the front but are all still moving.",
        verdict)


def per_run_finding(ends: Sequence[ToyEnd], strategies: Sequence[str], prop: str, title: str,
                    claim: str, rule: str) -> Finding:
    """Per strategy, the share of the published starts in the grid whose run has property
    ``prop`` (``extreme`` or ``balanced``; a failed or missing run counts against it); each
    strategy's verdict is
    reproduced when all have it, partly when some do, and the finding combines them."""
    verdicts, bits = [], []
    starts = sorted({e.start for e in ends} & set(PUBLISHED))  # the grid's published starts
    for s in strategies:
        runs = _runs(ends, s, starts)
        k, n = sum(bool(getattr(e, prop)) for e in runs), len(starts)
        verdicts.append(verdict_all_seeds(k, n))
        bits.append(f"{NAMES[s]} {k} of {n} (" + "; ".join(_run_text(e) for e in runs)
                    + (f"; {n - len(runs)} start(s) without a record" if len(runs) < n else "")
                    + ")")
    return Finding(title, claim, "; ".join(bits) + ". " + rule, combine_verdicts(verdicts))


def extremes_finding(ends: Sequence[ToyEnd]) -> Finding:
    return per_run_finding(
        ends, (MGDA, PCGRAD), "extreme",
        "MGDA and PCGrad stop near an end of the front",
        "MGDA and PCGrad reach the front but stop near one of its ends, far from a balanced "
        "trade-off (Nash-MTL's and FAMO's toy figures).",
        f"Rule: a run ends near an end when it reaches the front (distance < {REACH_TOL:g}) at "
        f"position p <= {EXTREME:g} or p >= {1 - EXTREME:g}; reproduced if every run of both "
        "strategies does, partly if some do.")


def balanced_finding(ends: Sequence[ToyEnd]) -> Finding:
    return per_run_finding(
        ends, (NASH_MTL, FAMO), "balanced",
        "Nash-MTL and FAMO reach balanced points",
        "Nash-MTL and FAMO reach the front from every start at balanced trade-offs, away from "
        "its ends (Nash-MTL's toy figure; FAMO, Figure 1).",
        f"Rule: a run is balanced when it reaches the front (distance < {REACH_TOL:g}) at "
        f"position {BALANCED[0]:g} <= p <= {BALANCED[1]:g}; reproduced if every run of both "
        "strategies is, partly if some are.")


def cagrad_finding(ends: Sequence[ToyEnd]) -> Finding:
    runs = sorted((e for e in ends if e.strategy == CAGRAD), key=lambda e: e.start)
    k = sum(e.reaches for e in runs)
    return Finding(
        "CAGrad for context", "",
        f"CAGrad (c = its default) reaches the front from {k} of {len(runs)} starts ("
        + "; ".join(_run_text(e) for e in runs) + "). CAGrad's own figure uses the unscaled "
        "losses; this grid runs Nash-MTL's and FAMO's scaled variant, so no verdict.", None)


def findings(ends: Sequence[ToyEnd]) -> list[Finding]:
    return [equal_weights_finding(ends), extremes_finding(ends), balanced_finding(ends),
            cagrad_finding(ends)]


# -- the section -------------------------------------------------------------------------------
class Toy2D(Reproduction):
    name = "toy-2d"
    title = ("The two-objective toy of CAGrad, Nash-MTL and FAMO (Liu et al., NeurIPS 2021; "
             "Navon et al., ICML 2022; Liu et al., NeurIPS 2023)")
    default_seeds = len(STARTS)
    default_epochs = 70
    seed_batch = len(STARTS)

    def configs(self, seeds: Sequence[int], epochs: int) -> list[RunConfig]:
        return expand(SweepSpec(["toy-2d"], [n for n, _ in STRATEGY_GRID], list(seeds),
                                {"famo": {k: [v] for k, v in FAMO_PARAMS.items()}},
                                RunConfig(epochs=epochs)))

    def command(self, seeds: Sequence[int], epochs: int, runs_dir: Path, jobs: int) -> str:
        return (f"python -m mtl_bench run --task toy-2d "
                f"--strategy {','.join(n for n, _ in STRATEGY_GRID)} --set famo.gamma=0 "
                f"--seeds {seeds_text(seeds)} --epochs {epochs} --seed-batch {self.seed_batch} "
                f"--jobs {jobs} --runs-dir {runs_dir}")

    def section(self, records: list[dict[str, Any]], ctx: Context) -> str:
        ok = [r for r in records if r.get("status") == "ok"]
        first = ok[0] if ok else (records[0] if records else {})
        out = self.head(records, ctx, self._setup(first, ctx))
        ends = [toy_end(r) for r in records]
        table = end_table(ends)
        out += ["### Where every run ends", "", markdown_table(table), "", table.note, ""]
        if ok:
            fig = trajectory_figure(ends, _variant(first))
            out += [ctx.figure(fig, f"{self.name}_trajectories",
                               "Paths of x over the loss landscape (contours of L1 + L2), one "
                               "panel per strategy, one colour per start (circle: start, "
                               "cross: end; x read after every epoch). The black curve is the "
                               "Pareto front."), ""]
        out += ["### Findings", ""]
        out += [f.markdown(i) + "\n" for i, f in enumerate(findings(ends), 1)]
        return "\n".join(out)

    @staticmethod
    def _setup(record: dict[str, Any], ctx: Context) -> str:
        cfg, data = record.get("config", {}), record.get("data", {})
        steps = data.get("n_train", "?")
        total = (steps * cfg["epochs"] if isinstance(steps, int)
                 and isinstance(cfg.get("epochs"), int) else "?")
        return (
            "Setup. Task pair `toy-2d` (its docstring has the formulas and how the front was "
            f"found): two losses of a point x = (x1, x2), variant `{data.get('variant', '?')}` "
            "(L1 times 0.1 in the scaled variant of Nash-MTL and FAMO). The model is x itself; "
            f"Adam (lr {cfg.get('lr', '?')}), batch {cfg.get('batch_size', '?')}, "
            f"{cfg.get('epochs', '?')} epochs of {steps} steps ({total} steps; Nash-MTL's toy "
            "ran 35,000, FAMO's 50,000; a run still moving at the end is marked so: the slowest "
            "need about twice as many steps, see the task pair's docstring, which would not fit "
            "this reproduction's 10-minute budget on 2 CPU cores). Run seed k starts at start k: "
            + ", ".join(f"{k}: {_start_text(k)}" for k in ctx.seeds if k < len(STARTS))
            + " (0-4 are Nash-MTL's and FAMO's five starts, 5 is CAGrad's third). Strategies "
            "with their defaults, except FAMO's logit decay gamma = 0 as in FAMO's toy runs: "
            + ", ".join(f"{NAMES[s]} (`{s}`)" for s in STRATEGIES)
            + ". Distance d: Euclidean distance of the final x to the front; position p: where "
            "the nearest front point lies, 0 at task 1's optimum (7, -8.43), 1 at task 2's "
            f"(-7, -8.43). Thresholds: reaches the front when d < {REACH_TOL:g}; near an end "
            f"when p <= {EXTREME:g} or p >= {1 - EXTREME:g}; balanced when {BALANCED[0]:g} <= "
            f"p <= {BALANCED[1]:g}.")


def end_table(ends: Sequence[ToyEnd]) -> Display:
    rows = []
    order = {s: i for i, s in enumerate(STRATEGIES)}
    for e in sorted(ends, key=lambda e: (order.get(e.strategy, len(order)), e.strategy,
                                         e.start)):
        fin = e.path[-1] if e.ok else (np.nan, np.nan)
        rows.append({
            "strategy": e.strategy, "start": _start_text(e.start),
            "final x": "-" if not e.ok else f"({fin[0]:.3f}, {fin[1]:.3f})",
            "L1": "-" if not e.ok else f"{e.losses[0]:.3f}",
            "L2": "-" if not e.ok else f"{e.losses[1]:.3f}",
            "distance to front ↓": "-" if not e.ok else f"{e.distance:.3g}",
            "position p": "-" if not e.ok else f"{e.position:.3f}",
            "late move": "-" if not e.ok else f"{e.late_move:.3g}",
            "ends": e.where + (" (still moving)" if _moving_on_front(e) else "")})
    note = ("After the last epoch (no model selection). L1, L2: the losses at the final x as "
            "the papers define them (L1 with the variant's factor, without the constant shift "
            f"the pair trains with). Late move: how far x moved over the last {LATE:.0%} of the "
            f"epochs. 'ends': off the front (d >= {REACH_TOL:g}; stuck if the late move is at "
            f"most {STILL_MOVING:g}, else still moving), near an end (p <= {EXTREME:g} or "
            f">= {1 - EXTREME:g}), balanced ({BALANCED[0]:g} <= p <= {BALANCED[1]:g}) or in "
            "between; '(still moving)': on the front but moved more than "
            f"{STILL_MOVING:g} late, so its position is not settled.")
    return text_display("Final point of every run", rows, note)


def _start_colours(n: int) -> list[str]:
    cmap = colormaps["viridis"]
    return [to_hex(cmap(x)) for x in np.linspace(0.0, 0.9, n)]


def trajectory_figure(ends: Sequence[ToyEnd], variant: str = "scaled") -> Figure:
    """Small multiples: one panel per strategy, the landscape's contours and every path."""
    strategies = [s for s in STRATEGIES if any(e.strategy == s for e in ends)]
    cols = min(3, max(len(strategies), 1))
    rows = -(-len(strategies) // cols) if strategies else 1
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    g1, g2 = np.meshgrid(np.linspace(-10, 10, 161), np.linspace(-10, 10, 161))
    l1, l2 = losses_numpy(g1, g2, variant)
    total = l1 + l2
    levels = np.quantile(total, np.linspace(0.0, 1.0, 16))
    fx, fy = front_curve()
    colours = _start_colours(len(STARTS))
    for ax, s in zip(axes, strategies):
        # drawn as an image inside the SVG: thousands of contour paths would make it megabytes
        ax.contourf(g1, g2, total, levels=np.unique(levels), cmap="Greys", alpha=0.55,
                    rasterized=True)
        ax.plot(fx, fy, color="black", linewidth=2.0)
        for e in sorted((e for e in ends if e.strategy == s), key=lambda e: e.start):
            c = colours[e.start]
            ax.plot(*STARTS[e.start], marker="o", color=c, markersize=6, linestyle="none",
                    label=_start_text(e.start))
            if e.ok:
                ax.plot(e.path[:, 0], e.path[:, 1], color=c, linewidth=1.4)
                ax.plot(*e.path[-1], marker="X", color=c, markersize=8, linestyle="none",
                        markeredgecolor="black", markeredgewidth=0.5)
        ax.set_title(f"{NAMES[s]} ({s})" if s in NAMES else s)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    for ax in axes[len(strategies):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="start", fontsize="small",
               frameon=False)
    fig.suptitle(f"toy-2d ({variant} variant): trajectories of Adam under each strategy")
    return fig
