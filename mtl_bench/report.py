"""Aggregated tables -> ``report.md``, a self-contained ``report.html`` and PNG/SVG figures.

Reads only what ``aggregate`` wrote (:class:`mtl_bench.aggregate.Tables`). The report is a list
of blocks (headings, sentences, tables, figures) rendered twice: Markdown that links the PNG
files, and HTML with every image embedded as base64 so the file opens anywhere without network
or the figures folder. Each section ends with a "what this shows" line computed from the numbers.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_bench import plots
from mtl_bench.aggregate import (
    DELTA_M,
    FORMULATION_OPTION,
    METHOD,
    PHASES,
    RANKED_ROLES,
    REFERENCE,
    SETTING,
    SINGLE_TASK,
    Tables,
    pareto_points,
    setting_label,
    slugify,
)
from mtl_bench.display import (
    Display,
    cross_pair_display,
    failed_display,
    fmt_ci,
    fmt_number,
    fmt_p,
    markdown_table,
    setting_displays,
)
from mtl_bench.errors import UserError
from mtl_bench.store import METRIC, SPLIT, STRATEGY, TASK, atomic_write_text

FIGURES_DIR = "figures"
FIGURE_PREFIXES = ("curves_", "weights_", "pareto_", "throughput_", "gradcos_", "calibration_",
                   "cd_diagram")


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class TableBlock:
    display: Display


@dataclass
class FigureBlock:
    stem: str  # relative to the report folder, without suffix
    caption: str


Block = Heading | Text | TableBlock | FigureBlock


@dataclass
class Report:
    blocks: list[Block] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


# -- metric choice -----------------------------------------------------------------------------
def all_metrics(tables: Tables) -> list[str]:
    seen: dict[str, None] = {}
    for s in tables.meta["settings"]:
        for t in s["tasks"]:
            for m in t["metrics"]:
                seen.setdefault(m)
    return list(seen)


def check_metrics(tables: Tables, metrics: Sequence[str]) -> None:
    """A metric asked for with ``--metric`` must exist in at least one task of the tables."""
    known = all_metrics(tables)
    for m in metrics:
        if m not in known:
            raise UserError(f"--metric '{m}' is not a metric of any task in the tables; "
                            f"choose from: {', '.join(known)}")


def task_metric(task: dict, wanted: Sequence[str]) -> str:
    """The metric plotted for a task: the first ``--metric`` it has, else its first metric."""
    for m in wanted:
        if m in task["metrics"]:
            return m
    return task["metrics"][0]


# -- the document ------------------------------------------------------------------------------
def build_report(tables: Tables, out_dir: str | Path, metrics: Sequence[str] = ()) -> Report:
    """Write the figures under ``out_dir/figures`` and return the report's blocks."""
    check_metrics(tables, metrics)
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    rep = Report()
    meta = tables.meta
    level = meta["ci"]["level"]
    refs = {s["reference"] for s in meta["settings"] if s["reference"]}
    # only ranked strategies take palette colours; the front and single-task are drawn in grey
    labels = {lb for s in meta["settings"] for lb in s["strategies"]
              if s["roles"][lb] in RANKED_ROLES}
    styles = plots.style_map(labels, refs)

    def figure(fig, name: str, caption: str) -> None:
        rep.figures += plots.save(fig, fig_dir / name)
        rep.blocks.append(FigureBlock(f"{FIGURES_DIR}/{name}", caption))

    b = rep.blocks
    b.append(Heading("Multi-task loss-weighting benchmark report", 1))
    corrupt = len(meta["corrupt"])
    b.append(Text(
        f"{meta['n_records']} run records ({meta['n_ok']} ok, {meta['n_failed']} failed"
        + (f"; {corrupt} corrupt record files skipped" if corrupt else "")
        + f") in {len(meta['settings'])} task-pair setting(s)"
        + (f", read from {meta['runs_dir']}" if meta.get("runs_dir") else "") + ". "
        "Metrics are on the test split at the epoch selected on validation; intervals are "
        f"{level:.0%} confidence intervals over seeds."))

    for s in meta["settings"]:
        _setting_section(tables, s, rep, styles, metrics, figure)
    _calibration_sections(tables, rep, styles, figure)
    _cross_section(tables, rep, styles, figure)
    fd = failed_display(tables)
    if fd is not None:
        b.append(Heading(fd.title))
        b.append(TableBlock(fd))
    return rep


