"""Small forecasters from scratch: the number vocabulary, the presets, full training on fresh systems."""

from __future__ import annotations

import json

import pytest
import torch

import eval as evaluation
import train
from experiment.batches import prepare_data
from experiment.folders import resume_settings
from experiment.encodings import encoding_of
from experiment.models import run_model
from flops import EXACT, Ledger
from qwen_min import QwenForValueForecasting, load_pretrained, load_tokenizer, open_model


def test_number_vocabulary():
    tok = load_tokenizer("scratch-5m", "digits")
    text = "0.68,0.75;0.53,0.56;"
    assert tok.encode(text) == [0, 10, 6, 8, 11, 0, 10, 7, 5, 12, 0, 10, 5, 3, 11, 0, 10, 5, 6, 12]
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 15 and tok.eos_id == 13
    assert tok.encode("1x") == [1, 14]  # anything else is <unk>


@pytest.mark.parametrize("name, low, high", [("scratch-1m", 0.8e6, 1.2e6), ("scratch-5m", 4e6, 6e6),
                                             ("scratch-20m", 18e6, 24e6)])
def test_preset_sizes(name, low, high):
    model = load_pretrained(name, encoding="digits")
    assert low < model.num_parameters() < high
    assert model.config.vocab_size == 16
    continuous = load_pretrained(name)  # the presets' default: the same decoder, value layers for the LM head
    assert isinstance(continuous, QwenForValueForecasting) and low < continuous.num_parameters() < high
    assert load_tokenizer(name).vocab_size == 15


SERIES = (40, 3)  # systems, seed of the simulated file (conftest.series_file)


def test_full_training_on_fresh_systems_then_eval(series_file, tmp_path):
    out = tmp_path / "run"
    argv = ["--model", "scratch-1m", "--encoding", "digits", "--data", str(series_file), "--chunk", "256", "--stride", "256",
            "--batch-size", "4", "--max-steps", "12", "--eval-every", "6", "--val-limit", "4", "--fresh-systems", "8",
            "--lr", "3e-3", "--schedule", "cosine", "--warmup", "3", "--clip", "1.0",
            "--ledger", str(tmp_path / "ledger.json"), "--out", str(out), "--quiet"]
    assert train.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["full"] and config["fresh_systems"] == 8 and config["train_systems"] == []
    assert config["trainable_parameters"] == load_pretrained("scratch-1m", encoding="digits").num_parameters()
    assert (out / "model_best" / "tokenizer.json").is_file() and (out / "model_last" / "model.safetensors").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["lr"] == pytest.approx(1e-3) and metrics[-1]["lr"] < 1e-4  # warm-up, then cosine decay

    # every weight trains: the ledger pays the full backward, twice each linear layer's forward matmuls
    a = train.settings_from_argv(argv)
    prep = prepare_data(a, load_tokenizer("scratch-1m", "digits"), encoding_of(a.encoding))
    model = run_model(a, open_model(a.model), encoding_of(a.encoding), torch.device("cpu"), torch.float32)
    cost = model.flops(256, EXACT)
    assert cost.backward >= 2 * cost.matmul
    expected = 0.0
    for step in range(1, 13):
        _, labels = prep.batch(step, 4, a.seed)
        expected += sum(model.flops(256, EXACT, head_positions=k).training
                        for k in (labels[:, 1:] != -100).sum(1).tolist())
    expected += 2 * sum(model.flops(len(v), EXACT, head_positions=len(v) - 1).forward for v in prep.val_ids)
    assert Ledger.open(tmp_path / "ledger.json").total == pytest.approx(expected, rel=1e-12)

    # a run from before --encoding (no encoding in config.json) is a digits run, resumed as one
    saved = json.loads((out / "config.json").read_text())
    del saved["encoding"], saved["components"], saved["value_space"]
    (out / "config.json").write_text(json.dumps(saved))
    assert resume_settings(out).resolved().encoding == "digits"

    # epochs bring new systems: epoch 1's windows differ from epoch 0's
    assert not torch.equal(prep.windows_of(0)["input_ids"], prep.windows_of(1)["input_ids"])

    # the same evaluation code, metric and ledger as everything else
    ev = ["--model", str(out / "model_best"), "--data", str(series_file), "--limit", "3", "--out", str(tmp_path / "eval"),
          "--ledger", str(tmp_path / "ledger.json"), "--quiet", "--no-ode-fit"]
    assert evaluation.main(ev) == 0
    r = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert r["methods"]["model"]["contexts"]["80"]["failed_steps"] == 0


def test_scratch_presets_default_to_continuous_windows_of_whole_series():
    s = train.settings_from_argv(["--model", "scratch-1m"])
    assert (s.encoding, s.chunk, s.stride, s.full, s.fresh_systems) == ("continuous", 100, 100, True, 850)
    assert train.settings_from_argv(["--model", "tiny-random"]).encoding == "digits"
    assert train.settings_from_argv(["--model", "scratch-1m", "--encoding", "bins"]).chunk == 512
