"""The one IO module for run records.

Layout: ``<root>/<task_pair>/<run_id>.json``, one JSON document per run. Writes go to a temporary
file in the same folder and are renamed into place, so a crash never leaves a half-written
record under a final name. A record that does not parse (truncated by a crash, edited by hand)
is reported as corrupt and treated as not done.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from mtl_bench.errors import UserError

DEFAULT_ROOT = Path("runs")

# Dimension names used in every table; other modules import these rather than spell them.
TASK_PAIR, STRATEGY, SEED, SPLIT, TASK, METRIC, VALUE, EPOCH, STEP, RUN_ID = (
    "task_pair", "strategy", "seed", "split", "task", "metric", "value", "epoch", "step", "run_id")
STATUS, REASON = "status", "reason"


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only read
    it by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (atomic on POSIX). The file
    gets the mode an ordinary write would give it (0o666 less the umask), not mkstemp's 0o600."""
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    A writer that raises, or a process killed half-way, leaves ``path`` as it was (absent or the
    previous complete file); a raising writer leaves no temporary file (a kill leaves a hidden
    ``.NAME.*.tmp``). The file gets the mode a plain write would give (the umask applies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o666 & ~_umask())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class LoadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


class RunStore:
    """Run records under one root folder."""

    def __init__(self, root: str | Path = DEFAULT_ROOT):
        self.root = Path(root)

    def path_for(self, task_pair: str, run_id: str) -> Path:
        return self.root / task_pair / f"{run_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        path = self.path_for(record["task_pair"], record["run_id"])
        try:
            atomic_write_text(path, json.dumps(record, allow_nan=True, separators=(",", ":")))
        except OSError as exc:
            raise UserError(f"cannot write run record to '{path.parent}': {exc.strerror or exc}") \
                from exc
        return path

    def read(self, path: Path) -> dict[str, Any]:
        """Parse one record; raise ValueError with the reason when it is corrupt."""
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from exc
        if not isinstance(record, dict) or not {"run_id", "status", "schema"} <= record.keys():
            raise ValueError("not a run record (missing run_id/status/schema)")
        return record

    def status(self, task_pair: str, run_id: str) -> str | None:
        """``ok``/``failed`` for a finished run, ``corrupt`` for an unreadable file, else None."""
        path = self.path_for(task_pair, run_id)
        if not path.exists():
            return None
        try:
            return self.read(path).get("status")
        except ValueError:
            return "corrupt"

    def paths(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from sorted(self.root.glob("*/*.json"))

    def load(self) -> LoadResult:
        out = LoadResult()
        for path in self.paths():
            try:
                out.records.append(self.read(path))
            except ValueError as exc:
                out.corrupt.append((path, str(exc)))
        return out


# -- tidy tables -------------------------------------------------------------------------------
def _keys(record: dict[str, Any]) -> dict[str, Any]:
    cfg = record.get("config", {})
    return {RUN_ID: record["run_id"], TASK_PAIR: record.get("task_pair"),
            STRATEGY: record.get("strategy"), SEED: record.get("seed"),
            "architecture": cfg.get("architecture"), STATUS: record.get("status")}


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: keys, status, reason, wall time, throughput columns."""
    rows = []
    for r in records:
        row = _keys(r)
        row[REASON] = r.get(REASON, "")
        row["wall_s"] = r.get("wall_s")
        row["selected_epoch"] = r.get("selected_epoch")
        row.update({f"tp_{k}": v for k, v in r.get("throughput", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def curves_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long format: run keys + epoch, split, task, metric, value (all epochs, all splits)."""
    frames = []
    for r in records:
        c = r.get("curves") or {}
        if not c.get("rows"):
            continue
        df = pd.DataFrame(c["rows"], columns=c["columns"])
        for k, v in _keys(r).items():
            df[k] = v
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def weights_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long format: run keys + step, task, value (the task weights each step applied)."""
    frames = []
    for r in records:
        w = r.get("weights") or {}
        if not w.get("values"):
            continue
        df = pd.DataFrame(w["values"], columns=w["tasks"])
        df[STEP] = range(len(df))
        df[EPOCH] = df[STEP] // max(w.get("steps_per_epoch", 1), 1) + 1
        df = df.melt(id_vars=[STEP, EPOCH], var_name=TASK, value_name=VALUE)
        for k, v in _keys(r).items():
            df[k] = v
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_curves(root: str | Path = DEFAULT_ROOT) -> pd.DataFrame:
    """All learning curves under ``root`` as one long DataFrame (one call for users)."""
    return curves_frame(RunStore(root).load().records)


def load_runs(root: str | Path = DEFAULT_ROOT) -> pd.DataFrame:
    """One row per stored run under ``root``."""
    return runs_frame(RunStore(root).load().records)
