"""Run records to TensorBoard and MLflow (``mtl-bench export tensorboard|mlflow``).

Every record under ``--runs-dir`` becomes one tracked run, failed ones included (with their
status and reason). Each holds:

- per-task training loss and validation / test metrics by epoch (``train/TASK/loss``,
  ``val/TASK/METRIC``, ``test/TASK/METRIC``; epoch 0 is the evaluation before training);
- the task weights the strategy applied, by optimiser step (``weights/TASK``);
- throughput (``throughput/steps_per_s``, ``throughput/samples_per_s``, milliseconds per
  step and phase), one value at step 0;
- the metrics at the epoch selected on validation (``final/val/...``, ``final/test/...``);
- the hyper-parameters: task pair, strategy and its parameters, learning rate, seed,
  architecture, epochs, batch size, sampling, weight decay.

TensorBoard (``export tensorboard --out DIR``, needs ``mtl-bench[tensorboard]``): one run
folder per record, ``DIR/TASK_PAIR/STRATEGY_seedN_RUNID``, with the hyper-parameters and the
final metrics in the HPARAMS tab. Exporting again replaces each run's folder, so the same
records give the same folders. View with ``tensorboard --logdir DIR``.

MLflow (``export mlflow``, needs ``mtl-bench[mlflow]``): one MLflow run per record in the
experiment ``--experiment`` (default ``mtl-bench``), at ``--tracking-uri`` (default:
``$MLFLOW_TRACKING_URI``, else the local file store ``./mlruns``, which MLflow 3 keeps in
maintenance mode: this command allows it for that store while it runs). Parameters, metrics
with their step, and tags: ``mtl_bench.run_id`` (the record's run id),
``mtl_bench.record_sha`` (a hash of the record), ``status``, ``failure`` and ``reason``.
Exporting again skips a record whose run is already logged with the same hash and replaces
(deletes, then logs anew) one whose record changed since (a run retrained with other code
keeps its run id).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from mtl_bench.errors import OutputError, UserError

MISSING_TENSORBOARD = ("export tensorboard needs the tensorboard package: "
                       "pip install 'mtl-bench[tensorboard]'")
MISSING_MLFLOW = "export mlflow needs the mlflow package: pip install 'mtl-bench[mlflow]'"
#: Where ``export mlflow`` logs when neither ``--tracking-uri`` nor ``$MLFLOW_TRACKING_URI``
#: says otherwise.
DEFAULT_TRACKING_URI = "file:./mlruns"
DEFAULT_EXPERIMENT = "mtl-bench"
#: Tag that ties an MLflow run to its record, and the record's content hash.
RUN_ID_TAG, SHA_TAG = "mtl_bench.run_id", "mtl_bench.record_sha"
#: MLflow's limits per ``log_batch`` call (metrics; params and tags).
BATCH_METRICS, BATCH_PARAMS = 1000, 100
#: MLflow's longest tag value; longer failure reasons are cut.
MAX_TAG_CHARS = 5000
#: Config fields exported as hyper-parameters (beside the strategy's own parameters).
HPARAM_FIELDS = ("task", "strategy", "lr", "seed", "architecture", "epochs", "batch_size",
                 "sampling", "weight_decay", "single_task", "select")


# -- command line ------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default="runs", metavar="DIR",
                   help="the run records to export (default: runs/)")
    p.add_argument("--task", default=None, metavar="NAME[,NAME...]",
                   help="only the records of these task pairs")


def add_tensorboard_arguments(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--out", default="tensorboard", metavar="DIR",
                   help="the TensorBoard log folder; one sub-folder per run "
                        "(default: tensorboard/)")


def add_mlflow_arguments(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="the MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        f"{DEFAULT_TRACKING_URI})")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                   help=f"the MLflow experiment (created if missing; default: "
                        f"{DEFAULT_EXPERIMENT})")


# -- what a record holds, as tracked values ----------------------------------------------------
def load_records(runs_dir: str | Path, tasks: str | None = None) -> list[dict[str, Any]]:
    """The readable records under ``runs_dir`` (a note on stderr for each corrupt one); one
    error line when there are none."""
    from mtl_bench.store import RunStore

    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"no run records: '{root}' is not a folder (--runs-dir)")
    loaded = RunStore(root).load()
    for path, reason in loaded.corrupt:
        print(f"note: skipping record {path}: {reason}", file=sys.stderr)
    records = loaded.records
    if tasks:
        wanted = {t.strip() for t in tasks.split(",") if t.strip()}
        records = [r for r in records if r.get("task_pair") in wanted]
    if not records:
        which = f" of task pair(s) {tasks}" if tasks else ""
        raise UserError(f"no run records{which} in '{root}' (--runs-dir)")
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def run_name(record: dict[str, Any]) -> str:
    """``dwa_seed0_5300f748d8594b5e`` (a single-task run: ``single-TASK_seed0_...``), with
    characters other than letters, digits and ``.=,-`` replaced: a folder name and an MLflow
    run name."""
    config = record.get("config") or {}
    what = (f"single-{config['single_task']}" if config.get("single_task")
            else str(record.get("strategy") or config.get("strategy", "run")))
    what = re.sub(r"[^A-Za-z0-9.=,-]+", "_", what).strip("_") or "run"
    return f"{what}_seed{record.get('seed', config.get('seed', 0))}_{record['run_id']}"


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, int, float]]:
    """(tag, step, value) of every tracked number of ``record``: learning curves by epoch,
    task weights by optimiser step, throughput and the selected epoch's metrics."""
    curves = record.get("curves") or {}
    columns = curves.get("columns") or ["epoch", "split", "task", "metric", "value"]
    for row in curves.get("rows") or []:
        r = dict(zip(columns, row))
        value = _number(r.get("value"))
        if value is not None:
            yield f"{r['split']}/{r['task']}/{r['metric']}", int(r["epoch"]), value
    weights = record.get("weights") or {}
    names = weights.get("tasks") or []
    for step, values in enumerate(weights.get("values") or []):
        for name, value in zip(names, values):
            v = _number(value)
            if v is not None:
                yield f"weights/{name}", step, v
    for key, value in sorted((record.get("throughput") or {}).items()):
        v = _number(value)
        if v is not None:
            yield f"throughput/{key}", 0, v
    for tag, value in final_metrics(record).items():
        yield tag, int(record.get("selected_epoch") or 0), value


