"""Task pairs from pandas DataFrames: one table per task, chosen metrics, and the exact splits
that ``export splits`` hands to outside baselines.

The two worked examples are read from docs/tasks.md and run, so the documentation cannot drift
from what works. Expected split sizes, standardised inputs and de-standardised targets are
recomputed here from the tables by hand (numpy), not by calling the code under test.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl_bench import export_splits, registry
from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import frame_task_pair
from mtl_bench.train import RunConfig, build_task_pair, train_run

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "tasks.md"


def doc_block(marker: str) -> str:
    text = DOC.read_text()
    assert f"<!-- example: {marker} -->" in text, f"docs/tasks.md lost its {marker} example"
    return text.split(f"<!-- example: {marker} -->", 1)[1].split("```python\n", 1)[1] \
        .split("```", 1)[0]


def _main(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def registered():
    """Names registered by a test are removed afterwards."""
    before = set(registry.tasks.names())
    yield
    for name in set(registry.tasks.names()) - before:
        registry.tasks.unregister(name)


# -- tables used below -------------------------------------------------------------------------
def class_table() -> pd.DataFrame:
    """200 rows, classes 120 / 60 / 20 (imbalanced), a text input; index labels 1000, 1007..."""
    rng = np.random.default_rng(0)
    label = np.repeat(["bird", "cat", "dog"], [120, 60, 20])
    return pd.DataFrame({"a": rng.normal(5, 2, 200), "b": rng.normal(-1, 3, 200),
                         "site": rng.choice(["north", "south"], 200), "kind": label},
                        index=1000 + 7 * np.arange(200))


def reg_table() -> pd.DataFrame:
    """60 rows, 3 with a missing target; the site column has a value the other table lacks."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 60), rng.normal(2, 1, 60)
    y = 3 * a - b + 100 + rng.normal(0, 0.1, 60)
    y[[4, 9, 30]] = np.nan
    return pd.DataFrame({"a": a, "b": b, "site": rng.choice(["east", "north"], 60), "y": y})


def tables_pair(**kwargs):
    return frame_task_pair("t-tables", tasks={"kind": (class_table, "kind", CLASSIFICATION),
                                              "y": (reg_table, "y", REGRESSION)},
                           inputs=["a", "b", "site"], register=False, **kwargs)


def expected_sizes(n: int) -> list[int]:
    """60 / 20 / 20 by the rounding rule of the splits: round(0.6 n), round(0.2 n), the rest."""
    a = int(round(0.6 * n))
    b = int(round(0.2 * n))
    return [a, b, n - a - b]


# -- one table per task ------------------------------------------------------------------------
def test_per_task_tables_keep_their_sizes_and_stratify_each_table():
    pair = tables_pair()()
    assert [(t.name, t.kind, t.n_outputs) for t in pair.tasks()] == [
        ("kind", CLASSIFICATION, 3), ("y", REGRESSION, 1)]
    data = pair.load(0)
    # stratified per class: 120 -> 72/24/24, 60 -> 36/12/12, 20 -> 12/4/4
    assert data.info["per_task_sizes"] == {"kind": [120, 40, 40], "y": expected_sizes(57)}
    assert data.info["rows_dropped_missing"] == {"kind": 0, "y": 3}
    assert data.train.sizes() == [120, 34] and not data.train.shared_inputs
    for split, counts in (("train", [72, 36, 12]), ("val", [24, 12, 4]), ("test", [24, 12, 4])):
        labels = data.splits()[split].targets[0].numpy()
        assert np.bincount(labels, minlength=3).tolist() == counts
    # the text input is one-hot over the values of both tables, in one place for both
    assert data.info["features"] == ["a", "b", "site_east", "site_north", "site_south"]
    assert data.info["classes"] == {"kind": ["bird", "cat", "dog"]}
    assert [x.shape[1] for x in data.train.inputs] == [5, 5]
    # the seed changes the split, the same seed gives the same one
    assert pair.load(0).info["split_sha"] == data.info["split_sha"] != \
        pair.load(1).info["split_sha"]


