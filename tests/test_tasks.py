"""Task pairs: data loading, generator knobs, bad input, formulations and short runs."""

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mtl_bench import registry
from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.metrics import counts_from_confusion
from mtl_bench.strategy import CLASSIFICATION, REGRESSION
from mtl_bench.task import (
    Split,
    bce_onehot_loss,
    check_labels,
    frame_task_pair,
    make_separate_splits,
    make_splits,
    sigmoid_proba,
)
from mtl_bench.tasks._genomic import GenomicSpec, generate
from mtl_bench.train import RunConfig, build_task_pair, train_run

# (pair, options) for every data set / formulation this suite ships
VARIANTS = [
    ("clsreg", {}),
    ("clsreg", {"dataset": "cars"}),
    ("clsreg", {"dataset": "synthetic", "n_samples": 300}),
    ("clsreg-2sets", {"n_samples": 600}),
    ("multilabel-vs-softmax", {"formulation": "bce", "n_samples": 600}),
    ("multilabel-vs-softmax", {"formulation": "softmax", "n_samples": 600}),
    ("multilabel-vs-softmax", {"dataset": "diabetes"}),
    ("age-gender", {"n_samples": 600}),
    ("age-gender", {"age": "bins", "n_samples": 600}),
    ("age-gender", {"dataset": "diabetes"}),
]


def _ids(variants):
    return [f"{p}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for p, o in variants]


def _check_split(split: Split, tasks) -> None:
    assert len(split.targets) == len(tasks)
    for i, task in enumerate(tasks):
        x, y = split.input_for(i), split.targets[i]
        assert x.dtype == torch.float32 and x.ndim == 2 and len(x) == len(y) > 0
        assert torch.isfinite(x).all()
        if task.kind == CLASSIFICATION:
            assert y.dtype == torch.long
            assert 0 <= int(y.min()) and int(y.max()) < task.n_outputs
        else:
            assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(registry.tasks.names()))
def test_every_registered_pair_loads_in_range_and_deterministically(name):
    pair = build_task_pair(name, {})
    tasks = pair.tasks()
    assert pair.description and "\n" not in pair.description
    a, b = pair.load(0), pair.load(0)
    for split in a.splits().values():
        _check_split(split, tasks)
    for sa, sb in zip(a.splits().values(), b.splits().values()):
        assert all(torch.equal(x, y) for x, y in zip(sa.inputs, sb.inputs))
        assert all(torch.equal(x, y) for x, y in zip(sa.targets, sb.targets))


@pytest.mark.parametrize("name,options", VARIANTS, ids=_ids(VARIANTS))
def test_variants_load_with_train_statistics(name, options):
    pair = build_task_pair(name, options)
    data = pair.load(0)
    tasks = pair.tasks()
    for split in data.splits().values():
        _check_split(split, tasks)
    # inputs standardised with training statistics (pooled over per-task sets)
    train_x = torch.cat(list(data.train.inputs))
    assert train_x.mean(0).abs().max() < 1e-4
    assert ((train_x.std(0, unbiased=False) - 1).abs() < 1e-3).all() | (train_x.std(0) == 0).all()
    for task, stats in zip(tasks, data.target_stats):
        assert (stats is None) == (task.kind == CLASSIFICATION)
    # the split is fixed by the seed and its fingerprint stored with the record
    assert pair.load(0).info["split_sha"] == data.info["split_sha"] != pair.load(1).info[
        "split_sha"]


def test_cars_dataset_drops_rows_with_missing_values_and_counts_them():
    data = build_task_pair("clsreg", {"dataset": "cars"}).load(0)
    # the shipped table: 406 cars, 8 without miles per gallon, 6 without horsepower
    assert data.info["rows_total"] == 406 and data.info["rows_dropped_missing"] == 14
    assert data.info["n_train"] + data.info["n_val"] + data.info["n_test"] == 392
    assert data.info["classes"] == ["Europe", "Japan", "USA"]
    names = [t.name for t in build_task_pair("clsreg", {"dataset": "cars"}).tasks()]
    assert names == ["origin", "mpg"]


def test_diabetes_inputs_and_age_classes():
    pair = build_task_pair("multilabel-vs-softmax", {"dataset": "diabetes"})
    data = pair.load(0)
    assert data.n_features == [8]
    assert data.info["rows_dropped_missing"] == 0 and data.info["rows_total"] == 442
    counts = np.bincount(torch.cat([s.targets[0] for s in data.splits().values()]).numpy())
    assert counts.tolist() == [44, 73, 97, 125, 103]  # <30, 30s, 40s, 50s, 60+