def final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """``final/SPLIT/TASK/METRIC`` at the epoch selected on validation (the record's
    ``summary``); empty for a run that failed before any."""
    curves = record.get("curves") or {}
    columns = curves.get("columns") or ["epoch", "split", "task", "metric", "value"]
    out = {}
    for row in record.get("summary") or []:
        r = dict(zip(columns, row))
        value = _number(r.get("value"))
        if value is not None:
            out[f"final/{r['split']}/{r['task']}/{r['metric']}"] = value
    return out


def hyper_parameters(record: dict[str, Any]) -> dict[str, str | float | int | bool]:
    """The run's settings: :data:`HPARAM_FIELDS` of its config (the strategy as its label),
    each strategy parameter as ``strategy.NAME``, the task pair's options as ``task.NAME``
    and the run's ``status``. Lists and other values become their JSON text."""
    config = record.get("config") or {}
    out: dict[str, str | float | int | bool] = {}

    def put(key: str, value: Any) -> None:
        if value is None:
            out[key] = "none"
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = json.dumps(value, sort_keys=True)

    for key in HPARAM_FIELDS:
        put(key, config.get(key))
    put("strategy", record.get("strategy", config.get("strategy")))
    for key, value in sorted((config.get("strategy_params") or {}).items()):
        put(f"strategy.{key}", value)
    for key, value in sorted((config.get("task_options") or {}).items()):
        put(f"task.{key}", value)
    put("status", record.get("status", "unknown"))
    return out


def record_time(record: dict[str, Any]) -> float:
    """When the record was made (seconds since the epoch; 0 when it does not say), so that
    exporting the same record again writes the same times."""
    created = (record.get("provenance") or {}).get("created")
    if isinstance(created, str):
        try:
            return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return 0.0