def _setting_section(tables: Tables, s: dict, rep: Report, styles, wanted, figure) -> None:
    b = rep.blocks
    label, slug = s["label"], s["slug"]
    level = tables.meta["ci"]["level"]
    ranked = [lb for lb in s["strategies"] if s["roles"][lb] in RANKED_ROLES]
    b.append(Heading(label))
    b.append(Text(f"{s['n_runs']} runs ({s['n_failed']} failed), {s['epochs']} epochs; "
                  f"reference: {s['reference'] or 'none (no fixed equal-weight runs)'}."))
    for note in s["notes"]:
        b.append(Text(f"Note: {note}."))
    displays = setting_displays(tables, label)
    b.append(Heading("Test metrics", 3))
    b.append(TableBlock(displays[0]))
    b.append(Text("What this shows: " + _comparison_line(tables, s)))
    for d in displays[1:]:
        if d.title.startswith("Paired"):
            b.append(Heading("Significance against the reference", 3))
            b.append(TableBlock(d))
            b.append(Text("What this shows: " + _significance_line(tables, s)))

    tasks = s["tasks"]
    chosen = {t["name"]: task_metric(t, wanted) for t in tasks}
    if len(tasks) >= 2 and ranked:
        (ta, tb) = tasks[0]["name"], tasks[1]["name"]
        ma, mb = chosen[ta], chosen[tb]
        pts = pareto_points(tables, label, [(ta, ma), (tb, mb)])
        if not pts.empty and (pts["a"].notna() & pts["b"].notna()).any():
            b.append(Heading("Trade-off between the tasks", 3))
            axes = (plots.metric_label(ta, ma, s["directions"][ma], plots.metric_unit(ma)),
                    plots.metric_label(tb, mb, s["directions"][mb], plots.metric_unit(mb)))
            figure(plots.pareto(pts, label, axes, styles, level), f"pareto_{slug}",
                   f"{label}: {ta} {ma} against {tb} {mb}; fixed-weight front as a line.")
            b.append(Text("What this shows: " + _pareto_line(pts, ta, ma, tb, mb)))

    curves = tables["curves"][tables["curves"][SETTING] == label]
    if not curves.empty:
        b.append(Heading("Learning curves", 3))
        single = SINGLE_TASK if SINGLE_TASK in s["roles"] else None
        for t in tasks:
            name = t["name"]
            fig = plots.learning_curves(curves, label, name, chosen[name],
                                        s["directions"].get(chosen[name]), styles, ranked,
                                        single, level)
            figure(fig, f"curves_{slug}_{slugify(name)}",
                   f"{label}: {name} training loss and validation {chosen[name]} per epoch.")
        b.append(Text("What this shows: " + _curves_line(curves, s, chosen, ranked)))

    weights = tables["weights"][tables["weights"][SETTING] == label]
    if not weights.empty and ranked:
        b.append(Heading("Task weights", 3))
        figure(plots.weight_trajectories(weights, label, [t["name"] for t in tasks], styles,
                                         ranked, level),
               f"weights_{slug}", f"{label}: task weights per epoch.")
        b.append(Text("What this shows: " + _weights_line(weights, s, ranked)))

    diag = tables["diagnostics"][tables["diagnostics"][SETTING] == label]
    diag = diag[diag[STRATEGY].isin(ranked)]
    if not diag.empty:
        b.append(Heading("Gradient diagnostics", 3))
        figure(plots.gradient_cosine(diag, label, styles, ranked, level), f"gradcos_{slug}",
               f"{label}: cosine between the task gradients during training.")
        b.append(Text("What this shows: " + _cosine_line(diag, ranked)))

    tp = tables["throughput"][tables["throughput"][SETTING] == label]
    tp = tp[tp["role"].isin(RANKED_ROLES) & tp["samples_per_s"].notna()]
    tp_display = next((d for d in displays if d.title.startswith("Throughput")), None)
    if tp_display is not None and not tp.empty:
        b.append(Heading("Throughput", 3))
        b.append(TableBlock(tp_display))
        figure(plots.throughput_bars(tp, label, s["reference"], styles, PHASES),
               f"throughput_{slug}", f"{label}: samples per second and step time by phase.")
        b.append(Text("What this shows: " + _throughput_line(tp, s)))


# -- "what this shows" lines -------------------------------------------------------------------
def _names(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return "none"
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]


