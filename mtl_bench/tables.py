"""The tables folder: :class:`Tables` (frames + ``meta``) and its CSV/JSON files.

``aggregate`` computes the frames, ``display.write_tables`` adds ``tables.md``, ``report`` reads
them back. Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mtl_bench.errors import UserError
from mtl_bench.settings import SETTING
from mtl_bench.store import STRATEGY, atomic_write_text

#: Table files in a tables folder, in the order they are written.
#: Columns of the speed table (measurements of ``mtl-bench speed``, see mtl_bench.speed).
SPEED_COLUMNS = [SETTING, STRATEGY, "step_ms", "samples_per_s", "samples_per_s_low",
                 "samples_per_s_high", "ratio", "ratio_low", "ratio_high", "verdict", "n_rounds"]
TABLE_NAMES = ("runs", "long", "summary", "delta_m", "ranks", "significance", "throughput",
               "curves", "weights", "diagnostics", "details", "cross_pair", "delta_m_terms",
               "tuning", "speed")
META_FILE = "meta.json"
MARKDOWN_FILE = "tables.md"


@dataclass
class Tables:
    """The aggregated tables and ``meta`` (settings, roles, tests used, notes)."""

    meta: dict[str, Any]
    frames: dict[str, pd.DataFrame]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]

    def setting(self, label: str) -> dict[str, Any]:
        for s in self.meta["settings"]:
            if s["label"] == label:
                return s
        raise KeyError(label)

    def write(self, folder: str | Path) -> list[Path]:
        """One CSV per table (+ ``long.parquet`` when pyarrow is installed) and ``meta.json``,
        each written atomically (``display.write_tables`` adds ``tables.md``)."""
        folder = Path(folder)
        written = []
        for name in TABLE_NAMES:
            path = folder / f"{name}.csv"
            atomic_write_text(path, self.frames[name].to_csv(index=False))
            written.append(path)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            path = folder / "long.parquet"
            self.frames["long"].to_parquet(path, index=False)
            written.append(path)
        path = folder / META_FILE
        atomic_write_text(path, json.dumps(self.meta, indent=1, sort_keys=True, default=str))
        written.append(path)
        return written

    @classmethod
    def read(cls, folder: str | Path) -> Tables:
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise UserError(f"no aggregated tables in '{folder}' (missing {META_FILE}); run "
                            "`mtl-bench aggregate` first")
        try:
            meta = json.loads(meta_path.read_text())
            frames = {}
            for name in TABLE_NAMES:
                path = folder / f"{name}.csv"
                if not path.is_file():
                    raise UserError(f"'{folder}' holds tables of another mtl-bench version "
                                    f"(no {name}.csv); aggregate again with --runs-dir")
                try:
                    frames[name] = pd.read_csv(path, keep_default_na=True, na_values=[""])
                except pd.errors.EmptyDataError:
                    frames[name] = pd.DataFrame()
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read aggregated tables in '{folder}': {exc}") from None
        for name in TABLE_NAMES:
            if SETTING in frames[name]:
                frames[name][SETTING] = frames[name][SETTING].astype(str)
        return cls(meta, frames)