def record_sha(record: dict[str, Any]) -> str:
    """A hash of the record's content: an MLflow run logged from it is up to date."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _status_text(record: dict[str, Any]) -> str:
    if record.get("status") == "ok":
        return "ok"
    kind = record.get("failure") or "error"
    return f"{record.get('status', 'failed')} ({kind}): {record.get('reason', '')}"


# -- TensorBoard -------------------------------------------------------------------------------
def run_tensorboard(args: argparse.Namespace) -> int:
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError:
        raise UserError(MISSING_TENSORBOARD) from None
    records = load_records(args.runs_dir, args.task)
    out = Path(args.out)
    failed = 0
    for record in records:
        folder = out / str(record.get("task_pair", "unknown")) / run_name(record)
        try:
            if folder.is_dir():
                shutil.rmtree(folder)  # exporting again replaces the run, never appends to it
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError("TensorBoard runs", folder.parent, exc) from None
        write_tensorboard_run(record, folder, SummaryWriter, hparams)
        failed += record.get("status") != "ok"
    print(f"wrote {len(records)} TensorBoard run(s) to {out}/ ({failed} failed, exported with "
          f"their status); view them with: tensorboard --logdir {out}")
    return 0


def write_tensorboard_run(record: dict[str, Any], folder: Path, writer_class: Any,
                          hparams: Any) -> None:
    """One record as one TensorBoard run in ``folder`` (which must be empty)."""
    when = record_time(record)
    writer = writer_class(log_dir=str(folder))
    try:
        for tag, step, value in scalars(record):
            writer.add_scalar(tag, value, global_step=step, walltime=when)
        writer.add_text("status", _status_text(record), global_step=0, walltime=when)
        metrics = final_metrics(record)
        # the HPARAMS tab: the settings with the final metrics (tags logged above)
        exp, ssi, sei = hparams(hyper_parameters(record), metrics)
        file_writer = writer.file_writer
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary, walltime=when)
    except OSError as exc:
        raise OutputError("TensorBoard runs", folder, exc) from None
    finally:
        writer.close()


# -- MLflow ------------------------------------------------------------------------------------
def tracking_uri(given: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri and ":" not in uri.split("/")[0]


def run_mlflow(args: argparse.Namespace) -> int:
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(MISSING_MLFLOW) from None
    records = load_records(args.runs_dir, args.task)
    uri = tracking_uri(args.tracking_uri)
    # MLflow 3 refuses its file store unless asked; it is this command's local default
    allow = _is_file_store(uri) and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    if allow:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        return _log_to_mlflow(records, uri, args.experiment, MlflowClient, Metric, Param)
    finally:
        if allow:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _log_to_mlflow(records: list[dict[str, Any]], uri: str, experiment_name: str,
                   client_class: Any, metric_class: Any, param_class: Any) -> int:
    try:
        client = client_class(tracking_uri=uri)
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(experiment_name))
    except Exception as exc:  # an unreachable server, a bad URI, a store it cannot open
        raise UserError(f"cannot open MLflow at '{uri}': "
                        f"{' '.join(f'{type(exc).__name__}: {exc}'.split())[:300]}") from None
    counts = {"logged": 0, "replaced": 0, "unchanged": 0}
    for record in records:
        sha = record_sha(record)
        existing = client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{record['run_id']}'",
            max_results=100)
        if any(run.data.tags.get(SHA_TAG) == sha for run in existing):
            counts["unchanged"] += 1
            for run in existing:  # a copy left by an interrupted export
                if run.data.tags.get(SHA_TAG) != sha:
                    client.delete_run(run.info.run_id)
            continue
        for run in existing:
            client.delete_run(run.info.run_id)
        log_mlflow_run(client, experiment_id, record, sha, metric_class, param_class)
        counts["replaced" if existing else "logged"] += 1
    print(f"MLflow experiment '{experiment_name}' at {uri}: {counts['logged']} run(s) logged, "
          f"{counts['replaced']} replaced (record changed), {counts['unchanged']} already "
          f"up to date ({len(records)} record(s))")
    return 0


def log_mlflow_run(client: Any, experiment_id: str, record: dict[str, Any], sha: str,
                   metric_class: Any, param_class: Any) -> str:
    """One record as one MLflow run; returns the MLflow run id. Non-finite values (a diverged
    run's last ones) are logged as they are: MLflow stores NaN and infinities."""
    end = record_time(record)
    wall = _number(record.get("wall_s")) or 0.0
    end_ms = int(end * 1000)
    start_ms = int((end - wall) * 1000) if end else 0
    tags = {RUN_ID_TAG: str(record["run_id"]), SHA_TAG: sha,
            "status": str(record.get("status", "unknown")),
            "task_pair": str(record.get("task_pair", "")),
            "strategy": str(record.get("strategy", ""))}
    if record.get("status") != "ok":
        tags["failure"] = str(record.get("failure") or "error")
        tags["reason"] = str(record.get("reason", ""))[:MAX_TAG_CHARS]
    run = client.create_run(experiment_id, start_time=start_ms, tags=tags,
                            run_name=run_name(record))
    run_id = run.info.run_id
    params = [param_class(k, str(v)) for k, v in hyper_parameters(record).items()]
    for i in range(0, len(params), BATCH_PARAMS):
        client.log_batch(run_id, params=params[i:i + BATCH_PARAMS])
    metrics = [metric_class(tag, value, end_ms, step) for tag, step, value in scalars(record)]
    for i in range(0, len(metrics), BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i:i + BATCH_METRICS])
    client.set_terminated(run_id, "FINISHED" if record.get("status") == "ok" else "FAILED",
                          end_time=end_ms or None)
    return run_id