def _comparison_line(tables: Tables, s: dict) -> str:
    label, method = s["label"], tables.meta["ci"]["method"]
    rk = tables["ranks"][tables["ranks"][SETTING] == label].dropna(subset=["mean_rank"])
    parts = []
    if not rk.empty:
        best = rk.sort_values(["mean_rank", STRATEGY]).iloc[0]
        parts.append(f"{best[STRATEGY]} has the best mean rank ({best['mean_rank']:.2f} over "
                     f"{int(best['n_metrics'])} metrics, {int(best['n_strategies'])} strategies "
                     "ranked)")
    dm = tables["delta_m"][tables["delta_m"][SETTING] == label]
    dm = dm[dm["role"].isin(RANKED_ROLES) & dm["mean"].notna()]
    if not dm.empty:
        best = dm.sort_values(["mean", STRATEGY]).iloc[0]
        beats = dm[dm["ci_high"] < 0][STRATEGY].tolist()
        parts.append(f"the lowest Δm% is {best[STRATEGY]}'s "
                     f"({fmt_ci(best['mean'], best['ci_low'], best['ci_high'], method)}%); "
                     f"better than single-task with the whole CI below 0: {_names(beats)}")
    elif any("Δm%" in n for n in s["notes"]):
        parts.append("Δm% is absent because there are no usable single-task runs")
    failed = s["n_failed"]
    if failed:
        parts.append(f"{failed} failed run(s) are counted in the runs column, not averaged")
    return "; ".join(parts) + "." if parts else "no completed runs."


def _significance_line(tables: Tables, s: dict) -> str:
    sig = tables["significance"][tables["significance"][SETTING] == s["label"]]
    sig = sig[sig["role"] == METHOD]
    ref, alpha = s["reference"], tables.meta["alpha"]
    hits = sig[sig["significant"].astype(bool)]
    if hits.empty:
        text = f"no strategy differs from {ref} at p < {alpha:g} on any metric"
    else:
        items = [f"{r[STRATEGY]} on {'Δm%' if r[METRIC] == DELTA_M else r[TASK] + ' ' + r[METRIC]}"
                 f" ({'better' if r['better'] else 'worse'}, p = {fmt_p(r['p'])}, {r['test']})"
                 for _, r in hits.iterrows()]
        text = f"differs from {ref} at p < {alpha:g}: " + "; ".join(items)
    n_max = int(sig["n"].max()) if len(sig) else 0
    if n_max and sig["min_p"].min() >= alpha:
        text += (f". With {n_max} paired seeds no test can reach p < {alpha:g} (smallest "
                 f"possible p = {sig['min_p'].min():.3g}); run at least 6 seeds")
    return text + "."


def _pareto_line(pts: pd.DataFrame, ta: str, ma: str, tb: str, mb: str) -> str:
    others = pts[~pts["on_front"] | (pts["role"] == REFERENCE)]
    others = others[~others["on_front"]]
    if not pts["on_front"].any():
        return ("no fixed-weight sweep in this setting (add one with --set fixed.sweep=9), so "
                "there is no front to compare with.")
    inside = [r[STRATEGY] for _, r in others.iterrows() if r["dominated_by"]]
    beyond = [r[STRATEGY] for _, r in others.iterrows() if not r["dominated_by"]]
    return (f"comparing means of {ta} {ma} and {tb} {mb}, strategies inside the fixed-weight "
            f"front (some fixed weighting is at least as good on both): {_names(inside)}; on "
            f"or beyond the front: {_names(beyond)}.")


def _curves_line(curves: pd.DataFrame, s: dict, chosen: dict, ranked: Sequence[str]) -> str:
    parts = []
    for t in s["tasks"]:
        name, m = t["name"], chosen[t["name"]]
        hib = s["directions"].get(m)
        val = curves[(curves[SPLIT] == "val") & (curves[TASK] == name) & (curves[METRIC] == m)
                     & curves[STRATEGY].isin(ranked)]
        if val.empty or hib is None:
            continue
        last = val[val["epoch"] == val["epoch"].max()].dropna(subset=["mean"])
        if last.empty:
            continue
        best = last.sort_values("mean", ascending=not hib).iloc[0]
        parts.append(f"at the last epoch ({int(best['epoch'])}) {best[STRATEGY]} has the best "
                     f"validation {name} {m} ({fmt_number(best['mean'])})")
    return "; ".join(parts) + "." if parts else "no validation curves."


