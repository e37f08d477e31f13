"""Damaged and hand-edited files, and a run stopped half-way: each is one line and a non-zero exit,
or is read the way it was meant, and nothing is charged twice or scored wrongly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import eval as evaluation
import train
from experiment.encodings import Encoding
from experiment.outputs import EvalFolder
from experiment.forecast import evaluate
from experiment.settings import EvalSettings
from flops import Ledger

from .test_mistakes import eval_args, one_line, train_args

SERIES = (30, 2)


@pytest.fixture
def value_run(series_file, tmp_path):
    out = tmp_path / "value"
    assert train.main(train_args(series_file, tmp_path, "--encoding", "continuous", "--chunk", "30", "--stride", "10",
                                 "--out", str(out))) == 0
    return out


@pytest.fixture
def scratch_model(scratch_run):
    return scratch_run / "model_best"


# --- a run's own files ---------------------------------------------------------------------------

def test_a_torn_last_metrics_line_resumes_and_a_damaged_one_is_one_line(series_file, tmp_path, capsys):
    assert train.main(train_args(series_file, tmp_path)) == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 4, "train_lo')  # killed while appending the next step's row
    assert train.main(["--resume", str(tmp_path / "run"), "--max-steps", "4", "--quiet"]) == 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    capsys.readouterr()
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[2:]]) + "\n")
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--max-steps", "5", "--quiet"]),
             f"{metrics}: line 2 is not JSON; the run's metrics are damaged")


def test_a_run_config_of_the_wrong_type_is_one_line(series_file, tmp_path, capsys):
    assert train.main(train_args(series_file, tmp_path)) == 0
    config = tmp_path / "run" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "components": "1"}))
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--quiet"]),
             f"{config}: components is '1', expected an integer")


@pytest.mark.parametrize("flag,value,message", [
    ("--components", "100000000", "--components must be at most 64, got 100000000"),
    ("--head-steps", "1000", "--head-steps must be 1 to 100 (a series' length), got 1000")])
def test_a_value_head_too_large_to_make_is_refused_before_it_is_made(series_file, tmp_path, capsys, flag, value,
                                                                     message):
    one_line(capsys, train.main(train_args(series_file, tmp_path, "--encoding", "continuous", flag, value)), message)


def test_a_config_edited_under_a_checkpoint_is_refused(series_file, tmp_path, value_run, capsys):
    config = value_run / "config.json"
    saved = json.loads(config.read_text())
    assert saved["value_space"] == "log"
    config.write_text(json.dumps({**saved, "value_space": "linear"}))
    one_line(capsys, train.main(["--resume", str(value_run), "--max-steps", "4", "--quiet"]),
             f"{value_run / 'checkpoint.pt'}: was trained with value_space 'log', but {config} now says 'linear'")
    # and the run's adapter no longer matches what its config says it trained
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--adapter", str(value_run))),
             f"{value_run / 'adapter_best'}: its value head has value_space 'log', but the run's {config} says "
             "'linear'")


def test_results_record_each_model_s_value_head(series_file, tmp_path, value_run, capsys):
    assert evaluation.main(eval_args(series_file, tmp_path, "--adapter", str(value_run))) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["value_heads"]["model+value"] == {"components": 1, "space": "log", "steps": 1, "inputs": "level"}


# --- a model folder's files --------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["folder", "list", "binary"])
def test_a_model_s_config_that_is_no_json_object_is_one_line(series_file, tmp_path, scratch_model, capsys, damage):
    config = scratch_model / "config.json"
    config.unlink()
    {"folder": lambda: config.mkdir(), "list": lambda: config.write_text("[1, 2]"),
     "binary": lambda: config.write_bytes(bytes(range(256)))}[damage]()
    argv = eval_args(series_file, tmp_path)[2:] + ["--model", str(scratch_model)]
    err = one_line(capsys, evaluation.main(argv), str(config))
    assert "config" in err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_model_with_nan_or_infinite_weights_is_refused(series_file, tmp_path, scratch_model, capsys, value):
    weights = scratch_model / "model.safetensors"
    state = load_file(weights)
    key = sorted(state)[0]
    state[key][0] = value
    save_file(state, weights)
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path)[2:] + ["--model", str(scratch_model)]),
             f"{weights}: {key} holds NaN or infinite values (as float32); refusing to load it")
    assert not (tmp_path / "eval" / "results.json").exists()


def test_results_json_is_strict_json_whatever_a_score_is(tmp_path):
    EvalFolder(tmp_path).write({"methods": {"x": {"combined_mae": float("nan"), "by_step": [1.0, float("inf")]}}},
                               "table", {"a": np.zeros(2)})
    text = (tmp_path / "results.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    assert loaded["methods"]["x"] == {"combined_mae": None, "by_step": [1.0, None]}


def test_an_adapter_holding_one_weight_under_two_names_is_refused(series_file, tmp_path, capsys):
    assert train.main(train_args(series_file, tmp_path)) == 0
    weights = tmp_path / "run" / "adapter_best" / "adapter_model.safetensors"
    state = load_file(weights)
    key = next(k for k in sorted(state) if k.endswith("lora_B.weight"))
    state[key.replace(".weight", ".default.weight")] = state[key] + 1
    save_file(state, weights)
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--adapter", str(tmp_path / "run"))),
             f"holds both {key.replace('.weight', '.default.weight')} and {key}")


# --- an evaluation stopped between two charges ----------------------------------------------------------

def test_an_evaluation_killed_between_batches_charges_only_the_rest_when_run_again(series_file, tmp_path,
                                                                                   monkeypatch):
    def settings(name):
        return EvalSettings(model="tiny-random", data=str(series_file), limit=4, batch_size=1, ctx=[20], horizon=3,
                            baselines=["persistence"], out=str(tmp_path / name), ledger=str(tmp_path / f"{name}.json"),
                            quiet=True)
    whole = evaluate(settings("whole"))["flops"]
    calls, forecast = [0], Encoding.forecast

    def stopped_at_the_third(self, *args, **kw):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return forecast(self, *args, **kw)
    monkeypatch.setattr(Encoding, "forecast", stopped_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate(settings("again"))
    ledger = Ledger.open(tmp_path / "again.json")
    (entry,) = ledger.experiments.values()
    assert list(entry["claims"]) == ["model|systems2-3"]  # the third batch's claim, never settled
    charged = ledger.total
    assert 0 < charged - entry["claims"]["model|systems2-3"] < whole  # the two batches before the stop
    monkeypatch.setattr(Encoding, "forecast", forecast)
    results = evaluate(settings("again"))
    assert 0 < results["charged"] < whole / 2  # the fourth batch alone
    final = Ledger.open(tmp_path / "again.json").total
    assert final == pytest.approx(charged + results["charged"]) and final >= whole  # never less than computed


def test_an_adapter_config_naming_a_non_string_layer_is_one_line(series_file, tmp_path, value_run, capsys):
    config = value_run / "adapter_best" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "modules_to_save": [1, "value_head"]}))
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--adapter", str(value_run / "adapter_best"))),
             f"{config}: modules_to_save=[1, 'value_head'] is not supported")