def test_per_task_tables_train_under_a_sampling_policy(registered):
    registry.register_task("t-tables-run")(tables_pair(epochs=1))
    rec = train_run(RunConfig(task="t-tables-run", strategy="fixed", sampling="equal"))
    assert rec["status"] == "ok", rec.get("reason")
    assert rec["config"]["sampling"] == "equal"
    assert rec["data"]["per_task_sizes"]["y"] == expected_sizes(57)


@pytest.mark.parametrize("change, message", [
    (lambda a, b: (a.drop(columns="kind"), b),
     r"task pair 't-tables': column\(s\) 'kind' not in the table of task 'kind'; its columns "
     r"are: a, b, site"),
    (lambda a, b: (a, b.drop(columns="site")),
     "input column 'site' is in the table of task 'kind' but not in that of task 'y'; every "
     "table needs every input column"),
    (lambda a, b: (a, b.assign(a=b["a"].astype(str))),
     "input column 'a' is numeric in the table of task 'kind' but not in that of task 'y'"),
    (lambda a, b: (a, b.iloc[:0]), "the table of task 'y' is empty"),
    (lambda a, b: (a, b.iloc[:5]),
     r"the table of task 'y' has 4 usable row\(s\) \(1 of 5 dropped for missing values\); at "
     "least 5 are needed"),
    (lambda a, b: (a, b.assign(y=np.nan)), "no row is left in the table of task 'y'"),
    (lambda a, b: (a, b.to_numpy()), "the table of task 'y' should be a pandas DataFrame, got "
                                     "ndarray"),
    (lambda a, b: (a, b.assign(y="many")), "regression column 'y' is not numeric"),
])
def test_per_task_table_errors_name_the_pair_and_the_task(change, message):
    first, second = change(class_table(), reg_table())
    cls = frame_task_pair("t-tables", tasks={"kind": (lambda: first, "kind", CLASSIFICATION),
                                             "y": (lambda: second, "y", REGRESSION)},
                          inputs=["a", "b", "site"], register=False)
    with pytest.raises(UserError, match=message):
        cls().load(0)


def test_per_task_table_definition_errors():
    def broken():
        raise FileNotFoundError("ages.csv")

    cls = frame_task_pair("t-tables", tasks={"y": (broken, "y", REGRESSION)}, inputs=["a"],
                          register=False)
    with pytest.raises(UserError, match="loading the table of task 'y' failed: "
                                        "FileNotFoundError: ages.csv"):
        cls().tasks()
    with pytest.raises(UserError, match="either one table .* or tasks=, not both"):
        frame_task_pair("t", reg_table, inputs=["a"], regression="y",
                        tasks={"y": (reg_table, "y", REGRESSION)}, register=False)
    with pytest.raises(UserError, match=r"tasks\['y'\] should be \(a function"):
        frame_task_pair("t", tasks={"y": (reg_table, "y", "ordinal")}, inputs=["a"],
                        register=False)
    with pytest.raises(UserError, match="needs input columns and at least one task"):
        frame_task_pair("t", tasks={"y": (reg_table, "y", REGRESSION)}, register=False)


# -- metrics= and primary= ---------------------------------------------------------------------
def one_table() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 120)
    return pd.DataFrame({"x": x, "c": np.where(x + rng.normal(0, 0.5, 120) > 0, "hi", "lo"),
                         "y": 2 * x + rng.normal(0, 0.1, 120)})