def _weights_line(weights: pd.DataFrame, s: dict, ranked: Sequence[str]) -> str:
    tasks = [t["name"] for t in s["tasks"]]
    items = []
    for lb in ranked:
        w = weights[weights[STRATEGY] == lb]
        if w.empty:
            continue
        last = w[w["epoch"] == w["epoch"].max()].set_index(TASK)["mean"]
        items.append(f"{lb} " + "/".join(fmt_number(last.get(t, math.nan)) for t in tasks))
    return (f"final-epoch mean weights ({'/'.join(tasks)}): " + "; ".join(items) + "."
            if items else "no weights recorded.")


def _cosine_line(diag: pd.DataFrame, ranked: Sequence[str]) -> str:
    items = []
    for lb in ranked:
        d = diag[diag[STRATEGY] == lb]
        if d.empty:
            continue
        neg = float((d["mean"] < 0).mean())
        items.append(f"{lb} {d['mean'].mean():+.2f} (negative at {neg:.0%} of measurements)")
    return ("mean task-gradient cosine over training: " + "; ".join(items)
            + ". Negative values mean the tasks pull the shared weights in conflicting "
            "directions.") if items else "no diagnostics."


def _throughput_line(tp: pd.DataFrame, s: dict) -> str:
    tp = tp[tp["overhead"].notna()]
    if tp.empty or not s["reference"]:
        return "no step-time ratio: the reference was not timed on the same machine."
    slow = tp.sort_values("overhead", ascending=False).iloc[0]
    fast = tp.sort_values("overhead").iloc[0]
    return (f"the slowest step is {slow[STRATEGY]}'s at {slow['overhead']:.2f}× the step time "
            f"of {s['reference']}, the fastest {fast[STRATEGY]}'s at {fast['overhead']:.2f}×. "
            "Timings on a busy machine vary from run to run; compare them within one sweep.")


# -- calibration and the cross-pair summary ----------------------------------------------------
def formulation_groups(tables: Tables) -> list[tuple[str, list[dict]]]:
    """Settings that differ only in the ``formulation`` task option, grouped (>= 1 per group)."""
    groups: dict[str, list[dict]] = {}
    for s in tables.meta["settings"]:
        if FORMULATION_OPTION not in s["options"]:
            continue
        rest = {k: v for k, v in s["options"].items() if k != FORMULATION_OPTION}
        key = setting_label(s["task_pair"], rest, s["architecture"])
        groups.setdefault(key, []).append(s)
    return [(k, sorted(v, key=lambda s: str(s["options"][FORMULATION_OPTION])))
            for k, v in sorted(groups.items())]


def _calibration_sections(tables: Tables, rep: Report, styles, figure) -> None:
    details = tables["details"]
    for name, group in formulation_groups(tables):
        det = details[details[SETTING].isin([s["label"] for s in group])]
        tasks = list(dict.fromkeys(det[det["kind"] == "reliability"][TASK]))
        if not tasks:
            continue
        rep.blocks.append(Heading(f"Calibration by formulation: {name}"))
        gaps = []
        for task in tasks:
            panels, strategies = [], []
            for s in group:
                d = det[det[SETTING] == s["label"]]
                ranked = [lb for lb in s["strategies"] if s["roles"][lb] in RANKED_ROLES]
                strategies += [lb for lb in ranked if lb not in strategies]
                conf_of = s["reference"] or (ranked[0] if ranked else "")
                title = f"{FORMULATION_OPTION}={s['options'][FORMULATION_OPTION]}"
                panels.append((title, d, conf_of))
                rel = d[(d["kind"] == "reliability") & (d[TASK] == task)
                        & d[STRATEGY].isin(ranked) & (d["count"] > 0)]
                if not rel.empty:
                    gap = float((rel["count"] * (rel["accuracy"] - rel["mean_conf"]).abs()).sum()
                                / rel["count"].sum())
                    gaps.append(f"{task} {title} {gap:.3f}")
            fig = plots.calibration(panels, task, styles, strategies,
                                    f"{name}: {task} reliability and confusion "
                                    "(test split, pooled over seeds)")
            figure(fig, f"calibration_{slugify(name)}_{slugify(task)}",
                   f"{name}: reliability diagrams and confusion matrices of {task} per "
                   "formulation.")
        rep.blocks.append(Text(
            "What this shows: calibration gap (count-weighted mean |accuracy − confidence| over "
            "the reliability bins, pooled over strategies and seeds; 0 = calibrated): "
            + "; ".join(gaps) + "."))


