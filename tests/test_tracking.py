"""``export tensorboard`` and ``export mlflow``: read back what they wrote and compare it with
the records, failed records included; exporting again; the missing-extra error."""

from __future__ import annotations

import builtins
import json
import os

import pytest

from mtl_bench.cli import main
from mtl_bench.executors.base import failed_record
from mtl_bench.store import RunStore
from mtl_bench.tracking import MISSING_MLFLOW, MISSING_TENSORBOARD, run_name, tracking_uri
from mtl_bench.train import RunConfig, train_run

CONFIGS = [RunConfig(strategy="fixed", epochs=2), RunConfig(strategy="dwa", epochs=2, seed=1)]
DEAD = RunConfig(strategy="rlw", epochs=2)


@pytest.fixture(scope="module")
def records():
    out = [train_run(c) for c in CONFIGS]
    out.append(failed_record(DEAD, "worker process died from SIGKILL (out of memory?)", 1.5))
    return out


@pytest.fixture
def runs(tmp_path, records):
    store = RunStore(tmp_path / "runs")
    for r in records:
        store.write(r)
    return store.root


def expected_scalars(record):
    """tag -> [(step, value)], read from the record independently of the exporter."""
    out = {}
    for epoch, split, task, metric, value in record["curves"]["rows"]:
        out.setdefault(f"{split}/{task}/{metric}", []).append((epoch, value))
    names = record["weights"]["tasks"]
    for step, row in enumerate(record["weights"]["values"]):
        for name, value in zip(names, row):
            out.setdefault(f"weights/{name}", []).append((step, value))
    for key, value in record["throughput"].items():
        out[f"throughput/{key}"] = [(0, value)]
    for epoch, split, task, metric, value in record["summary"]:
        out[f"final/{split}/{task}/{metric}"] = [(epoch, value)]
    return out


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


# -- TensorBoard -------------------------------------------------------------------------------
def _read_tensorboard(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
               for tag in acc.Tags()["scalars"]}
    hparams = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                hparams[key] = getattr(value, kind)
    return scalars, hparams


def test_tensorboard_runs_hold_the_records_values(runs, records, tmp_path, capsys):
    out = tmp_path / "tb"
    code, cap = _run(["export", "tensorboard", "--runs-dir", str(runs), "--out", str(out)],
                     capsys)
    assert code == 0, cap.err
    assert "wrote 3 TensorBoard run(s)" in cap.out and "1 failed" in cap.out
    folders = sorted(p for p in (out / "clsreg").iterdir())
    assert [p.name for p in folders] == sorted(run_name(r) for r in records)
    for record in records:
        folder = out / "clsreg" / run_name(record)
        got, hparams = _read_tensorboard(folder)
        want = expected_scalars(record)
        assert set(got) == set(want), record["strategy"]
        for tag, points in want.items():
            assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
            # TensorBoard keeps scalars as float32
            assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6)
        config = record["config"]
        assert hparams["strategy"] == record["strategy"]
        assert hparams["lr"] == pytest.approx(config["lr"])
        assert hparams["seed"] == config["seed"]
        assert hparams["task"] == "clsreg" and hparams["architecture"] == config["architecture"]
        assert hparams["status"] == record["status"]
    dead = _read_tensorboard(out / "clsreg" / run_name(records[2]))
    assert dead[1]["status"] == "failed" and dead[0] == {}
    assert "train/species/loss" in expected_scalars(records[0])


def test_tensorboard_export_again_replaces_each_run(runs, records, tmp_path, capsys):
    out = tmp_path / "tb"
    args = ["export", "tensorboard", "--runs-dir", str(runs), "--out", str(out)]
    assert _run(args, capsys)[0] == 0
    assert _run(args, capsys)[0] == 0
    folder = out / "clsreg" / run_name(records[0])
    assert len(list(folder.iterdir())) == 1  # one event file, not two runs appended
    got, _ = _read_tensorboard(folder)
    assert len(got["train/species/loss"]) == 2


# -- MLflow ------------------------------------------------------------------------------------
@pytest.fixture
def no_file_store_opt_in(monkeypatch):
    # the command allows MLflow's file store while it runs, and only then
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ


