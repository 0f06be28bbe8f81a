"""Aggregated tables -> ``report.md``, a self-contained ``report.html`` and PNG/SVG figures.

Reads only what ``aggregate`` wrote (:class:`mtl_bench.aggregate.Tables`). The report is a list
of blocks (headings, sentences, tables, figures) rendered twice: Markdown that links the PNG
files, and HTML with every image embedded as base64 so the file opens anywhere without network
or the figures folder. Each section ends with a "what this shows" line computed from the numbers.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_bench import plot_training, plots
from mtl_bench.aggregate import (
    FORMULATION_OPTION,
    PHASES,
    RANKED_ROLES,
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
    fmt_p,
    markdown_table,
    setting_displays,
)
from mtl_bench.errors import UserError
from mtl_bench.sentences import comparison_line as _comparison_line
from mtl_bench.sentences import cosine_line as _cosine_line
from mtl_bench.sentences import curves_line as _curves_line
from mtl_bench.sentences import names as _names
from mtl_bench.sentences import pareto_line as _pareto_line
from mtl_bench.sentences import significance_line as _significance_line
from mtl_bench.sentences import speed_line as _speed_line
from mtl_bench.sentences import throughput_line as _throughput_line
from mtl_bench.sentences import tuning_line as _tuning_line
from mtl_bench.sentences import weights_line as _weights_line
from mtl_bench.store import STATUS, STRATEGY, TASK, atomic_write_text

FIGURES_DIR = "figures"
FIGURE_PREFIXES = ("curves_", "losses_", "weights_", "pareto_", "throughput_", "gradcos_",
                   "calibration_", "cd_diagram")


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


def parse_pareto_pair(text: str | tuple[str, str]) -> tuple[str, str]:
    """``"A,B"`` -> ``("A", "B")``: two different task names."""
    parts = tuple(text) if isinstance(text, tuple) else tuple(p.strip() for p in text.split(","))
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise UserError(f"--pareto '{text if isinstance(text, str) else ','.join(text)}' "
                        "should be two different task names: TASK_A,TASK_B")
    return parts[0], parts[1]


def check_pareto_pairs(tables: Tables, wanted: Sequence[str | tuple[str, str]]
                       ) -> list[tuple[str, str]]:
    """The ``--pareto`` pairs, each of which must have both tasks in at least one setting."""
    pairs = [parse_pareto_pair(w) for w in wanted]
    for a, b in pairs:
        if not any({a, b} <= {t["name"] for t in s["tasks"]} for s in tables.meta["settings"]):
            known = dict.fromkeys(t["name"] for s in tables.meta["settings"] for t in s["tasks"])
            raise UserError(f"--pareto '{a},{b}': no setting has both tasks; tasks: "
                            f"{', '.join(known)}")
    return pairs


def pareto_pairs(tasks: Sequence[str], wanted: Sequence[tuple[str, str]] = ()
                 ) -> list[tuple[str, str]]:
    """Task pairs plotted against each other: the ``wanted`` ones this setting has, else the
    first task against each of the next three (all of T - 1 would be unreadable for T = 10)."""
    if wanted:
        return [(a, b) for a, b in wanted if a in tasks and b in tasks]
    return [(tasks[0], t) for t in tasks[1:4]]


def selected_epochs(tables: Tables, label: str, tasks: Sequence[str]
                    ) -> dict[tuple[str, str], list[float]]:
    """(strategy, task) -> the epochs its ok runs selected on validation, one per run (a
    single-task run counts for its own task, a multi-task run for every task)."""
    runs = tables["runs"]
    if runs.empty or "selected_epoch" not in runs:
        return {}
    out: dict[tuple[str, str], list[float]] = {}
    here = runs[(runs[SETTING] == label) & (runs[STATUS] == "ok")]
    for _, r in here.iterrows():
        epoch = pd.to_numeric(r["selected_epoch"], errors="coerce")
        if not np.isfinite(epoch):
            continue
        alone = r.get("single_task")
        for t in [str(alone)] if pd.notna(alone) and str(alone) else tasks:
            out.setdefault((r[STRATEGY], t), []).append(float(epoch))
    return out


# -- the document ------------------------------------------------------------------------------
def build_report(tables: Tables, out_dir: str | Path, metrics: Sequence[str] = (),
                 pareto: Sequence[str | tuple[str, str]] = ()) -> Report:
    """Write the figures under ``out_dir/figures`` and return the report's blocks.
    ``pareto``: task pairs (``"A,B"`` or tuples) whose trade-off is plotted, in every setting
    that has both; default: the first task against each of the next three."""
    check_metrics(tables, metrics)
    pairs = check_pareto_pairs(tables, pareto)
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
        while f"{FIGURES_DIR}/{name}" in {f.stem for f in rep.blocks
                                          if isinstance(f, FigureBlock)}:
            name += "-2"  # two labels with one slug must not overwrite each other's figure
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

    by_formulation = {s["label"] for _, group in formulation_groups(tables) for s in group}
    for s in meta["settings"]:
        _setting_section(tables, s, rep, styles, metrics, figure, pairs,
                         calibration=s["label"] not in by_formulation)
    _calibration_sections(tables, rep, styles, figure)
    _cross_section(tables, rep, styles, figure)
    fd = failed_display(tables)
    if fd is not None:
        b.append(Heading(fd.title))
        b.append(TableBlock(fd))
    return rep


#: Which sentence follows which table (by the start of the table's title).
SENTENCES = (("Leaderboard", _comparison_line), ("Paired tests", _significance_line),
             ("Speed", _speed_line), ("Tuning", _tuning_line))


def _setting_section(tables: Tables, s: dict, rep: Report, styles, wanted, figure,
                     pairs: Sequence[tuple[str, str]] = (), calibration: bool = True) -> None:
    b = rep.blocks
    label, slug = s["label"], s["slug"]
    level = tables.meta["ci"]["level"]
    ranked = [lb for lb in s["strategies"] if s["roles"][lb] in RANKED_ROLES]
    b.append(Heading(label))
    b.append(Text(f"{s['n_runs']} runs ({s['n_failed']} failed), {s['epochs']} epochs; "
                  f"reference: {s['reference'] or 'none (no fixed equal-weight runs)'}."))
    for note in s["notes"]:
        b.append(Text(f"Note: {note}."))
    # the tables, leaderboard first; each with its note and, where one applies, a sentence
    # computed from the same numbers
    displays = setting_displays(tables, label)
    for d in displays:
        kind = d.title.split(":", 1)[0]
        if kind == "Sweep timers":
            continue  # shown with its figure below
        b.append(Heading(kind, 3))
        b.append(TableBlock(d))
        line = next((fn for key, fn in SENTENCES if kind.startswith(key)), None)
        if line is not None:
            b.append(Text("What this shows: " + line(tables, s)))

    tasks = s["tasks"]
    names = [t["name"] for t in tasks]
    chosen = {t["name"]: task_metric(t, wanted) for t in tasks}
    selected = selected_epochs(tables, label, names)
    plotted = []
    for ta, tb in (pareto_pairs(names, pairs) if ranked else []):
        ma, mb = chosen[ta], chosen[tb]
        pts = pareto_points(tables, label, [(ta, ma), (tb, mb)])
        if not pts.empty and (pts["a"].notna() & pts["b"].notna()).any():
            plotted.append((ta, ma, tb, mb, pts))
    if plotted:
        b.append(Heading("Trade-off between the tasks", 3))
    for ta, ma, tb, mb, pts in plotted:
        dirs = (s["directions"][ma], s["directions"][mb])
        axes = (plots.metric_label(ta, ma, dirs[0], plots.metric_unit(ma)),
                plots.metric_label(tb, mb, dirs[1], plots.metric_unit(mb)))
        sweep = int((pts["on_front"] & pts["a"].notna() & pts["b"].notna()).sum())
        stem = (f"pareto_{slug}" if len(names) == 2 and (ta, tb) == tuple(names)
                else f"pareto_{slug}_{slugify(ta)}_{slugify(tb)}")
        figure(plots.pareto(pts, label, axes, styles, level, directions=dirs, task_a=ta), stem,
               f"{label}: {ta} {ma} against {tb} {mb}"
               + ("; the fixed-weight front is the staircase through the sweep points no other "
                  "sweep point dominates (faint crosses: dominated sweep points)."
                  if sweep >= 2 else "."))
        b.append(Text("What this shows: " + _pareto_line(pts, ta, ma, tb, mb)))

    curves = tables["curves"][tables["curves"][SETTING] == label]
    if not curves.empty:
        b.append(Heading("Learning curves", 3))
        single = SINGLE_TASK if SINGLE_TASK in s["roles"] else None
        marks = ("; open diamonds: the epoch selected on validation (mean over seeds)"
                 if selected else "")
        if len(names) <= 2:
            for name in names:
                fig = plot_training.learning_curves(
                    curves, label, name, chosen[name], s["directions"].get(chosen[name]),
                    styles, ranked, single, level,
                    selected={lb: e for (lb, t), e in selected.items() if t == name})
                figure(fig, f"curves_{slug}_{slugify(name)}",
                       f"{label}: {name} training loss and validation {chosen[name]} per "
                       f"epoch{marks}.")
        else:
            per_task = [(n, chosen[n], s["directions"].get(chosen[n])) for n in names]
            figure(plot_training.metric_grid(curves, label, per_task, styles, ranked, single,
                                             level, selected=selected),
                   f"curves_{slug}", f"{label}: validation metric of every task per epoch"
                   f"{marks}.")
            figure(plot_training.normalised_losses(
                       curves, label, names, ranked,
                       selected={lb: e for (lb, t), e in selected.items() if t == names[0]}),
                   f"losses_{slug}", f"{label}: each task's loss relative to its first value, "
                   "one panel per strategy (tasks that train at the same rate overlap); dotted: "
                   "the epoch selected on validation.")
        b.append(Text("What this shows: " + _curves_line(curves, s, chosen, ranked)))

    weights = tables["weights"][tables["weights"][SETTING] == label]
    if not weights.empty and ranked:
        b.append(Heading("Task weights", 3))
        figure(plot_training.weight_trajectories(weights, label, names, styles, ranked, level),
               f"weights_{slug}", f"{label}: task weights per epoch.")
        b.append(Text("What this shows: " + _weights_line(weights, s, ranked)))

    diag = tables["diagnostics"][tables["diagnostics"][SETTING] == label]
    diag = diag[diag[STRATEGY].isin(ranked)]
    if not diag.empty:
        b.append(Heading("Gradient diagnostics", 3))
        if len(names) <= 2:
            figure(plot_training.gradient_cosine(diag, label, styles, ranked, level),
                   f"gradcos_{slug}",
                   f"{label}: cosine between the task gradients during training.")
        else:
            figure(plot_training.gradient_cosine_heatmap(diag, label, names, ranked),
                   f"gradcos_{slug}",
                   f"{label}: cosine between every two task gradients over the last epoch, "
                   "one matrix per strategy.")
        b.append(Text("What this shows: " + _cosine_line(diag, ranked)))

    if calibration:
        _setting_calibration(tables, s, ranked, rep, styles, figure)

    tp = tables["throughput"][tables["throughput"][SETTING] == label]
    tp = tp[tp["role"].isin(RANKED_ROLES) & tp["samples_per_s"].notna()]
    tp_display = next((d for d in displays if d.title.startswith("Sweep timers")), None)
    if tp_display is not None and not tp.empty:
        b.append(Heading("Sweep timers", 3))
        b.append(TableBlock(tp_display))
        figure(plots.throughput_bars(tp, label, s["reference"], styles, PHASES),
               f"throughput_{slug}", f"{label}: samples per second and step time by phase.")
        b.append(Text("What this shows: " + _throughput_line(tp, s)))


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


def _calibration_gap(d: pd.DataFrame, task: str, ranked: Sequence[str]) -> float | None:
    """Count-weighted mean |accuracy - confidence| over the reliability bins of ``task``,
    pooled over the ranked strategies; None without bins."""
    rel = d[(d["kind"] == "reliability") & (d[TASK] == task) & d[STRATEGY].isin(ranked)
            & (d["count"] > 0)]
    if rel.empty:
        return None
    return float((rel["count"] * (rel["accuracy"] - rel["mean_conf"]).abs()).sum()
                 / rel["count"].sum())


_GAP_TEXT = ("What this shows: calibration gap (count-weighted mean |accuracy − confidence| over "
             "the reliability bins, pooled over strategies and seeds; 0 = calibrated): ")


def _calibration_sections(tables: Tables, rep: Report, styles, figure) -> None:
    """Reliability and confusion side by side for settings that differ only in their
    ``formulation`` option (the others get theirs in their own section)."""
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
                gap = _calibration_gap(d, task, ranked)
                if gap is not None:
                    gaps.append(f"{task} {title} {gap:.3f}")
            fig = plots.calibration(panels, task, styles, strategies,
                                    f"{name}: {task} reliability and confusion "
                                    "(test split, pooled over seeds)")
            figure(fig, f"calibration_{slugify(name)}_{slugify(task)}",
                   f"{name}: reliability diagrams and confusion matrices of {task} per "
                   "formulation.")
        rep.blocks.append(Text(_GAP_TEXT + "; ".join(gaps) + "."))


def _setting_calibration(tables: Tables, s: dict, ranked: Sequence[str], rep: Report, styles,
                         figure) -> None:
    """A reliability diagram over a confusion matrix for every classification task of one
    setting that recorded reliability bins."""
    det = tables["details"]
    det = det[det[SETTING] == s["label"]]
    tasks = list(dict.fromkeys(det[det["kind"] == "reliability"][TASK]))
    if not tasks or not ranked:
        return
    rep.blocks.append(Heading("Calibration", 3))
    conf_of = s["reference"] or ranked[0]
    gaps = []
    for task in tasks:
        fig = plots.calibration([("test split", det, conf_of)], task, styles, list(ranked),
                                f"{s['label']}: {task} reliability and confusion "
                                "(test split, pooled over seeds)")
        figure(fig, f"calibration_{s['slug']}_{slugify(task)}",
               f"{s['label']}: reliability diagram of {task} per strategy and the confusion "
               f"matrix of {conf_of}.")
        gap = _calibration_gap(det, task, ranked)
        if gap is not None:
            gaps.append(f"{task} {gap:.3f}")
    rep.blocks.append(Text(_GAP_TEXT + ("; ".join(gaps) or "no filled bins") + "."))


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
       max-width: 1800px; padding: 0 1.5rem; color: #222; line-height: 1.45; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f3f3f3; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
td:first-child { overflow-wrap: anywhere; min-width: 8em; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { font-size: 0.82rem; color: #555; }
h1 { border-bottom: 2px solid #333; } h2 { border-bottom: 1px solid #aaa; margin-top: 2.2rem; }
nav.toc { background: #f7f7f7; border: 1px solid #ddd; padding: 0.4rem 1rem; margin: 1rem 0; }
nav.toc h2 { border: none; margin: 0.3rem 0; font-size: 1.1rem; }
nav.toc ul { margin: 0.2rem 0; padding-left: 1.2rem; }
nav.toc > ul { columns: 2 22rem; }
nav.toc > ul > li { break-inside: avoid; }
nav.toc li li { font-size: 0.9rem; }
"""