def _cross_section(tables: Tables, rep: Report, styles, figure) -> None:
    d = cross_pair_display(tables)
    f = tables.meta.get("friedman") or {}
    rep.blocks.append(Heading("Across task pairs"))
    if d is None:
        rep.blocks.append(Text(f"No cross-pair summary: {f.get('reason', 'one setting only')}."))
        return
    rep.blocks.append(TableBlock(d))
    if "cd" in f:
        cross = tables["cross_pair"]
        avg = {r[STRATEGY]: float(r["friedman_rank"]) for _, r in cross.iterrows()
               if bool(r["in_test"])}
        fig = plots.cd_diagram(avg, f["cd"], f.get("cliques", []), styles,
                               f"Mean ranks over {f['n_blocks']} settings; Friedman p = "
                               f"{fmt_p(f['p'])}; strategies joined by a bar do not differ "
                               f"(Nemenyi, α = {f['alpha']:g})")
        figure(fig, "cd_diagram", "Critical-difference diagram of the mean ranks.")
        names = sorted(avg, key=avg.get)
        apart = [f"{a} vs {b}" for i, a in enumerate(names) for b in names[i + 1:]
                 if avg[b] - avg[a] > f["cd"]]
        line = (f"Friedman p = {fmt_p(f['p'])}; pairs of strategies whose mean ranks differ by "
                f"more than CD = {f['cd']:.2f}: {_names(apart)}.")
        if f["p"] >= f["alpha"]:
            line += " The Friedman test does not reject equal ranks, so no pair is significant."
        rep.blocks.append(Text("What this shows: " + line))


# -- rendering ---------------------------------------------------------------------------------
def render_markdown(rep: Report) -> str:
    out: list[str] = []
    for block in rep.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            out += [block.text, ""]
        elif isinstance(block, TableBlock):
            out += [markdown_table(block.display), ""]
            if block.display.note:
                out += [f"<sub>{block.display.note}</sub>", ""]
        elif isinstance(block, FigureBlock):
            out += [f"![{block.caption}]({block.stem}.png)", "",
                    f"<sub>{block.caption} ([SVG]({block.stem}.svg))</sub>", ""]
    return "\n".join(out).rstrip() + "\n"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1300px; padding: 0 1rem; color: #222; line-height: 1.45; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
td { white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { font-size: 0.82rem; color: #555; }
h1 { border-bottom: 2px solid #333; } h2 { border-bottom: 1px solid #aaa; margin-top: 2.2rem; }
"""


def render_html(rep: Report, out_dir: str | Path) -> str:
    """One HTML file; images inlined as base64 PNG (no external resources at all)."""
    out_dir = Path(out_dir)
    body: list[str] = []
    title = "mtl-bench report"
    for block in rep.blocks:
        if isinstance(block, Heading):
            if block.level == 1:
                title = block.text
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, TableBlock):
            body.append(_html_table(block.display))
        elif isinstance(block, FigureBlock):
            data = base64.b64encode((out_dir / f"{block.stem}.png").read_bytes()).decode()
            cap = html.escape(block.caption)
            body.append(f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{cap}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _html_table(d: Display) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.text.columns)
    rows = []
    for i in range(len(d.text)):
        cells = []
        for j in range(d.text.shape[1]):
            v = html.escape(str(d.text.iat[i, j]))
            cells.append(f"<td><strong>{v}</strong></td>" if bool(d.bold.iat[i, j]) and v
                         else f"<td>{v}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{html.escape(d.note)}</p>' if d.note else ""
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>" + note)


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]


def write_report(tables: Tables, out_dir: str | Path, metrics: Sequence[str] = ()
                 ) -> ReportFiles:
    """Build the report from ``tables`` and write ``report.md``, ``report.html`` and figures."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    rep = build_report(tables, out_dir, metrics)
    written = {p.resolve() for p in rep.figures}
    if fig_dir.is_dir():  # figures of settings no longer in the tables would mislead
        for p in fig_dir.iterdir():
            if (p.suffix in (".png", ".svg") and p.name.startswith(FIGURE_PREFIXES)
                    and p.resolve() not in written):
                p.unlink()
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, render_markdown(rep))
    atomic_write_text(page, render_html(rep, out_dir))
    return ReportFiles(md, page, rep.figures)


def figure_is_blank(path: str | Path) -> bool:
    """True when a PNG has a single colour (nothing drawn)."""
    from matplotlib.image import imread

    img = np.asarray(imread(str(path)))
    return bool(np.all(img == img.reshape(-1, img.shape[-1])[0]))