def _mlflow_runs(uri, experiment="mtl-bench"):
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        return client, client.search_runs([exp.experiment_id], max_results=1000)
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]


def test_mlflow_logs_params_metric_histories_and_status(runs, records, tmp_path, capsys,
                                                        no_file_store_opt_in):
    uri = f"file:{tmp_path / 'mlruns'}"
    args = ["export", "mlflow", "--runs-dir", str(runs), "--tracking-uri", uri]
    code, cap = _run(args, capsys)
    assert code == 0, cap.err
    assert "3 run(s) logged" in cap.out
    client, logged = _mlflow_runs(uri)
    assert len(logged) == 3
    by_id = {r.data.tags["mtl_bench.run_id"]: r for r in logged}
    assert set(by_id) == {r["run_id"] for r in records}
    for record in records:
        run = by_id[record["run_id"]]
        config = record["config"]
        assert run.data.params["strategy"] == record["strategy"]
        assert float(run.data.params["lr"]) == pytest.approx(config["lr"])
        assert run.data.params["seed"] == str(config["seed"])
        assert run.data.params["architecture"] == config["architecture"]
        assert run.data.tags["status"] == record["status"]
        assert run.info.status == ("FINISHED" if record["status"] == "ok" else "FAILED")
        for tag, points in expected_scalars(record).items():
            history = sorted((m.step, m.value)
                             for m in client.get_metric_history(run.info.run_id, tag))
            assert [s for s, _ in history] == [s for s, _ in points], tag
            assert [v for _, v in history] == pytest.approx([v for _, v in points])
    dead = by_id[records[2]["run_id"]]
    assert dead.data.tags["failure"] == "worker"
    assert "SIGKILL" in dead.data.tags["reason"] and dead.data.metrics == {}


def test_mlflow_export_again_skips_unchanged_and_replaces_changed(runs, records, tmp_path,
                                                                 capsys, no_file_store_opt_in):
    uri = f"file:{tmp_path / 'mlruns'}"
    args = ["export", "mlflow", "--runs-dir", str(runs), "--tracking-uri", uri,
            "--experiment", "again"]
    assert _run(args, capsys)[0] == 0
    code, cap = _run(args, capsys)
    assert code == 0 and "0 run(s) logged, 0 replaced" in cap.out
    assert "3 already up to date" in cap.out
    # the run retrained: same run id, other content
    path = RunStore(runs).path_for("clsreg", records[0]["run_id"])
    changed = {**records[0], "wall_s": records[0]["wall_s"] + 1.0}
    path.write_text(json.dumps(changed))
    code, cap = _run(args, capsys)
    assert code == 0 and "1 replaced" in cap.out and "2 already up to date" in cap.out
    _, logged = _mlflow_runs(uri, "again")
    assert len(logged) == 3
    assert sorted(r.data.tags["mtl_bench.run_id"] for r in logged) == sorted(
        r["run_id"] for r in records)


def test_tracking_uri_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None) == "file:./mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert tracking_uri(None) == "sqlite:///x.db"
    assert tracking_uri("file:/elsewhere") == "file:/elsewhere"


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("what, blocked, message", [
    ("tensorboard", "torch.utils.tensorboard", MISSING_TENSORBOARD),
    ("mlflow", "mlflow", MISSING_MLFLOW),
])
def test_missing_extra_is_one_error_line(what, blocked, message, runs, tmp_path, capsys,
                                         monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == blocked or name.startswith(blocked + "."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    extra = ["--out", str(tmp_path / "tb")] if what == "tensorboard" else [
        "--tracking-uri", f"file:{tmp_path / 'mlruns'}"]
    code, cap = _run(["export", what, "--runs-dir", str(runs), *extra], capsys)
    assert code == 2
    assert cap.err.strip().splitlines() == [f"error: {message}"]
    assert f"pip install 'mtl-bench[{what}]'" in message


@pytest.mark.parametrize("what", ["tensorboard", "mlflow"])
def test_empty_or_missing_runs_dir_is_one_error_line(what, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "missing"):
        code, cap = _run(["export", what, "--runs-dir", str(tmp_path / folder)], capsys)
        assert code == 2
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no run records")
