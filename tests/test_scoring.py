"""Forecasts as distributions: CRPS, interval coverage and width, quantile loss; parroting and the
statistical baselines; each checked by hand or against a known distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eval as evaluation
from data.baselines import LEVELS, parroting
from experiment.scoring import Forecast, quantile_loss, score_distribution, weighted_quantile_loss

SERIES = (30, 6)  # systems, seed of the simulated file (conftest.series_file)


def test_crps_of_a_point_forecast_is_its_absolute_error():
    rng = np.random.default_rng(0)
    truth, pred = rng.uniform(0, 5, (4, 6, 2)), rng.uniform(0, 5, (4, 6, 2))
    s = score_distribution(Forecast(pred[:, None]), truth, alpha=2.0)
    assert s["point_forecast"] and s["crps"] == pytest.approx(np.abs(pred - truth).mean() / 2.0, rel=1e-12)
    assert s["coverage_90"] is None and s["width_50"] is None


def test_crps_of_samples_by_hand():
    """Samples 1, 2, 4 against 3: E|X - y| - E|X - X'| / 2 = 4/3 - (12/9) / 2 = 2/3."""
    samples = np.array([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1) * np.ones((1, 3, 1, 2))
    s = score_distribution(Forecast(samples), np.full((1, 1, 2), 3.0), alpha=1.0)
    assert s["crps"] == pytest.approx(2 / 3, rel=1e-12) and not s["point_forecast"]


def test_quantile_loss_by_hand():
    truth = np.array([1.0, 3.0])
    assert quantile_loss(truth, np.array([2.0, 2.0]), 0.9).tolist() == pytest.approx([0.1, 0.9])
    # WQL of a forecast whose every quantile is 2, against 1 and 3: levels 0.1..0.9, losses
    # q|3 - 2| + (1 - q)|1 - 2| = 1 at every level, so 2 * 1 / (1 + 3) = 0.5
    fc = Forecast(quantiles=np.full((1, 2, 1, len(LEVELS)), 2.0), levels=LEVELS)
    assert weighted_quantile_loss(fc, truth.reshape(1, 2, 1)) == pytest.approx(0.5)


def test_coverage_of_a_known_distribution_is_near_its_nominal_level():
    """Truths drawn from the forecast's own distribution N(0, 1), 20,000 of them, seeded: the 50% and
    90% central intervals cover within 0.015 of 50% and 90% (about 4 standard errors), and the 90%
    interval's width is near 2 * 1.645."""
    rng = np.random.default_rng(7)
    n = 20_000
    samples = rng.standard_normal((n, 400, 1, 1)) + np.zeros((n, 400, 1, 2))
    truth = rng.standard_normal((n, 1, 2))
    s = score_distribution(Forecast(samples), truth, alpha=1.0)
    assert abs(s["coverage_50"] - 0.5) < 0.015 and abs(s["coverage_90"] - 0.9) < 0.015
    assert s["width_90"] == pytest.approx(2 * 1.645, rel=0.03)
    assert s["crps"] == pytest.approx(1 / np.sqrt(np.pi), rel=0.03)  # E|X - Y| - E|X - X'|/2 for N(0, 1)


def test_parroting_recovers_a_noiseless_periodic_series():
    t = np.arange(100)
    series = np.stack([2 + np.sin(2 * np.pi * t / 12), 1 + np.cos(2 * np.pi * t / 12)], axis=1)
    forecast = parroting(series[:40], 30, samples=4)
    assert forecast.shape == (4, 30, 2)
    np.testing.assert_allclose(forecast[0], series[40:70], atol=1e-12)


def test_missing_statsforecast_is_one_line(series_file, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "statsforecast" else real(name, *a))
    assert evaluation.main(["--model", "tiny-random", "--data", str(series_file), "--baselines", "arima", "--quiet",
                            "--ledger", str(tmp_path / "l.json"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'error: --baselines arima needs statsforecast, which is not installed: pip install -e ".[baselines]"'
    assert not (tmp_path / "l.json").exists()


def test_every_method_scored_as_a_distribution(series_file, tmp_path):
    pytest.importorskip("statsforecast")
    out = tmp_path / "e"
    argv = ["--model", "tiny-random", "--data", str(series_file), "--ctx", "40", "80", "--limit", "3", "--samples", "4",
            "--temperature", "1.0", "--baselines", "persistence", "parroting", "arima", "ets", "--quiet",
            "--ledger", str(tmp_path / "l.json"), "--out", str(out), "--plot-systems", "0"]
    assert evaluation.main(argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r["methods"]) == {"model", "persistence", "parroting", "arima", "ets"}
    for name, m in r["methods"].items():
        assert m["point_forecast"] == (name == "persistence")
        for per in m["contexts"].values():
            assert len(per["crps_by_step"]) == 20
            if name != "persistence":
                assert 0 <= per["coverage_50"] <= per["coverage_90"] <= 1 and per["width_90"] >= per["width_50"] >= 0
                assert per["wql"] > 0
    assert r["methods"]["persistence"]["combined_crps"] == pytest.approx(r["methods"]["persistence"]["combined_mae"])
    assert "| arima | distribution |" in (out / "results.md").read_text()
    saved = np.load(out / "forecasts.npz")
    assert "arima|40|q0.05" in saved.files and "persistence|40|q0.05" not in saved.files


def test_a_statistical_model_that_does_not_fit_a_series_forecasts_persistence(monkeypatch):
    """statsforecast can return NaN for a series (a fit whose variance goes negative): that series'
    forecast is its last value, counted, and nothing NaN reaches the scores."""
    pytest.importorskip("statsforecast")
    import statsforecast

    from data.baselines import statistical

    real = statsforecast.StatsForecast.forecast

    def one_fails(self, *args, **kwargs):
        fc = real(self, *args, **kwargs)
        fc.loc[fc["unique_id"] == 1, [c for c in fc.columns if c.startswith("arima")]] = float("nan")
        return fc
    monkeypatch.setattr(statsforecast.StatsForecast, "forecast", one_fails)
    contexts = np.random.default_rng(0).uniform(0.5, 2, size=(3, 30, 2))
    report = {}
    quantiles = statistical(contexts, 5, ("arima",), report)["arima"]
    assert np.isfinite(quantiles).all() and report == {"arima": 1}
    assert np.all(quantiles[0, :, 1] == contexts[0, -1, 1])  # unique_id 1: system 0's predator
