"""eval.py: outputs on the tiny preset, the grammar under adversarial logits, MAE by hand, baselines."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import eval as evaluation
from experiment import encodings
from experiment.scoring import score
from data import step_pattern, write_series
from data.baselines import ode_fit, persistence
from data.simulate import integrate
from qwen_min import generate, load_pretrained
from qwen_min.tokenizer import tiny_tokenizer


SERIES = (60, 7)  # systems, seed of the simulated file (conftest.series_file)


def test_tiny_preset_writes_every_output(series_file, tmp_path):
    out = tmp_path / "eval"
    argv = ["--model", "tiny-random", "--data", str(series_file), "--ctx", "40", "80", "--limit", "8", "--out", str(out),
            "--ledger", str(tmp_path / "ledger.json"), "--quiet", "--workers", "1", "--plot-systems", "0", "3"]
    assert evaluation.main(argv) == 0
    for name in ("results.json", "results.md", "mae_vs_horizon.png", "forecasts.png"):
        assert (out / name).is_file(), name
    r = json.loads((out / "results.json").read_text())
    assert set(r["methods"]) == {"model", "persistence", "parroting", "ode_fit"} and len(r["systems"]) == 8
    assert r["alpha"] > 0 and r["data"] == str(series_file) and r["flops"] > 0
    for method in r["methods"].values():
        assert set(method["contexts"]) == {"40", "80"}
        for per in method["contexts"].values():
            assert len(per["mae_by_step"]) == 20 and per["failed_steps"] == 0
            assert set(per) >= {"mae", "mae_by_species", "mae_original", "mse"}
        assert method["combined_mae"] == pytest.approx(np.mean([m["mae"] for m in method["contexts"].values()]))
    assert r["methods"]["ode_fit"]["combined_mae"] < 1e-3  # the data come from the fitted family
    from flops import Ledger
    assert Ledger.open(tmp_path / "ledger.json").total == pytest.approx(r["flops"])
    assert "| persistence |" in (out / "results.md").read_text()


def test_contexts_batched_together_equal_each_alone_and_share_the_prefill(series_file, tmp_path):
    def run(ctxs, out):
        argv = ["--model", "tiny-random", "--data", str(series_file), "--ctx", *ctxs, "--limit", "4", "--out",
                str(tmp_path / out), "--ledger", str(tmp_path / f"{out}.json"), "--quiet", "--no-ode-fit"]
        assert evaluation.main(argv) == 0
        return json.loads((tmp_path / out / "results.json").read_text()), np.load(tmp_path / out / "forecasts.npz")
    both, f_both = run(["40", "80"], "both")
    alone = {c: run([c], f"ctx{c}") for c in ("40", "80")}
    for c, (r, f) in alone.items():
        assert np.array_equal(f_both[f"model|{c}"], f[f"model|{c}"])
        assert r["methods"]["model"]["contexts"][c]["mae"] == both["methods"]["model"]["contexts"][c]["mae"]
    # the 40-step prompts are the start of the 80-step ones: their prefill is not computed again
    assert both["flops"] < sum(r["flops"] for r, _ in alone.values())


def test_any_file_of_the_format(tmp_path):
    traj = np.random.default_rng(0).uniform(0.1, 3, (12, 70, 2)).astype(np.float32)
    path = write_series(tmp_path / "other.h5", traj, np.linspace(0, 50, 70))
    argv = ["--model", "tiny-random", "--data", str(path), "--ctx", "30", "--horizon", "10", "--out", str(tmp_path / "o"),
            "--ledger", str(tmp_path / "l.json"), "--quiet", "--no-ode-fit"]
    assert evaluation.main(argv) == 0
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert len(r["methods"]["model"]["contexts"]["30"]["mae_by_step"]) == 10


@pytest.mark.parametrize("argv, message", [
    (["--ctx", "90"], "--ctx 90 + --horizon 20 needs 110 time points"),
    (["--adapter", "/nonexistent"], "--adapter /nonexistent: no adapter_config.json there"),
    (["--samples", "3"], "--samples > 1 needs --temperature > 0"),
    (["--device", "tpu"], "unknown device 'tpu'; expected cpu, cuda or cuda:N"),
])
def test_bad_arguments(series_file, tmp_path, capsys, argv, message):
    base = ["--model", "tiny-random", "--data", str(series_file), "--out", str(tmp_path / "o"),
            "--ledger", str(tmp_path / "l.json"), "--quiet"]
    assert evaluation.main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- the grammar -----------------------------------------------------------------------------------

def number_pattern(tok, decimals=2):
    return [[tok.token_id(c) for c in chars] for chars in step_pattern(decimals)]


@pytest.mark.parametrize("seed", range(4))
def test_grammar_holds_against_adversarial_logits(seed):
    """The head is rigged so that the model wants separators, letters or stop tokens everywhere."""
    tok = tiny_tokenizer()
    model = load_pretrained("tiny-random")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.lm_head.weight
        w.copy_(torch.randn(w.shape, generator=gen) * 0.05)
        for bad in ";,.aZ-" + "0":
            w[tok.token_id(bad)] *= 40  # huge logits for tokens the grammar must refuse in most positions
    prompts = [tok.encode("0.68,0.75;0.53,0.56;"), tok.encode("1.00,2.00;")]
    for temperature in (0.0, 5.0):
        out = generate(model, prompts, 20 * 10, pad_id=tok.pad_id, pattern=number_pattern(tok),
                       temperature=temperature, generator=gen)
        for ids in out:
            assert re.fullmatch(r"(\d\.\d\d,\d\.\d\d;){20}", tok.decode(ids))


def test_forced_skipping_restricted_head_and_ragged_prefill_change_no_token():
    tok = tiny_tokenizer()
    model = load_pretrained("tiny-random")
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    prompts = [tok.encode("0.68,0.75;0.53,0.56;0.41,0.38;"), tok.encode("2.00,1.00;")]
    a = generate(model, prompts, 60, pad_id=tok.pad_id, pattern=number_pattern(tok))
    b = generate(model, prompts, 60, pad_id=tok.pad_id, pattern=number_pattern(tok), skip_forced=False,
                 restrict_head=False, ragged_prefill=False)
    assert a == b
    # 6 free tokens per 10-token step; the two prompt lengths are prefilled as two groups
    assert a.forward_calls == 36 + 1 and b.forward_calls == 60
    assert a.flops < b.flops


# --- metrics and baselines -------------------------------------------------------------------------

def test_mae_by_hand():
    true = np.zeros((2, 3, 2))
    pred = np.zeros((2, 3, 2))
    pred[0, :, 0] = [1, 2, 3]  # system 0 prey off by 1, 2, 3
    pred[1, 2, 1] = -4  # system 1 predator off by 4 at the last step
    s = score(pred, true, alpha=2.0)
    # scaled errors: prey 0.5, 1, 1.5 (system 0); predator 2 (system 1, step 3); 12 values in all
    assert s["mae"] == pytest.approx((0.5 + 1 + 1.5 + 2) / 12)
    assert s["mae_by_step"] == pytest.approx([0.5 / 4, 1 / 4, (1.5 + 2) / 4])
    assert s["mae_by_species"]["prey"] == pytest.approx(3 / 6) and s["mae_by_species"]["predator"] == pytest.approx(2 / 6)
    assert s["mae_original"] == pytest.approx(10 / 12)
    assert s["mse"] == pytest.approx((0.25 + 1 + 2.25 + 4) / 12)


def test_persistence_repeats_the_last_step():
    ctx = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(persistence(ctx, 3), [[8, 9]] * 3)


def test_ode_fit_recovers_a_noiseless_system():
    params = {"a": np.array([0.22]), "b": np.array([0.31]), "g": np.array([0.17]), "K": np.array([9.0]),
              "c": np.array([0.55]), "h": np.array([0.12]), "x0": np.array([1.05]), "y0": np.array([0.9])}
    time_ = np.linspace(0, 200, 100)
    series = integrate(params, time_)[0]
    forecast, fitted = ode_fit(time_, series[:40], 20)
    assert np.abs(forecast - series[40:60]).max() < 1e-3
    np.testing.assert_allclose(fitted, [params[k][0] for k in ("a", "b", "g", "K", "c", "h", "x0", "y0")], rtol=1e-2)


def test_stopped_run_charges_the_batches_it_generated(series_file, tmp_path, monkeypatch, capsys):
    """Stopped during its second batch, eval has charged the first and holds its claim on the second
    (the bound, never settled: the batch may have been computed); run again, it charges nothing more."""
    from flops import Ledger

    def argv(ledger, out):
        return ["--model", "tiny-random", "--data", str(series_file), "--ctx", "40", "--limit", "8", "--batch-size",
                "4", "--out", str(tmp_path / out), "--ledger", str(tmp_path / ledger), "--quiet", "--no-ode-fit"]
    assert evaluation.main(argv("whole.json", "whole")) == 0
    whole = Ledger.open(tmp_path / "whole.json").total

    calls, real_generate = [], encodings.generate

    def stop_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)
    monkeypatch.setattr(encodings, "generate", stop_on_second)
    assert evaluation.main(argv("stopped.json", "stopped")) == 130
    assert "stopped: no results written" in capsys.readouterr().err
    assert not (tmp_path / "stopped").exists()
    ledger = Ledger.open(tmp_path / "stopped.json")
    (entry,) = ledger.experiments.values()
    (claim,) = entry["claims"].values()  # the second batch's bound, claimed before it was generated
    first = ledger.total
    assert first >= whole and first - claim < whole  # the first batch as it was spent, the second as claimed

    monkeypatch.setattr(encodings, "generate", real_generate)
    assert evaluation.main(argv("stopped.json", "stopped")) == 0
    assert Ledger.open(tmp_path / "stopped.json").total == pytest.approx(first)
    results = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert results["flops"] == pytest.approx(whole) and results["charged"] == 0
