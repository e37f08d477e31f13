"""The contract every registered encoding keeps, on the tiny preset: its windows give back the
series they were cut from; its loss is finite and falls; its linear layers' FLOPs, as charged, are
what FlopCounterMode measures; a forecast parses every step, charges the modules' own flops(), and
stays within the bound planned for it; a killed and resumed run equals an uninterrupted one.
A new encoding is covered by adding it to `experiment.encodings.ENCODINGS`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

import train
from data.windows import IGNORE
from experiment import trainer as trainer_module
from experiment.batches import prepare_data
from experiment.costs import step_cost
from experiment.encodings import ENCODINGS, ForecastTask, encoding_of
from experiment.models import forecast_model, run_model
from flops import EXACT, Ledger
from qwen_min import open_model
from qwen_min.presets import KINDS

from .test_flops import INPLACE_ADDMM

SERIES = (30, 13)  # systems, seed of the simulated file (conftest.series_file)
NAMES = list(ENCODINGS)
CHUNK = {"continuous": 40}  # positions per window: a token encoding needs a few time steps of text
TOKEN_CHUNK = 128


def chunk_of(name: str) -> int:
    return CHUNK.get(name, TOKEN_CHUNK)


def counted(fn):
    """(what fn returns, the FLOPs FlopCounterMode saw it compute)."""
    with FlopCounterMode(display=False, custom_mapping=INPLACE_ADDMM) as counter, torch.no_grad():
        out = fn()
    return out, counter.get_total_flops()


def argv(series_file, folder, name, *extra):
    return ["--model", "tiny-random", "--encoding", name, "--data", str(series_file), "--chunk", str(chunk_of(name)),
            "--stride", str(chunk_of(name)), "--batch-size", "3", "--val-limit", "4", "--lr", "3e-3",
            "--ledger", str(folder / "ledger.json"), "--out", str(folder / "run"), "--quiet", *extra]


def settings(series_file, tmp_path, name, *extra):
    return train.settings_from_argv(argv(series_file, tmp_path, name, *extra))


def metrics(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]


def test_every_encoding_has_its_preset_vocabulary():
    assert set(ENCODINGS) == set(KINDS)
    for name, encoding in ENCODINGS.items():
        assert encoding_of(name) is encoding and encoding.name == name


@pytest.mark.parametrize("name", NAMES)
def test_windows_give_back_the_series_they_were_cut_from(series_file, tmp_path, name):
    """Every real position of every window, in order, is the series again; validation rows padded
    into one batch keep theirs too."""
    s = settings(series_file, tmp_path, name)
    encoding, tok = encoding_of(name), open_model("tiny-random").tokenizer(name)
    values = np.round(np.random.default_rng(0).uniform(0, 9.99, size=(3, 37, 2)), 2)
    inputs = encoding.inputs(values, 1.0, tok, s.decimals)
    windows = encoding.windows(inputs, s.chunk, s.chunk, tok.pad_id or 0)
    real = windows["labels"] != IGNORE
    stitched = torch.cat([w[r] for w, r in zip(windows[encoding.window_key], real)])
    assert torch.equal(stitched, torch.cat([torch.as_tensor(np.asarray(i)) for i in inputs]))
    padded, labels = encoding.pad(inputs, tok.pad_id or 0)
    for row, mask, original in zip(padded, labels != IGNORE, inputs):
        assert torch.equal(row[mask], torch.as_tensor(np.asarray(original)))


@pytest.mark.parametrize("name", NAMES)
def test_linear_flops_of_a_training_step_equal_flop_counter(series_file, tmp_path, name):
    """The loss's forward on a step's windows (LoRA, and the encoding's own layers) under
    FlopCounterMode, against what the step is charged."""
    s = settings(series_file, tmp_path, name, "--rank", "2")
    encoding, source = encoding_of(name), open_model(s.model)
    prep = prepare_data(s, source.tokenizer(name), encoding)
    model = run_model(s, source, encoding, "cpu", torch.float32)
    inputs, labels = prep.batch(1, s.batch_size, s.seed)
    labels[-1, chunk_of(name) // 2:] = IGNORE  # a window that ends early: the head runs on fewer positions
    (loss, _), flops = counted(lambda: encoding.loss(model, inputs, labels))
    assert torch.isfinite(loss) and flops == step_cost(model, EXACT, s.chunk, labels).matmul > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("samples, temperature", [(1, 0.0), (2, 1.0)])
def test_a_forecast_parses_every_step_and_charges_its_own_flops(series_file, name, samples, temperature):
    encoding, source = encoding_of(name), open_model("tiny-random")
    tok = source.tokenizer(name)
    model = forecast_model(source, encoding, 0, "cpu", torch.float32)
    values = np.random.default_rng(1).uniform(0.1, 5, size=(3, 30, 2))
    task = ForecastTask([8, 20], horizon=5, samples=samples, temperature=temperature)
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    (preds, failed, cost), flops = counted(lambda: encoding.forecast(model, tok, values, 2.0, task, EXACT, gen, rng))
    for ctx in task.contexts:
        assert preds[ctx].shape == (3, samples, 5, 2) and np.isfinite(preds[ctx]).all() and (preds[ctx] >= 0).all()
        assert failed[ctx] == 0
    assert cost.matmul == flops > 0  # what ran, as the modules' flops() count it
    assert encoding.bound(model, tok, values, 2.0, task, EXACT) >= cost.forward > cost.matmul


class Killed(BaseException):
    """A process killed mid-run: nothing of the run's own clean-up happens."""


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_and_a_killed_run_resumes_to_the_uninterrupted_one(series_file, tmp_path, name, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    common = ["--full", "--max-steps", "12", "--eval-every", "4", "--checkpoint-every", "3"]
    assert train.main(argv(series_file, whole, name, *common)) == 0
    vals = [m["val_loss"] for m in metrics(whole) if m["val_loss"] is not None]
    assert len(vals) == 3 and all(np.isfinite(vals)) and vals[-1] < vals[0]

    real_step = trainer_module.Trainer.step

    def killed_after_step_8(self, nxt, batch, cost):
        loss = real_step(self, nxt, batch, cost)  # computed and charged, then the process dies
        if nxt == 8:
            raise Killed
        return loss
    monkeypatch.setattr(trainer_module.Trainer, "step", killed_after_step_8)
    with pytest.raises(Killed):
        train.main(argv(series_file, cut, name, *common))
    monkeypatch.setattr(trainer_module.Trainer, "step", real_step)
    assert train.main(["--resume", str(cut / "run"), "--quiet"]) == 0

    assert metrics(cut) == metrics(whole)
    kind = "model_last/model.safetensors"
    a, b = load_file(whole / "run" / kind), load_file(cut / "run" / kind)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert Ledger.open(cut / "ledger.json").total == Ledger.open(whole / "ledger.json").total