@pytest.mark.parametrize("metrics, primary, message", [
    ({"c": ["accuracy", "mae"]}, None,
     "metric 'mae' of 'c' is a regression metric; a classification task takes: accuracy"),
    ({"y": ["nope"]}, None, "metric 'nope' of 'y' is an unknown metric; a regression task "
                            "takes: mae, rmse, r2"),
    ({"c": []}, None, "metrics of 'c' is empty; choose from: accuracy"),
    ({"c": ["auroc", "auroc"]}, None, "metrics of 'c' name a metric twice"),
    ({"z": ["mae"]}, None, r"metrics names z, which are not its tasks \(c, y\)"),
    ({"c": ["accuracy", "ece"]}, {"c": "auroc"},
     r"primary metric 'auroc' of 'c' is not one of its metrics \(accuracy, ece\)"),
    (None, {"y": "accuracy"}, r"primary metric 'accuracy' of 'y' is not one of its metrics "
                              r"\(mae, rmse, r2\)"),
])
def test_metrics_and_primary_are_validated_against_the_registry_and_kind(metrics, primary,
                                                                         message):
    with pytest.raises(UserError, match=message):
        frame_task_pair("t-metrics", one_table, inputs=["x"], classification="c",
                        regression="y", metrics=metrics, primary=primary, register=False)
    # the same rules for one table per task (keys are task names there)
    with pytest.raises(UserError, match=message):
        frame_task_pair("t-metrics", tasks={"c": (one_table, "c", CLASSIFICATION),
                                            "y": (one_table, "y", REGRESSION)},
                        inputs=["x"], metrics=metrics, primary=primary, register=False)


def test_chosen_metrics_reach_the_run_record(registered):
    frame_task_pair("t-metrics", one_table, inputs=["x"], classification="c", regression="y",
                    metrics={"c": ["accuracy", "auroc"], "y": "r2"},
                    primary={"c": "auroc"}, epochs=1)
    pair = build_task_pair("t-metrics", {})
    assert [(t.name, t.metrics, t.primary) for t in pair.tasks()] == [
        ("c", ("accuracy", "auroc"), "auroc"), ("y", ("r2",), "r2")]
    rec = train_run(RunConfig(task="t-metrics", strategy="fixed"))
    assert rec["status"] == "ok", rec.get("reason")
    reported = {(r[1], r[2], r[3]) for r in rec["summary"]}
    assert ("test", "c", "auroc") in reported and ("test", "y", "r2") in reported
    assert ("test", "c", "macro_f1") not in reported and ("test", "y", "mae") not in reported
    auroc = {r[4] for r in rec["summary"] if r[1:4] == ["test", "c", "auroc"]}
    assert all(0.0 <= v <= 1.0 for v in auroc)


# -- the documented examples -------------------------------------------------------------------
def test_documented_two_datasets_example_runs_from_the_command_line(tmp_path, capsys,
                                                                    registered):
    plugin = tmp_path / "two_frames.py"
    plugin.write_text(doc_block("two-datasets"))
    runs = tmp_path / "runs"
    code, out, err = _main(["--plugin", str(plugin), "run", "--task", "two-frames",
                            "--strategy", "fixed", "--epochs", "1", "--seeds", "1",
                            "--runs-dir", str(runs), "--quiet"], capsys)
    assert code == 0, err
    (path,) = runs.glob("*/*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record.get("reason")
    assert record["data"]["per_task_sizes"] == {"age": expected_sizes(150),
                                                "sex": [720, 240, 240]}
    reported = {(r[1], r[2], r[3]) for r in record["summary"]}
    assert {("test", "sex", "auroc"), ("test", "sex", "ece"), ("test", "age", "mae")} <= reported
    pair = registry.tasks.get("two-frames")()
    assert {t.name: t.primary for t in pair.tasks()} == {"age": "mae", "sex": "auroc"}
    # the plug-in's pair exports like a built-in one (a fresh process loads the file once)
    registry.tasks.unregister("two-frames")
    out_file = tmp_path / "two.csv"
    code, out, err = _main(["--plugin", str(plugin), "export", "splits", "--task",
                            "two-frames", "--seed", "0", "--out", str(out_file)], capsys)
    assert code == 0, err
    table = pd.read_csv(out_file)
    assert table.groupby("task").size().to_dict() == {"age": 150, "sex": 1200}


def test_documented_outside_baseline_example_scores_penguins():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(doc_block("outside-baseline"), "docs/tasks.md", "exec"), {})
    lines = dict(line.split(": test ") for line in buffer.getvalue().splitlines())
    assert set(lines) == {"species", "body_mass"}
    metric, value = lines["species"].split(" = ")
    # species is almost linearly separable from bill and flipper sizes
    assert metric == "accuracy" and float(value) >= 0.95
    metric, value = lines["body_mass"].split(" = ")
    # body mass (sd about 800 g) is predicted within a few hundred grams by a linear model
    assert metric == "mae" and 100 < float(value) < 400


