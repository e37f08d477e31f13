"""What the baselines forecast on the systems an evaluation selects: persistence, parroting, the
statistical models (statsforecast) and the ODE fit, its fits spread over a pool of processes."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from data import load_series, make_splits, scale_for
from data.baselines import LEVELS, PARROT_WINDOW, STATISTICAL, ode_fit, parroting, persistence, statistical
from data.simulate import ensure_data

from .scoring import Forecast
from .settings import EvalSettings


@dataclass
class Selection:
    """The systems an evaluation forecasts: their indices in the file, values (systems, points, 2) in
    original units, the time axis, and the split's scale alpha."""

    systems: list[int]
    values: np.ndarray
    time: np.ndarray
    alpha: float


def select(s: EvalSettings) -> Selection:
    """The split's first `limit` systems (every system of the file for split 'all'), after checking
    the settings against the file, with the split's scale (or --scale-from's validation split's)."""
    series = ensure_data(s.data)
    s.check_points(series.points)
    split = list(range(series.systems)) if s.split == "all" else make_splits(series.systems, seed=s.split_seed)[s.split]
    alpha = scale_for(series.trajectories[split]) if s.scale_from is None else validation_scale(s.scale_from, s.split_seed)
    systems = split[: s.limit] if s.limit else split
    return Selection(systems, series.trajectories[systems].astype(np.float64), series.time, alpha)


def validation_scale(path: str, split_seed: int) -> float:
    """alpha of a series file's validation split."""
    series = load_series(path)
    return scale_for(series.trajectories[make_splits(series.systems, seed=split_seed)["validation"]])


def _fit_one(job):
    """{ctx: forecast} for one system, and how many of its fits the bound stopped, and how many of
    those found nothing (persistence instead)."""
    time, series, ctxs, horizon, model, seed, evaluations = job
    out, warm, bounded, failed = {}, None, 0, 0
    for ctx in sorted(ctxs):
        report = {}
        out[ctx], params = ode_fit(time, series[:ctx], horizon, model=model, warm=warm, seed=seed,
                                   max_evaluations=evaluations, report=report)
        bounded += int(report.get("bounded", False))
        failed += int(not np.all(np.isfinite(params)))
        warm = params if model == "rosenzweig-macarthur" else None
    return out, (bounded, failed)


def forecast_ode(time, values, s: EvalSettings, bar=None) -> tuple[dict[int, np.ndarray], tuple[int, int]]:
    """The ODE fit's forecasts {ctx: (systems, horizon, 2)}, systems spread over `workers` processes,
    and the number of fits the bound stopped, and of those that fell back to persistence."""
    jobs = [(time, v.astype(np.float64), s.contexts, s.horizon, s.ode_model, s.seed, s.ode_evaluations)
            for v in values]
    workers = os.cpu_count() if s.workers is None else s.workers
    results = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(_fit_one, jobs):
                results.append(r)
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            results.append(_fit_one(job))
            if bar is not None:
                bar.update(1)
    counts = tuple(int(sum(c[i] for _, c in results)) for i in (0, 1))
    return {ctx: np.stack([r[ctx] for r, _ in results]) for ctx in s.contexts}, counts


def forecast_baselines(s: EvalSettings, sel: Selection, bar) -> tuple[dict, dict]:
    """The baselines' forecasts {method: {ctx: Forecast}}, and what the results say of each: persistence
    and the ODE fit are point forecasts; parroting gives `samples` samples from the nearest stretches;
    the statistical models give quantiles from their prediction intervals."""
    chosen, out, about = s.methods, {}, {}
    point = lambda fc: Forecast(fc[:, None])  # noqa: E731  (systems, horizon, 2) -> one sample
    if "persistence" in chosen:
        out["persistence"] = {ctx: point(np.stack([persistence(v[:ctx], s.horizon) for v in sel.values]))
                              for ctx in s.contexts}
    if "parroting" in chosen:
        out["parroting"] = {ctx: Forecast(np.stack([parroting(v[:ctx], s.horizon, s.samples) for v in sel.values]))
                            for ctx in s.contexts}
        about["parroting"] = {"window_steps": PARROT_WINDOW, "samples": s.samples, "rule": "nearest stretches of the context, "
                              "by Euclidean distance over both species; what followed each, copied"}
    names, fell_back = tuple(m for m in STATISTICAL if m in chosen), {}
    for ctx in s.contexts if names else ():
        for name, quantiles in statistical(sel.values[:, :ctx], s.horizon, names, fell_back).items():
            out.setdefault(name, {})[ctx] = Forecast(quantiles=quantiles, levels=LEVELS)
            about[name] = {"library": "statsforecast", "model": STATISTICAL[name], "season_length": 1,
                           "quantiles_from_intervals": list(LEVELS),
                           "series_without_a_fit_persistence_used": fell_back.get(name, 0)}
    if "ode_fit" in chosen:
        fc, (bounded, fell_back) = forecast_ode(sel.time, sel.values, s, bar)
        out["ode_fit"] = {ctx: point(fc[ctx]) for ctx in s.contexts}
        about["ode_fit"] = {"model": s.ode_model, "rhs_evaluations_per_fit": s.ode_evaluations,
                            "fits": len(sel.values) * len(s.contexts), "fits_stopped_by_the_bound": bounded,
                            "fits_without_result_persistence_used": fell_back, "point_forecast": True}
    return out, about