def test_two_sets_sizes_follow_the_ratio():
    data = build_task_pair("clsreg-2sets", {"n_samples": 1000, "size_ratio": 10}).load(0)
    assert not data.train.shared_inputs
    n_cls, n_reg = (sum(v) for v in data.info["per_task_sizes"].values())
    assert (n_cls, n_reg) == (1000, 100)
    assert data.train.sizes() == [600, 60]


# -- the genomic generator ---------------------------------------------------------------------
def _centroid_accuracy(x, y, n_train):
    """Nearest class centroid fitted on the first n_train rows, scored on the rest."""
    centroids = np.stack([x[:n_train][y[:n_train] == c].mean(0) for c in (0, 1)])
    pred = ((x[n_train:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return (pred == y[n_train:]).mean()


def test_more_sex_linked_genes_make_sex_easier():
    acc = []
    for n_sex in (1, 4, 16):
        c = generate(GenomicSpec(n_samples=2000, n_genes=40, n_sex_genes=n_sex,
                                 n_age_genes=10, sex_effect=0.6))
        acc.append(_centroid_accuracy(c.x, c.sex, 1000))
    # two classes with mean gap 0.6 on k genes, unit noise: Bayes accuracy Phi(0.3 sqrt(k))
    # = 0.62, 0.73, 0.89 (batch effects and the estimation of centroids cost a little)
    assert acc[0] < acc[1] < acc[2]
    assert acc[2] > 0.8 and acc[0] < 0.7


def test_stronger_age_effect_makes_age_genes_track_age():
    def corr(effect):
        c = generate(GenomicSpec(n_samples=1000, age_effect=effect))
        lo, hi = c.info["age_genes"]
        return np.abs([np.corrcoef(c.x[:, g], c.age)[0, 1] for g in range(lo, hi)]).mean()

    assert corr(0.0) < 0.1 < corr(1.0) < corr(3.0)


def test_imbalance_batch_effect_and_sex_ratio_knobs():
    spec = GenomicSpec(n_samples=20000, n_genes=10, n_sex_genes=1, n_age_genes=1,
                       n_age_classes=4, age_imbalance=8.0, female_fraction=0.25)
    c = generate(spec)
    counts = np.bincount(c.age_class)
    # class k has probability proportional to 8^(-k/3): 1, 1/2, 1/4, 1/8
    np.testing.assert_allclose(counts / counts.sum(), np.array([8, 4, 2, 1]) / 15, atol=0.01)
    assert abs((c.sex == 0).mean() - 0.25) < 0.01
    assert ((c.age >= 0) & (c.age < spec.max_age)).all()
    assert (np.floor(c.age / (spec.max_age / 4)) == c.age_class).all()

    def batch_spread(effect):
        d = generate(GenomicSpec(n_samples=3000, n_genes=50, batch_effect=effect,
                                 n_sex_genes=0, n_age_genes=0))
        means = np.stack([d.x[d.batch == b].mean(0) for b in range(3)])
        return means.std(0).mean()

    assert batch_spread(0.0) < 0.05 < batch_spread(1.0)


def test_generator_is_fixed_by_its_seed():
    a, b = generate(GenomicSpec(n_samples=100)), generate(GenomicSpec(n_samples=100))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.age, b.age)
    assert not np.array_equal(a.x, generate(GenomicSpec(n_samples=100, cohort_seed=5)).x)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,message", [
    ("multilabel-vs-softmax", {"n_sex_gene": 3},
     "task pair 'multilabel-vs-softmax' has no option(s) n_sex_gene; its options are: "),
    ("age-gender", {"dataset": "diabetes", "n_genes": 10},
     "task pair 'age-gender': option(s) n_genes apply to dataset=genomic only"),
    ("age-gender", {"age": "years"}, "Parameter `age` should be one of regression, bins"),
    ("multilabel-vs-softmax", {"formulation": "sigmoid"}, "Parameter `formulation`"),
    ("multilabel-vs-softmax", {"n_sex_genes": 90, "n_age_genes": 20},
     "Parameter `n_age_genes` should be at most n_genes - n_sex_genes (10)"),
    ("age-gender", {"female_fraction": 1.0}, "Parameter `female_fraction`"),
    ("clsreg", {"dataset": "mnist"}, "Parameter `dataset` should be one of penguins, cars"),
    ("clsreg-2sets", {"n_samples": 100, "size_ratio": 10},
     "task pair 'clsreg-2sets': n_samples / size_ratio = 100 / 10 leaves 10 regression rows"),
])
def test_bad_options_are_one_line_user_errors(name, options, message):
    with pytest.raises(UserError) as err:
        build_task_pair(name, options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_dataset_that_fails_to_load_names_the_pair(monkeypatch):
    import sklearn.datasets

    def broken(*args, **kwargs):
        raise OSError("file is corrupt")

    monkeypatch.setattr(sklearn.datasets, "load_diabetes", broken)
    with pytest.raises(UserError, match="task pair 'age-gender': dataset 'diabetes' failed to "
                                        "load: OSError: file is corrupt"):
        build_task_pair("age-gender", {"dataset": "diabetes"}).load(0)
    monkeypatch.setattr(pd, "read_json", broken)
    with pytest.raises(UserError, match="task pair 'clsreg': dataset 'cars' failed to load"):
        build_task_pair("clsreg", {"dataset": "cars"}).load(0)


def test_empty_split_and_labels_out_of_range():
    with pytest.raises(UserError, match="task pair 'p': the val split is empty"):
        make_splits(np.zeros((2, 1)), [np.zeros(2)], [REGRESSION], 0, pair="p")
    with pytest.raises(UserError, match="task pair 'p': the dataset is empty"):
        make_splits(np.zeros((0, 1)), [np.zeros(0)], [REGRESSION], 0, pair="p")
    with pytest.raises(UserError, match="labels of task 'sex' fall outside 0..1 .found 0..2"):
        check_labels("p", "sex", np.array([0, 2]), 2)
    xs, ys = [np.zeros((50, 2)), np.zeros((2, 2))], [np.zeros(50), np.zeros(2)]
    with pytest.raises(UserError, match="task pair 'p': the val split of task 'b' is empty"):
        make_separate_splits(xs, ys, [REGRESSION] * 2, 0, pair="p", task_names=["a", "b"])
    with pytest.raises(UserError, match="task pair 'p': the per-task inputs differ in width"):
        make_separate_splits([np.zeros((50, 2)), np.zeros((50, 3))], [np.zeros(50)] * 2,
                             [REGRESSION] * 2, 0, pair="p")


# -- the two formulations ----------------------------------------------------------------------
def test_split_bce_equals_one_sigmoid_layer_with_block_weights():
    torch.manual_seed(0)
    logits_age, logits_sex = torch.randn(7, 18), torch.randn(7, 2)
    age, sex = torch.randint(0, 18, (7,)), torch.randint(0, 2, (7,))
    # one (18 + 2)-unit layer, BCE averaged over all 20 units, multi-hot target
    target = torch.cat([F.one_hot(age, 18), F.one_hot(sex, 2)], dim=1).float()
    one_layer = F.binary_cross_entropy_with_logits(torch.cat([logits_age, logits_sex], 1), target)
    split = (18 * bce_onehot_loss(logits_age, age) + 2 * bce_onehot_loss(logits_sex, sex)) / 20
    torch.testing.assert_close(split, one_layer)
    # and the block loss is the textbook -[y log s + (1 - y) log(1 - s)], mean over units
    s, y = torch.sigmoid(logits_sex), F.one_hot(sex, 2).float()
    by_hand = -(y * s.log() + (1 - y) * (1 - s).log()).mean()
    torch.testing.assert_close(bce_onehot_loss(logits_sex, sex), by_hand)


def test_two_heads_are_one_output_layer():
    pair = build_task_pair("multilabel-vs-softmax", {"n_samples": 100})
    data = pair.load(0)
    model = pair.build_model(data)
    w = torch.cat([h.weight for h in model.heads]), torch.cat([h.bias for h in model.heads])
    x = data.train.inputs[0]
    _, _, outputs = model((x,))
    rep = model.trunk(x)
    torch.testing.assert_close(torch.cat(outputs, 1), rep @ w[0].T + w[1])
    assert [h.out_features for h in model.heads] == [18, 2]


def test_formulations_differ_only_in_loss_and_probabilities():
    bce = build_task_pair("multilabel-vs-softmax", {"formulation": "bce", "n_samples": 200})
    soft = build_task_pair("multilabel-vs-softmax", {"formulation": "softmax", "n_samples": 200})
    assert [t.proba for t in bce.tasks()] == [sigmoid_proba, sigmoid_proba]
    for tb, ts in zip(bce.tasks(), soft.tasks()):
        assert (tb.name, tb.n_outputs, tb.metrics) == (ts.name, ts.n_outputs, ts.metrics)
        assert tb.loss is not ts.loss
    db, ds = bce.load(3), soft.load(3)
    assert db.info["split_sha"] == ds.info["split_sha"]
    assert torch.equal(db.train.inputs[0], ds.train.inputs[0])


def test_formulation_grid_runs_both_as_task_options(capsys, tmp_path):
    code = main(["run", "--task", "multilabel-vs-softmax", "--strategy", "fixed", "--dry-run",
                 "--set", "multilabel-vs-softmax.formulation=bce,softmax",
                 "--runs-dir", str(tmp_path)])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "multilabel-vs-softmax" in ln]
    assert len(lines) == 2 and len({ln.split()[0] for ln in lines}) == 2  # two run ids


