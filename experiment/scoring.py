"""Forecast metrics: MAE (the report's headline figure) and its breakdowns, MSE, failed steps."""

from __future__ import annotations

import numpy as np

SPECIES = ("prey", "predator")


def score(pred: np.ndarray, true: np.ndarray, alpha: float, failed: int = 0) -> dict:
    """Forecasts (systems, horizon, 2) against truth, both in original units.

    mae, mse and mae_by_step are in the scaled units the model reads (divided by alpha);
    mae_original in the file's units."""
    err = (pred - true) / alpha
    return {"mae": float(np.abs(err).mean()), "mae_by_step": np.abs(err).mean(axis=(0, 2)).tolist(),
            "mae_by_species": {s: float(np.abs(err[..., i]).mean()) for i, s in enumerate(SPECIES)},
            "mae_by_step_species": {s: np.abs(err[..., i]).mean(axis=0).tolist() for i, s in enumerate(SPECIES)},
            "mae_original": float(np.abs(pred - true).mean()), "mse": float((err ** 2).mean()),
            "failed_steps": int(failed)}


def score_methods(forecasts: dict, truth: dict, alpha: float, contexts: list[int], failed: dict, flops: dict) -> dict:
    """{method: {contexts: {ctx: score}, combined_mae (the mean over contexts), flops}} for every
    method's forecasts {ctx: (systems, horizon, 2)}."""
    methods = {}
    for method, fc in forecasts.items():
        per = {str(ctx): score(fc[ctx], truth[ctx], alpha, failed.get(method, {}).get(ctx, 0)) for ctx in contexts}
        methods[method] = {"contexts": per, "combined_mae": float(np.mean([per[str(c)]["mae"] for c in contexts])),
                           "flops": flops.get(method, 0.0)}
    return methods