def _heading_ids(blocks: Sequence[Block]) -> dict[int, str]:
    """A unique, readable id per heading (keyed by block index): ``clsreg``,
    ``clsreg-learning-curves``, ``learning-curves-2`` if a name repeats."""
    ids: dict[int, str] = {}
    used: set[str] = set()
    parent = ""
    for i, block in enumerate(blocks):
        if not isinstance(block, Heading) or block.level == 1:
            continue
        base = slugify(block.text, limit=50)
        if block.level == 2:
            parent = base
        else:
            base = f"{parent}-{base}" if parent else base
        hid, n = base, 1
        while hid in used:
            n += 1
            hid = f"{base}-{n}"
        used.add(hid)
        ids[i] = hid
    return ids


def _toc(blocks: Sequence[Block], ids: dict[int, str]) -> str:
    """Nested list of links to every section (level 2) and its subsections (level 3)."""
    items: list[tuple[str, list[str]]] = []
    for i, hid in ids.items():
        block = blocks[i]
        assert isinstance(block, Heading)
        link = f'<a href="#{hid}">{html.escape(block.text)}</a>'
        if block.level == 2 or not items:
            items.append((link, []))
        else:
            items[-1][1].append(link)
    lines = ["<nav class=\"toc\"><h2>Contents</h2><ul>"]
    for link, subs in items:
        inner = "<ul>" + "".join(f"<li>{s}</li>" for s in subs) + "</ul>" if subs else ""
        lines.append(f"<li>{link}{inner}</li>")
    return "".join(lines) + "</ul></nav>"