# -- exact splits ------------------------------------------------------------------------------
def hand_standardised(tables: list[pd.DataFrame], train_rows: list[np.ndarray]) -> list:
    """Inputs a, b, site one-hot (east, north, south), standardised by the pooled training
    rows of every table, recomputed with numpy."""
    def raw(t: pd.DataFrame) -> np.ndarray:
        return np.column_stack([t["a"], t["b"], *(t["site"] == s for s in
                                                  ("east", "north", "south"))]).astype(float)

    pooled = np.concatenate([raw(t.loc[r]) for t, r in zip(tables, train_rows)])
    std = pooled.std(axis=0)
    std[std == 0] = 1.0
    return [(raw(t) - pooled.mean(axis=0)) / std for t in tables]


def test_exported_csv_holds_the_exact_splits_of_per_task_tables(tmp_path, capsys, registered):
    registry.register_task("t-tables-export")(tables_pair())
    out = tmp_path / "splits.csv"
    code, stdout, err = _main(["export", "splits", "--task", "t-tables-export", "--seed", "3",
                               "--out", str(out)], capsys)
    assert code == 0, err
    assert "wrote 257 rows of 't-tables-export' (seed 3: " in stdout
    table = pd.read_csv(out)
    assert list(table.columns[:3]) == ["split", "task", "row"]
    pair = build_task_pair("t-tables-export", {})
    data = pair.load(3)
    originals = {"kind": class_table(), "y": reg_table().dropna()}
    train_rows = [table[(table.task == t) & (table.split == "train")]["row"].to_numpy()
                  for t in ("kind", "y")]
    by_hand = hand_standardised(list(originals.values()), train_rows)
    inputs = ["a", "b", "site_east", "site_north", "site_south"]
    for i, task in enumerate(("kind", "y")):
        original = originals[task]
        rows_seen = []
        for split in ("train", "val", "test"):
            part = table[(table.task == task) & (table.split == split)]
            # membership and order: the model's split, row for row
            model_x = data.splits()[split].input_for(i).numpy()
            assert len(part) == len(model_x)
            np.testing.assert_array_equal(part[inputs].to_numpy(np.float32), model_x)
            positions = original.index.get_indexer(part["row"])
            assert (positions >= 0).all()
            np.testing.assert_allclose(part[inputs].to_numpy(), by_hand[i][positions],
                                       rtol=1e-5, atol=1e-6)
            rows_seen += part["row"].tolist()
            if task == "kind":
                codes = data.splits()[split].targets[i].numpy()
                np.testing.assert_array_equal(part["kind"].to_numpy(), codes)
                assert (part["kind_label"].to_numpy() ==
                        original["kind"].to_numpy()[positions]).all()
                assert part["y"].isna().all()
            else:
                truth = original["y"].to_numpy()[positions]
                train_mean = original.loc[train_rows[1], "y"].mean()
                # float32 rounding of the standardised target: error ~ 6e-8 |y - mean|
                assert np.all(np.abs(part["y"].to_numpy() - truth)
                              <= 2e-7 * np.abs(truth - train_mean) + 1e-9)
                assert part["kind"].isna().all()
        # every usable row exactly once, the dropped ones never
        assert sorted(rows_seen) == sorted(original.index.tolist())