# -- short end-to-end runs ---------------------------------------------------------------------
E2E = [
    ("clsreg", {"dataset": "cars"}, {}),
    ("clsreg-2sets", {"n_samples": 400}, {"sampling": "equal", "strategy": "gradnorm"}),
    ("clsreg-2sets", {"n_samples": 400}, {"sampling": "temperature"}),
    ("multilabel-vs-softmax", {"formulation": "bce", "n_samples": 300}, {"strategy": "dwa"}),
    ("multilabel-vs-softmax", {"formulation": "softmax", "n_samples": 300}, {}),
    ("age-gender", {"n_samples": 300}, {"strategy": "uncertainty"}),
    ("age-gender", {"age": "bins", "dataset": "diabetes"}, {}),
]


@pytest.mark.parametrize("name,options,extra", E2E, ids=_ids([(p, o) for p, o, _ in E2E]))
def test_short_run_per_pair(name, options, extra):
    extra = {"strategy": "fixed", **extra}
    rec = train_run(RunConfig(task=name, task_options=options, epochs=2, seed=1, **extra))
    assert rec["status"] == "ok", rec.get("reason")
    # stored in canonical form: only the options that differ from the pair's defaults
    default = registry.tasks.get(name)().options()
    assert rec["config"]["task_options"] == {k: v for k, v in options.items() if default[k] != v}
    summary = {(r[1], r[2], r[3]): r[4] for r in rec["summary"]}
    for task in rec["tasks"]:
        for metric in task["metrics"]:
            assert np.isfinite(summary[("test", task["name"], metric)])
        if task["kind"] == CLASSIFICATION:
            # per-class TP/FP/FN/TN from the stored confusion matrix agree with the accuracy
            counts = counts_from_confusion(rec["details"][task["name"]]["confusion"])
            n = counts[0].sum()
            assert counts[:, 0].sum() / n == pytest.approx(summary[("test", task["name"],
                                                                     "accuracy")])