def render_html(rep: Report, out_dir: str | Path) -> str:
    """One HTML file; images inlined as base64 PNG (no external resources at all), with a
    table of contents after the introduction."""
    out_dir = Path(out_dir)
    body: list[str] = []
    title = "mtl-bench report"
    ids = _heading_ids(rep.blocks)
    toc_at = next((i for i, blk in enumerate(rep.blocks) if not isinstance(blk, (Heading, Text))
                   or (isinstance(blk, Heading) and blk.level > 1)), len(rep.blocks))
    for i, block in enumerate(rep.blocks):
        if i == toc_at and ids:
            body.append(_toc(rep.blocks, ids))
        if isinstance(block, Heading):
            if block.level == 1:
                title = block.text
            hid = f' id="{ids[i]}"' if i in ids else ""
            body.append(f"<h{block.level}{hid}>{html.escape(block.text)}</h{block.level}>")
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
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _html_table(d: Display) -> str:
    """Header cells wrap; a value ± its interval breaks only before the ± (non-breaking space
    after it), and only when the page is too narrow for the table."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.text.columns)
    rows = []
    for i in range(len(d.text)):
        cells = []
        for j in range(d.text.shape[1]):
            v = html.escape(str(d.text.iat[i, j])).replace("± ", "±&nbsp;")
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


def write_report(tables: Tables, out_dir: str | Path, metrics: Sequence[str] = (),
                 pareto: Sequence[str | tuple[str, str]] = ()) -> ReportFiles:
    """Build the report from ``tables`` and write ``report.md``, ``report.html`` and figures,
    each file atomically (a report killed half-way leaves complete files of the previous
    one). ``pareto``: task pairs for the trade-off plots (see :func:`build_report`)."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    rep = build_report(tables, out_dir, metrics, pareto)
    written = {p.resolve() for p in rep.figures}
    if fig_dir.is_dir():  # figures of settings no longer in the tables would mislead
        for p in fig_dir.iterdir():
            stale = (p.suffix in (".png", ".svg") and p.name.startswith(FIGURE_PREFIXES)
                     and p.resolve() not in written)
            # temporary files of a report that was killed while saving
            orphan = (p.name.startswith(tuple("." + f for f in FIGURE_PREFIXES))
                      and p.suffix == ".tmp")
            if stale or orphan:
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