def test_exported_one_table_pair_keeps_labels_rows_and_every_target(registered):
    def orders() -> pd.DataFrame:
        frame = one_table()
        frame.loc[[3, 50], "y"] = np.nan  # dropped
        return frame.set_index(pd.Index([f"order-{k}" for k in range(len(frame))]))

    frame_task_pair("t-orders", orders, inputs=["x"], classification="c", regression="y")
    table = export_splits.split_frame("t-orders", seed=2)
    assert list(table.columns) == ["split", "row", "x", "c", "c_label", "y"]
    assert len(table) == 118 and not {"order-3", "order-50"} & set(table["row"])
    source = orders().loc[table["row"]]
    assert (table["c_label"].to_numpy() == source["c"].to_numpy()).all()
    assert (table["c"].to_numpy() == (source["c"].to_numpy() == "lo")).all()  # hi=0, lo=1
    np.testing.assert_allclose(table["y"], source["y"], rtol=0, atol=1e-6)
    data = build_task_pair("t-orders", {}).load(2)
    assert table.groupby("split").size().to_dict() == {
        "train": data.info["n_train"], "val": data.info["n_val"], "test": data.info["n_test"]}
    assert table.attrs["tasks"]["c"] == {"kind": CLASSIFICATION,
                                         "metrics": ["accuracy", "macro_f1", "ece"],
                                         "primary": "accuracy"}


@pytest.mark.parametrize("name", registry.tasks.names())
def test_every_registered_pair_exports_every_row_once(name):
    pair = build_task_pair(name, {})
    data = pair.load(1)
    table = export_splits.split_frame(name, seed=1)
    sizes = {s: data.splits()[s].sizes() for s in ("train", "val", "test")}
    for s, per_task in sizes.items():
        n = per_task[0] if data.train.shared_inputs else sum(per_task)
        assert (table["split"] == s).sum() == n
    inputs = table.attrs["inputs"]
    assert len(inputs) == int(np.prod(data.train.inputs[0].shape[1:]))
    for i, task in enumerate(pair.tasks()):
        rows = table if data.train.shared_inputs else table[table["task"] == task.name]
        got = rows[rows["split"] == "test"][inputs].to_numpy(np.float32)
        np.testing.assert_array_equal(
            got, data.test.input_for(i).reshape(len(got), -1).numpy())


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet export needs pyarrow, not installed here")
    out = tmp_path / "splits.parquet"
    assert main(["export", "splits", "--task", "clsreg", "--seed", "0", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), export_splits.split_frame("clsreg", 0),
                                  check_like=False)


def test_parquet_without_pyarrow_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_splits, "has_pyarrow", lambda: False)
    code, _, err = _main(["export", "splits", "--task", "clsreg", "--out",
                          str(tmp_path / "a.parquet")], capsys)
    assert code == 2 and err.count("\n") == 1 and "pyarrow" in err
    assert not (tmp_path / "a.parquet").exists()


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task pair 'nope'; choose from: "),
    (["--task", "clsreg", "--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    (["--task", "clsreg", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--task", "clsreg", "--option", "dataset"], "--option expects KEY=VALUE"),
    (["--task", "clsreg", "--option", "dataset=bogus"], "Parameter `dataset` should be one of"),
    (["--task", "clsreg", "--option", "colour=red"], "task pair 'clsreg' has no option"),
])
def test_export_errors_are_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "a.csv"
    code, _, err = _main(["export", "splits", *args, "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()


def test_export_to_a_bad_path_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for out, message in ((tmp_path / "a.xlsx", "cannot tell the format of"),
                         (blocker / "a.csv", "is a file, not a folder"),
                         (tmp_path / "missing" / "a.csv", "does not exist")):
        code, _, err = _main(["export", "splits", "--task", "clsreg", "--out", str(out)],
                             capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not out.exists()


def test_seed_and_options_of_the_python_function_are_checked():
    with pytest.raises(UserError, match="--seed must be an integer"):
        export_splits.split_frames("clsreg", seed=1.5)
    frames = export_splits.split_frames("clsreg", seed=0, dataset="cars")
    assert set(frames) == {"origin", "mpg"}
    assert frames["mpg"].attrs["primary"] == "mae" and frames["origin"].attrs["inputs"][0] == \
        "Cylinders"