@pytest.mark.parametrize("name,options", [
    ("clsreg-2sets", {"n_samples": 400}),
    ("multilabel-vs-softmax", {"n_samples": 300}),
    ("age-gender", {"n_samples": 300}),
])
def test_separate_architecture_and_single_task(name, options):
    rec = train_run(RunConfig(task=name, task_options=options, epochs=1,
                              architecture="separate"))
    assert rec["status"] == "ok", rec.get("reason")
    second = build_task_pair(name, options).tasks()[1].name
    rec = train_run(RunConfig(task=name, task_options=options, epochs=1, single_task=second,
                              architecture="separate"))
    assert rec["status"] == "ok" and [t["name"] for t in rec["tasks"]] == [second]


def test_two_sets_epoch_follows_the_largest_set_and_rep_gradients_are_refused():
    rec = train_run(RunConfig(task="clsreg-2sets", task_options={"n_samples": 400}, epochs=1,
                              batch_size=16))
    assert rec["weights"]["steps_per_epoch"] == 15  # ceil(240 classification rows / 16)
    with pytest.raises(UserError, match="gives each task its own dataset"):
        train_run(RunConfig(task="clsreg-2sets", task_options={"n_samples": 400}, epochs=1,
                            strategy="gradnorm", strategy_params={"layer": "rep"}))


