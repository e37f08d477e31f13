"""Forecast metrics, of a point (MAE, the report's headline figure, with its breakdowns; MSE) and of a
distribution (CRPS, the coverage and width of central intervals, the weighted quantile loss).

A forecast is samples (systems, S, horizon, 2) or quantiles at given levels (systems, horizon, 2, Q),
in original units; every figure is in the scaled units the model reads (divided by alpha). CRPS
comes from `scoringrules` (the ensemble estimator for samples, the quantile one for quantiles); a
point forecast (one sample) scores CRPS equal to its absolute error and has no intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scoringrules as sr

SPECIES = ("prey", "predator")
INTERVALS = (0.5, 0.9)  # central intervals whose coverage and width are reported
WQL_LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 10))  # 0.1 .. 0.9, as Chronos reports


@dataclass
class Forecast:
    """One method's forecast of every system at one context length, in original units."""

    samples: np.ndarray | None = None  # (systems, S, horizon, 2)
    quantiles: np.ndarray | None = None  # (systems, horizon, 2, Q)
    levels: tuple[float, ...] = ()  # the quantiles' levels, increasing

    @property
    def point(self) -> bool:
        return self.samples is not None and self.samples.shape[1] == 1

    def quantile(self, q: float) -> np.ndarray:
        """(systems, horizon, 2) at level q: of the samples, or interpolated between the given levels."""
        if self.samples is not None:
            return np.quantile(self.samples, q, axis=1)
        return np.apply_along_axis(lambda v: np.interp(q, self.levels, v), -1, self.quantiles)

    def median(self) -> np.ndarray:
        return self.quantile(0.5)


def score(pred: np.ndarray, true: np.ndarray, alpha: float, failed: int = 0) -> dict:
    """Point forecasts (systems, horizon, 2) against truth, both in original units.

    mae, mse and mae_by_step are in the scaled units the model reads (divided by alpha);
    mae_original in the file's units."""
    err = (pred - true) / alpha
    return {"mae": float(np.abs(err).mean()), "mae_by_step": np.abs(err).mean(axis=(0, 2)).tolist(),
            "mae_by_species": {s: float(np.abs(err[..., i]).mean()) for i, s in enumerate(SPECIES)},
            "mae_by_step_species": {s: np.abs(err[..., i]).mean(axis=0).tolist() for i, s in enumerate(SPECIES)},
            "mae_original": float(np.abs(pred - true).mean()), "mse": float((err ** 2).mean()),
            "failed_steps": int(failed)}


def crps(fc: Forecast, true: np.ndarray) -> np.ndarray:
    """CRPS of each (system, step, species), in the units of `true`."""
    if fc.samples is not None:
        return np.asarray(sr.crps_ensemble(true, np.moveaxis(fc.samples, 1, -1), m_axis=-1))
    return np.asarray(sr.crps_quantile(true, fc.quantiles, np.asarray(fc.levels)))


def quantile_loss(true: np.ndarray, predicted: np.ndarray, q: float) -> np.ndarray:
    """The pinball loss of the q-quantile prediction: (q - 1[true < predicted]) (true - predicted)."""
    return (q - (true < predicted)) * (true - predicted)


def weighted_quantile_loss(fc: Forecast, true: np.ndarray, levels=WQL_LEVELS) -> float:
    """Chronos's WQL: the mean over levels of 2 * sum(quantile loss) / sum(|truth|)."""
    scale = np.abs(true).sum()
    return float(np.mean([2 * quantile_loss(true, fc.quantile(q), q).sum() / scale for q in levels]))


def interval(fc: Forecast, width: float) -> tuple[np.ndarray, np.ndarray]:
    """The central interval holding `width` of the forecast's mass: (low, high), each (systems, horizon, 2)."""
    return fc.quantile((1 - width) / 2), fc.quantile((1 + width) / 2)


def score_distribution(fc: Forecast, true: np.ndarray, alpha: float) -> dict:
    """CRPS (mean, by step), the 50% and 90% central intervals' coverage, mean and largest width (of
    any system, step and species), and the weighted quantile loss, in scaled units; for a point
    forecast CRPS is its MAE and there are no intervals."""
    scaled = Forecast(None if fc.samples is None else fc.samples / alpha,
                      None if fc.quantiles is None else fc.quantiles / alpha, fc.levels)
    c = crps(scaled, true / alpha)
    out = {"point_forecast": fc.point, "crps": float(c.mean()), "crps_by_step": c.mean(axis=(0, 2)).tolist(),
           "wql": None if fc.point else weighted_quantile_loss(fc, true)}
    for width in INTERVALS:
        name = f"{round(width * 100)}"
        if fc.point:
            out[f"coverage_{name}"] = out[f"width_{name}"] = out[f"widest_{name}"] = None
            continue
        low, high = interval(fc, width)
        out[f"coverage_{name}"] = float(((true >= low) & (true <= high)).mean())
        out[f"width_{name}"] = float(((high - low) / alpha).mean())
        out[f"widest_{name}"] = float(((high - low) / alpha).max())
    return out


def score_methods(forecasts: dict[str, dict[int, Forecast]], truth: dict, alpha: float, contexts: list[int],
                  failed: dict, flops: dict) -> dict:
    """{method: {contexts: {ctx: scores}, combined_mae and combined_crps (means over contexts), flops}}:
    the point scores of each forecast's median and the scores of its distribution."""
    methods = {}
    for method, per_ctx in forecasts.items():
        per = {}
        for ctx in contexts:
            fc = per_ctx[ctx]
            per[str(ctx)] = {**score(fc.median(), truth[ctx], alpha, failed.get(method, {}).get(ctx, 0)),
                             **score_distribution(fc, truth[ctx], alpha)}
        methods[method] = {"contexts": per, "point_forecast": per_ctx[contexts[0]].point,
                           "combined_mae": float(np.mean([per[str(c)]["mae"] for c in contexts])),
                           "combined_crps": float(np.mean([per[str(c)]["crps"] for c in contexts])),
                           "flops": flops.get(method, 0.0)}
    return methods
