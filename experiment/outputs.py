"""The folders of an evaluation (`EvalFolder`), a sweep, a comparison and the plan (`PlanFolder`), each
an object that owns every file name of its layout. Nothing else in the library spells these names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.files import atomic_write, read_json_object, save_npz, strict_json, write_text

from .errors import UsageError
from .folders import RunFolder


class EvalFolder:
    """An evaluation's folder: results.json (every score), results.md (the table), forecasts.npz
    (every forecast's median and quantiles, for later figures) and the two figures."""

    RESULTS, TABLE, FORECASTS, FORECAST_PLOT, HORIZON_PLOT = (
        "results.json", "results.md", "forecasts.npz", "forecasts.png", "mae_vs_horizon.png")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def files(self) -> dict[str, Path]:
        return {name: self.path / name for name in (self.TABLE, self.RESULTS, self.FORECAST_PLOT, self.HORIZON_PLOT,
                                                    self.FORECASTS)}

    def results(self) -> dict | None:
        """results.json's content, or None before the evaluation has written it."""
        path = self.path / self.RESULTS
        return read_json_object(path, UsageError) if path.exists() else None

    def forecasts(self):
        """forecasts.npz, or None."""
        path = self.path / self.FORECASTS
        return np.load(path) if path.exists() else None

    def write(self, results: dict, table: str, arrays: dict) -> None:
        """results.json, forecasts.npz and results.md, each atomically (the figures are drawn to their paths)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / self.RESULTS, json.dumps(strict_json(results), indent=1, allow_nan=False) + "\n")
        atomic_write(self.path / self.FORECASTS, lambda tmp: save_npz(tmp, arrays))
        write_text(self.path / self.TABLE, table)


class SweepFolder:
    """The sweep's folder: a run folder per grid cell, and the table (sweep.md, and sweep.json)."""

    TABLE, RESULTS = "sweep.md", "sweep.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def run(self, name: str) -> RunFolder:
        return RunFolder(self.path / name)

    def files(self) -> dict[str, Path]:
        return {"table": self.path / self.TABLE, "as JSON": self.path / self.RESULTS, "runs": self.path}

    def write(self, table: str, results: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / self.TABLE, table)
        write_text(self.path / self.RESULTS, json.dumps(results, indent=1) + "\n")


class CompareFolder:
    """Several evaluations side by side: comparison.md (the table and the targets) and comparison.png."""

    TABLE, FIGURE = "comparison.md", "comparison.png"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def files(self) -> dict[str, Path]:
        return {name: self.path / name for name in (self.TABLE, self.FIGURE)}

    def write(self, table: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / self.TABLE, table)


class PlanFolder:
    """The plan's folder: its ledger, plan.json (the steps every run gets, fixed once), choice.json,
    report.md with its two figures, and a folder per training run and per evaluation."""

    LEDGER, STEPS, CHOICE, REPORT, HORIZON_PLOT, FORECAST_PLOT = (
        "ledger.json", "plan.json", "choice.json", "report.md", "mae_vs_horizon.png", "forecasts_compared.png")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def ledger(self) -> Path:
        return self.path / self.LEDGER

    def run(self, name: str) -> RunFolder:
        return RunFolder(self.path / name)

    def evaluation(self, name: str) -> EvalFolder:
        return EvalFolder(self.path / name)

    def files(self) -> dict[str, Path]:
        return {"report": self.path / self.REPORT, "plan": self.path / self.STEPS, "runs": self.path}

    def steps(self) -> dict | None:
        path = self.path / self.STEPS
        return read_json_object(path, UsageError) if path.exists() else None

    def write(self, name: str, content) -> Path:
        """One of the plan's JSON files (a dict) or its report (text)."""
        self.path.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content, indent=1) + "\n"
        return write_text(self.path / name, text)