# -- pairs read from a DataFrame ---------------------------------------------------------------
PLUGIN = '''
    import numpy as np
    import pandas as pd

    from mtl_bench.task import frame_task_pair


    def orders() -> pd.DataFrame:
        rng = np.random.default_rng(0)
        n = 300
        size = rng.uniform(1, 10, n)
        region = rng.choice(["north", "south"], n)
        late = np.where(size + (region == "south") * 3 + rng.normal(0, 1, n) > 8, "yes", "no")
        cost = 5 * size + rng.normal(0, 1, n)
        cost[:7] = np.nan  # seven rows with a missing value: dropped and counted
        return pd.DataFrame({"size": size, "region": region, "late": late, "cost": cost})


    frame_task_pair("test-orders", orders, inputs=["size", "region"],
                    classification="late", regression="cost", epochs=3, lr=1e-2)
'''


@pytest.fixture
def orders_plugin(tmp_path):
    path = tmp_path / "orders_pair.py"
    path.write_text(textwrap.dedent(PLUGIN))
    yield path
    registry.tasks.unregister("test-orders")


def test_frame_plugin_registers_loads_and_trains(orders_plugin):
    registry.load_plugin_file(orders_plugin)
    pair = build_task_pair("test-orders", {})
    assert [(t.name, t.kind, t.n_outputs) for t in pair.tasks()] == [
        ("late", CLASSIFICATION, 2), ("cost", REGRESSION, 1)]
    data = pair.load(0)
    assert data.info["rows_dropped_missing"] == 7
    assert data.info["features"] == ["size", "region_north", "region_south"]
    assert data.info["classes"] == {"late": ["no", "yes"]}
    rec = train_run(RunConfig(task="test-orders", strategy="fixed"))
    assert rec["status"] == "ok" and rec["config"]["epochs"] == 3
    summary = {(r[1], r[2], r[3]): r[4] for r in rec["summary"]}
    assert summary[("test", "cost", "r2")] > 0.5  # learns in 3 epochs: cost is 5 * size


def test_frame_plugin_from_the_command_line(orders_plugin, tmp_path, capsys):
    code = main(["--plugin", str(orders_plugin), "run", "--task", "test-orders",
                 "--strategy", "fixed", "--epochs", "1", "--runs-dir", str(tmp_path / "runs")])
    assert code == 0
    assert "test-orders" in capsys.readouterr().out


def test_frame_pair_errors_name_the_pair():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    cls = frame_task_pair("test-frame", lambda: frame, inputs=["a"], classification="nope",
                          register=False)
    with pytest.raises(UserError, match="task pair 'test-frame': column\\(s\\) 'nope' not in "
                                        "the data frame; its columns are: a, b"):
        cls().tasks()
    with pytest.raises(UserError, match="needs input columns"):
        frame_task_pair("test-frame", lambda: frame, inputs=["a"], register=False)

    def fails():
        raise FileNotFoundError("orders.csv")

    cls = frame_task_pair("test-frame", fails, inputs=["a"], regression="a", register=False)
    with pytest.raises(UserError, match="task pair 'test-frame': loading its data frame failed: "
                                        "FileNotFoundError: orders.csv"):
        cls().load(0)


def test_the_documented_plugin_example_runs(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text()
    block = doc.split("<!-- plugin-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my_pair.py"
    path.write_text(block)
    try:
        registry.load_plugin_file(path)
        pair = build_task_pair("my-pair", {})
        assert [t.name for t in pair.tasks()] == ["sex", "body_mass_g"]
        assert pair.load(0).info["rows_dropped_missing"] == 11  # rows without sex or sizes
        rec = train_run(RunConfig(task="my-pair", strategy="fixed", epochs=2))
        assert rec["status"] == "ok", rec.get("reason")
    finally:
        registry.tasks.unregister("my-pair")


def test_frame_pair_primary_metrics_drive_selection_and_are_validated():
    import pandas as pd

    from mtl_bench.errors import UserError
    from mtl_bench.task import frame_task_pair

    frame = pd.DataFrame({"x": [0.0, 1.0] * 20, "c": ["a", "b"] * 20, "y": [0.0, 1.0] * 20})
    cls = frame_task_pair("t-primary", lambda: frame, inputs=["x"], classification="c",
                          regression="y", primary={"y": "rmse", "c": "macro_f1"},
                          register=False)
    tasks = {t.name: t.primary for t in cls().tasks()}
    assert tasks == {"c": "macro_f1", "y": "rmse"}
    with pytest.raises(UserError, match="primary metric 'auroc' of 'c'"):
        frame_task_pair("t-bad", lambda: frame, inputs=["x"], classification="c",
                        primary={"c": "auroc"}, register=False)
    with pytest.raises(UserError, match="primary names z"):
        frame_task_pair("t-bad", lambda: frame, inputs=["x"], classification="c",
                        primary={"z": "mae"}, register=False)
