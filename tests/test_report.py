"""The report stage as a user meets it: files, figures that show data, a self-contained page."""

import copy
import shutil

import pytest

from mtl_bench import aggregate as agg
from mtl_bench import plot_training, plots
from mtl_bench.cli import main
from mtl_bench.report import figure_is_blank, formulation_groups, task_metric, write_report
from mtl_bench.store import RunStore

SOFTMAX, BCE = "clsreg [formulation=softmax]", "clsreg [formulation=bce]"


@pytest.fixture(scope="session")
def report_dir(tmp_path_factory):
    """Tiny real runs made with the command line, copied into two settings that differ in a
    `formulation` option (the calibration figure groups those), plus one failed run; then
    `report --runs-dir ... --metric macro_f1` once for the whole file."""
    root = tmp_path_factory.mktemp("report")
    raw = root / "raw"
    common = ["--seeds", "2", "--epochs", "2", "--runs-dir", str(raw), "--quiet", "--jobs", "1"]
    assert main(["run", "--strategy", "fixed,uncertainty,dwa", "--single-task", *common]) == 0
    assert main(["run", "--strategy", "fixed", "--set", "fixed.sweep=3", *common]) == 0
    store = RunStore(root / "runs")
    for record in RunStore(raw).load().records:
        for formulation in ("softmax", "bce"):
            r = copy.deepcopy(record)
            r["config"]["task_options"] = {"formulation": formulation}
            r["run_id"] = f"{formulation}-{r['run_id']}"
            if formulation == "bce":
                # a less confident classifier, so the calibration panels differ; and records
                # without curves, weights, diagnostics or timings (the report must cope, and
                # fewer figures keep this file quick)
                for det in r.get("details", {}).values():
                    det["reliability"] = [[n, c * 0.8 if c else c, a]
                                          for n, c, a in det["reliability"]]
                r.update(curves={}, weights={}, diagnostics=[], throughput={})
            store.write(r)
            if formulation == "bce" and r["strategy"] == "dwa" and r["seed"] == 1:
                failed = copy.deepcopy(r)
                failed.update(run_id="failed-dwa", seed=9, status="failed", summary=[],
                              details={}, reason="non-finite loss at epoch 2", failed_epoch=2)
                failed["config"]["seed"] = 9
                store.write(failed)
    out = root / "reports"
    code = main(["report", "--runs-dir", str(store.root), "--out", str(out), "--metric",
                 "macro_f1", "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tables(report_dir):
    return agg.Tables.read(report_dir / "tables")


def _expected_stems(tables):
    full = tables.setting(SOFTMAX)["slug"]
    return {"cd_diagram", "calibration_clsreg_species", f"pareto_{full}",
            f"curves_{full}_species", f"curves_{full}_body-mass", f"weights_{full}",
            f"gradcos_{full}", f"throughput_{full}", f"pareto_{tables.setting(BCE)['slug']}"}


def test_every_figure_is_written_as_png_and_svg_and_is_not_blank(report_dir, tables):
    figs = report_dir / "figures"
    stems = _expected_stems(tables)
    assert {p.name for p in figs.iterdir()} == {f"{s}.{e}" for s in stems for e in ("png", "svg")}
    for stem in stems:
        assert not figure_is_blank(figs / f"{stem}.png"), stem
        assert (figs / f"{stem}.png").stat().st_size > 10_000
        assert "<svg" in (figs / f"{stem}.svg").read_text()[:2000]


def test_html_is_self_contained(report_dir, tables):
    page = (report_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(_expected_stems(tables))
    for external in ('src="http', "<link", "<script", 'src="figures/', "url("):
        assert external not in page
    assert "<strong>" in page and "<table>" in page


def test_markdown_report_content(report_dir):
    md = (report_dir / "report.md").read_text()
    for heading in (f"## {BCE}", f"## {SOFTMAX}", "### Leaderboard", "### Sweep timers",
                    "### All test metrics", "### Paired tests against fixed",
                    "## Across task pairs",
                    "## Calibration by formulation: clsreg", "## Failed runs"):
        assert heading in md
    assert md.count("What this shows:") >= 6 + 2 + 2
    assert "| dwa | 2/3 (1 failed) |" in md  # the failed run is counted, not dropped
    assert "non-finite loss at epoch 2" in md
    assert "Friedman test over 2 settings and 3 strategies" in md
    # --metric macro_f1 picked the classification axis; the regression task keeps its first
    assert "species macro_f1 against body_mass mae" in md
    for line in md.splitlines():
        if line.startswith("!["):
            target = line.split("](")[1].rstrip(")")
            assert (report_dir / target).is_file()


def test_plot_functions_draw_one_artist_per_strategy(tables):
    s = tables.setting(SOFTMAX)
    ranked = [lb for lb in s["strategies"] if s["roles"][lb] in agg.RANKED_ROLES]
    assert ranked == ["fixed", "dwa", "uncertainty"]
    styles = plots.style_map(ranked, ["fixed"])
    assert len({st.color for st in styles.values()}) == 3
    curves = tables["curves"][tables["curves"]["setting"] == SOFTMAX]
    fig = plot_training.learning_curves(curves, SOFTMAX, "species", "accuracy", True, styles,
                                        ranked, "single-task")
    loss_ax, val_ax = fig.axes
    assert len(loss_ax.lines) == len(ranked) + 1 == len(val_ax.lines)  # + single-task
    assert len(val_ax.lines[0].get_xdata()) == 3  # epochs 0, 1, 2
    assert len(loss_ax.collections) == len(ranked) + 1  # CI bands (2 seeds each)

    weights = tables["weights"][tables["weights"]["setting"] == SOFTMAX]
    fig = plot_training.weight_trajectories(weights, SOFTMAX, ["species", "body_mass"], styles,
                                            ranked)
    assert [len(ax.lines) for ax in fig.axes] == [3, 3]

    pts = agg.pareto_points(tables, SOFTMAX, [("species", "accuracy"), ("body_mass", "mae")])
    fig = plots.pareto(pts, SOFTMAX, ("a", "b"), styles, directions=(True, False))
    (ax,) = fig.axes
    sweep = pts[pts["on_front"]]
    on = plots.nondominated(sweep[["a", "b"]].to_numpy(), True, False)
    front = [ln for ln in ax.lines if ln.get_label() == "_front points"]
    assert len(front) == 1 and sorted(front[0].get_xdata()) == sorted(sweep["a"][on])
    assert len(ax.containers) == len(ranked)  # one errorbar per strategy

    tp = tables["throughput"]
    tp = tp[(tp["setting"] == SOFTMAX) & tp["role"].isin(agg.RANKED_ROLES)]
    fig = plots.throughput_bars(tp, SOFTMAX, "fixed", styles, agg.PHASES)
    sps_ax, ms_ax = fig.axes[:2]
    assert len(sps_ax.patches) == 3 and len(ms_ax.patches) == 3 * len(agg.PHASES)
    assert not any("×" in t.get_text() for t in sps_ax.texts)  # sweep timers: never ranked

    diag = tables["diagnostics"][tables["diagnostics"]["setting"] == SOFTMAX]
    fig = plot_training.gradient_cosine(diag, SOFTMAX, styles, ranked)
    assert len(fig.axes[0].lines) == len(ranked) + 1  # + the zero line

    f = tables.meta["friedman"]
    cross = tables["cross_pair"]
    avg = dict(zip(cross["strategy"], cross["friedman_rank"]))
    fig = plots.cd_diagram(avg, f["cd"], f["cliques"], styles, "cd")
    names = [t.get_text().split(" (")[0] for t in fig.axes[0].texts]
    assert sorted(n for n in names if n in avg) == sorted(avg)


def test_calibration_panels_side_by_side(tables):
    ((name, group),) = formulation_groups(tables)
    assert name == "clsreg" and [s["options"]["formulation"] for s in group] == ["bce", "softmax"]
    det = tables["details"]
    panels = [(s["label"], det[det["setting"] == s["label"]], "fixed") for s in group]
    fig = plots.calibration(panels, "species", plots.style_map(["fixed", "dwa"]),
                            ["fixed", "dwa"], "t")
    assert len(fig.axes) >= 4  # two reliability panels over two confusion matrices (+ bars)
    assert sum(len(ax.images) for ax in fig.axes) == 2
    assert len(fig.axes[0].lines) == 3  # diagonal + two strategies


def test_task_metric_choice():
    task = {"name": "t", "metrics": ["mae", "rmse"]}
    assert task_metric(task, []) == "mae" and task_metric(task, ["accuracy", "rmse"]) == "rmse"


def test_unknown_metric_is_one_line_exit_2(report_dir, capsys):
    code = main(["report", "--tables", str(report_dir / "tables"), "--out",
                 str(report_dir.parent / "unused"), "--metric", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "--metric 'nope' is not a metric" in err
    assert len(err.strip().splitlines()) == 1


def test_report_without_tables_or_runs_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 2
    assert "runs folder 'runs' does not exist" in capsys.readouterr().err


def test_report_reads_only_tables_removes_stale_figures_and_opens(
        report_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the tables alone must do
    tables_dir = tmp_path / "tables"
    shutil.copytree(report_dir / "tables", tables_dir)
    meta = agg.Tables.read(tables_dir)
    # keep one setting so this second report stays quick
    keep = meta.meta["settings"][0]
    meta.meta["settings"] = [keep]
    meta.meta["friedman"] = {"reason": "one setting"}
    for name, frame in meta.frames.items():
        if "setting" in frame:
            meta.frames[name] = frame[frame["setting"] == keep["label"]]
        if name in ("curves", "weights", "diagnostics", "details"):  # one figure will do
            meta.frames[name] = frame.iloc[0:0]
    meta.write(tables_dir)
    stale = tmp_path / "out" / "figures" / "pareto_gone.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    code = main(["report", "--tables", str(tables_dir), "--out", str(tmp_path / "out"),
                 "--open"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    assert not stale.exists()
    assert opened == [(tmp_path / "out" / "report.html").resolve().as_uri()]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No cross-pair summary: one setting." in md
    assert {p.name for p in (tmp_path / "out" / "figures").iterdir()} == {
        f"pareto_{keep['slug']}.png", f"pareto_{keep['slug']}.svg"}


def test_all_failed_runs_give_a_report_without_empty_figures(report_dir, tmp_path):
    records = [r for r in RunStore(report_dir.parent / "runs").load().records
               if r["strategy"] in ("fixed", "dwa")][:4]
    for r in records:
        r.update(status="failed", reason="boom", summary=[], details={}, curves={}, weights={},
                 diagnostics=[], throughput={})
    files = write_report(agg.aggregate_records(records), tmp_path)
    assert files.figures == []
    md = files.markdown.read_text()
    assert "(1 failed)" in md or "(2 failed)" in md
    assert "## Failed runs" in md and "boom" in md


# -- figures and layout ------------------------------------------------------------------------
def _quick_tables(report_dir, folder):
    """The fixture's tables cut to one setting without curves, weights, diagnostics or details
    (a report of them draws one Pareto plot: quick)."""
    shutil.copytree(report_dir / "tables", folder)
    t = agg.Tables.read(folder)
    keep = t.meta["settings"][0]
    t.meta["settings"] = [keep]
    t.meta["friedman"] = {"reason": "one setting"}
    for name, frame in t.frames.items():
        if "setting" in frame:
            t.frames[name] = frame[frame["setting"] == keep["label"]]
        if name in ("curves", "weights", "diagnostics", "details"):
            t.frames[name] = frame.iloc[0:0]
    t.write(folder)
    return keep


@pytest.mark.parametrize("browser", ["none", "error"])
def test_open_without_a_browser_prints_where_the_report_is_and_exits_0(
        report_dir, tmp_path, monkeypatch, capsys, browser):
    import webbrowser

    _quick_tables(report_dir, tmp_path / "tables")
    orphan = tmp_path / "out" / "figures" / ".pareto_x.png.k2j3.tmp"  # a killed report's
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")

    def no_browser(url):
        if browser == "error":
            raise webbrowser.Error("could not locate runnable browser")
        return False

    monkeypatch.setattr("webbrowser.open", no_browser)
    code = main(["report", "--tables", str(tmp_path / "tables"), "--out",
                 str(tmp_path / "out"), "--open", "--quiet"])
    out = capsys.readouterr()
    page = (tmp_path / "out" / "report.html").resolve()
    assert code == 0 and out.err == ""
    assert str(page) in out.out and "no web browser" in out.out
    assert page.is_file() and not orphan.exists()


def test_pareto_option_picks_the_pair_and_rejects_unknown_tasks(report_dir, tmp_path, capsys):
    keep = _quick_tables(report_dir, tmp_path / "tables")
    args = ["report", "--tables", str(tmp_path / "tables"), "--out", str(tmp_path / "out"),
            "--quiet"]
    assert main([*args, "--pareto", "body_mass,species"]) == 0
    assert {p.name for p in (tmp_path / "out" / "figures").iterdir()} == {
        f"pareto_{keep['slug']}_body-mass_species.{e}" for e in ("png", "svg")}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "body_mass mae against species accuracy" in md
    for bad, why in (("nope,species", "no setting has both tasks; tasks: species, body_mass"),
                     ("species", "should be two different task names")):
        assert main([*args, "--pareto", bad]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1


def test_html_has_contents_linking_every_section_and_tables_that_fit(report_dir, tables):
    import re

    page = (report_dir / "report.html").read_text()
    ids = re.findall(r'<h[23] id="([^"]+)">', page)
    headings = re.findall(r"<h[23][ >]", page)
    assert len(ids) == len(set(ids)) == len(headings) - 1  # all but the "Contents" heading
    nav = page[page.index('<nav class="toc">'):page.index("</nav>")]
    assert re.findall(r'href="#([^"]+)"', nav) == ids
    assert page.index("</nav>") < page.index("<h2 id=")  # at the top, after the introduction
    # the leaderboard (the table with the mean rank) opens every setting's section
    for s in tables.meta["settings"]:
        section = page[page.index(f'<h2 id="{s["slug"]}">'):]
        first_table = section[section.index("<table>"):section.index("</thead>")]
        assert "mean rank" in first_table
        assert section.index("<table>") < section.index("<figure>")
    # no fixed width that pushes the last columns behind a scroll bar; values break only
    # before their ± interval
    assert "1300px" not in page and "td { white-space: nowrap" not in page
    assert "±&nbsp;" in page and "max-width: 1800px" in page


def test_calibration_figure_for_a_pair_without_a_formulation_option(report_dir, tmp_path):
    records = RunStore(report_dir.parent / "raw").load().records
    for r in records:  # keep the details (reliability bins), drop what only other figures use
        r.update(curves={}, weights={}, diagnostics=[], throughput={})
    tables = agg.aggregate_records(records)
    (s,) = tables.meta["settings"]
    assert "formulation" not in s["options"] and formulation_groups(tables) == []
    files = write_report(tables, tmp_path)
    png = tmp_path / "figures" / f"calibration_{s['slug']}_species.png"
    assert png in files.figures and not figure_is_blank(png)
    md = files.markdown.read_text()
    section = md[md.index(f"## {s['label']}"):]
    assert "### Calibration" in section and "calibration gap" in section
    assert "Calibration by formulation" not in md


def test_selected_epochs_per_strategy_and_task(tables):
    from mtl_bench.report import selected_epochs

    sel = selected_epochs(tables, SOFTMAX, ["species", "body_mass"])
    runs = tables["runs"]
    runs = runs[(runs["setting"] == SOFTMAX) & (runs["status"] == "ok")]
    fixed = runs[runs["strategy"] == "fixed"]["selected_epoch"].tolist()
    assert sel[("fixed", "species")] == sel[("fixed", "body_mass")] == fixed
    alone = runs[(runs["strategy"] == "single-task") & (runs["single_task"] == "species")]
    assert sel[("single-task", "species")] == alone["selected_epoch"].tolist()
    assert len(alone) == 2  # the single-task runs of the other task are not mixed in


@pytest.fixture(scope="module")
def ten_task_report(tmp_path_factory):
    """GradNorm's toy with 10 tasks, one seed, one epoch: the layouts for many tasks."""
    root = tmp_path_factory.mktemp("ten")
    assert main(["run", "--task", "gradnorm-toy", "--set", "gradnorm-toy.n_tasks=10",
                 "--strategy", "fixed,pcgrad", "--seeds", "1", "--epochs", "1", "--runs-dir",
                 str(root / "runs"), "--quiet", "--jobs", "1"]) == 0
    assert main(["report", "--runs-dir", str(root / "runs"), "--out", str(root / "out"),
                 "--quiet"]) == 0
    return root / "out"


def test_ten_tasks_get_grids_a_cosine_matrix_and_three_pareto_pairs(ten_task_report):
    from matplotlib.image import imread

    figs = ten_task_report / "figures"
    slug = "gradnorm-toy-n-tasks-10"
    stems = {p.stem for p in figs.glob("*.png")}
    assert stems == {f"curves_{slug}", f"losses_{slug}", f"weights_{slug}", f"gradcos_{slug}",
                     f"throughput_{slug}",
                     *(f"pareto_{slug}_task1_task{i}" for i in (2, 3, 4))}
    for stem in stems:
        width = imread(str(figs / f"{stem}.png")).shape[1]
        assert width <= plots.MAX_WIDTH_PX, (stem, width)
        assert not figure_is_blank(figs / f"{stem}.png")
    md = (ten_task_report / "report.md").read_text()
    assert "one matrix per strategy" in md and "relative to its first value" in md
