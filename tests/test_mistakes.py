"""Every mistake a user can make with a file or a flag is one line and a non-zero exit, before any work:
a table of cases, each of which ended in a traceback (or went on silently) before."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import eval as evaluation
import train
from data import write_series
from flops import Ledger
from qwen_min import QwenConfig, load_pretrained, save_pretrained
from qwen_min.tokenizer import tiny_tokenizer

from .conftest import QWEN_TOKENIZER, needs_qwen_tokenizer, tiny_model

SERIES = (30, 2)  # systems, seed of the simulated file (conftest.series_file)


def train_args(series_file, tmp_path, *extra):
    return ["--model", "tiny-random", "--data", str(series_file), "--chunk", "128", "--stride", "64", "--val-limit", "3",
            "--max-steps", "3", "--eval-every", "3", "--ledger", str(tmp_path / "ledger.json"), "--out",
            str(tmp_path / "run"), "--quiet", *extra]


def eval_args(series_file, tmp_path, *extra):
    return ["--model", "tiny-random", "--data", str(series_file), "--ctx", "40", "--limit", "2", "--no-ode-fit",
            "--ledger", str(tmp_path / "ledger.json"), "--out", str(tmp_path / "eval"), "--quiet", *extra]


def one_line(capsys, code: int, expected: str, status: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == status, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    return err


def nothing_charged(tmp_path) -> bool:
    path = tmp_path / "ledger.json"
    return not path.exists() or Ledger.open(path).total == 0


@pytest.mark.parametrize("extra, message", [
    (["--clip", "-1"], "--clip must be >= 0"),
    (["--lr", "inf"], "--lr must be positive, got inf"),
    (["--alpha", "inf"], "--alpha must be positive, got inf"),
    (["--split-seed", "-1"], "--split-seed must be >= 0"),
    (["--decimals", "-1"], "--decimals must be between 1 and 6"),
    (["--decimals", "0"], "--decimals must be between 1 and 6"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--budget", "1e3"], "--budget 1e+03 can't pay for one step of this run"),
])
def test_training_flags(series_file, tmp_path, capsys, extra, message):
    one_line(capsys, train.main(train_args(series_file, tmp_path, *extra)), message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "ledger.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--temperature", "nan"], "--temperature must be >= 0"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--decimals", "0"], "--decimals must be between 1 and 6"),
    (["--split-seed", "-1"], "--split-seed must be >= 0"),
])
def test_eval_flags(series_file, tmp_path, capsys, extra, message):
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, *extra)), message)
    assert not (tmp_path / "eval").exists() and nothing_charged(tmp_path)


def test_out_that_is_a_file_or_unwritable(series_file, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    one_line(capsys, train.main(train_args(series_file, tmp_path, "--out", str(tmp_path / "file"))), "is a file")
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--out", str(tmp_path / "file"))), "is a file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line(capsys, train.main(train_args(series_file, tmp_path, "--out", str(locked / "run"))), "not writable")
    assert nothing_charged(tmp_path)


def test_ledger_that_is_a_folder_or_not_a_ledger(series_file, tmp_path, capsys):
    argv = train_args(series_file, tmp_path)
    i = argv.index("--ledger") + 1
    argv[i] = str(tmp_path)
    one_line(capsys, train.main(argv), "is a folder, not a ledger file")
    for content, message in [({"budget": 1e12, "convention": "exact", "experiments": []}, "experiments must be an object"),
                             ({"budget": 1e12, "convention": "exact", "experiments": {"a": {"kind": "train"}}},
                              "entry 'a' must hold non-negative numbers"),
                             ({"budget": 1e12, "convention": "exact",
                               "experiments": {"a": {"flops": "1e9", "steps": 1, "tokens": 1}}}, "entry 'a'"),
                             ({"budget": 1e12, "convention": "exact", "experiments": {
                                 "a": {"flops": 1e9, "steps": 1, "tokens": 1, "last_step": "3"}}},
                              "entry 'a' must hold last_step (a step number) and keys (a list of names)"),
                             *[({"budget": b, "convention": "exact", "experiments": {}},
                                f"the budget must be a finite positive number of FLOPs, got {b!r}")
                               for b in (float("inf"), float("nan"), -1e12, 0, "1e12")]]:
        (tmp_path / "bad.json").write_text(json.dumps(content))
        argv[i] = str(tmp_path / "bad.json")
        one_line(capsys, train.main(argv), message)


def test_a_ledger_entry_without_its_step_and_keys_is_charged_from_step_one(series_file, tmp_path, capsys):
    """An entry edited by hand is refused (its chain breaks); one from before steps were recorded (and
    before the chain) is charged again from its first step, never a KeyError after a compute."""
    assert train.main(train_args(series_file, tmp_path)) == 0
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    (entry,) = ledger["experiments"].values()
    del entry["last_step"], entry["keys"]
    (tmp_path / "ledger.json").write_text(json.dumps(ledger))
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--max-steps", "4", "--quiet"]),
             "the chain breaks at entry")
    del entry["chain"], ledger["head"]  # a ledger as it was written before the chain
    (tmp_path / "ledger.json").write_text(json.dumps(ledger))
    assert train.main(["--resume", str(tmp_path / "run"), "--max-steps", "4", "--quiet"]) == 0
    (entry,) = Ledger.open(tmp_path / "ledger.json").experiments.values()
    assert entry["last_step"] == 4


def test_a_copied_run_folder_is_refused_while_the_original_is_there(series_file, tmp_path, capsys):
    import shutil

    assert train.main(train_args(series_file, tmp_path)) == 0
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    before = Ledger.open(tmp_path / "ledger.json").total
    one_line(capsys, train.main(["--resume", str(tmp_path / "copy"), "--max-steps", "5", "--quiet"]),
             f"{tmp_path / 'copy'}: a copy of the run in {tmp_path / 'run'} (the same run id, whose steps the ledger "
             "charged there); continue that one, or start a new run with --out")
    assert Ledger.open(tmp_path / "ledger.json").total == before
    shutil.rmtree(tmp_path / "run")  # moved, not copied: the folder continues where it is now
    assert train.main(["--resume", str(tmp_path / "copy"), "--max-steps", "5", "--quiet"]) == 0
    (entry,) = Ledger.open(tmp_path / "ledger.json").experiments.values()
    assert entry["folder"] == str(tmp_path / "copy") and entry["last_step"] == 5


def test_ledger_in_a_read_only_folder(series_file, tmp_path, capsys, monkeypatch):
    """Root writes anywhere, so the refusal is made as the file system would make it."""
    import data.files

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(data.files.tempfile, "mkstemp", refuse)
    one_line(capsys, train.main(train_args(series_file, tmp_path)), "can't write the ledger (Permission denied)")


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable checkpoint"),
    (os.urandom(300), "not a readable checkpoint"),
])
def test_broken_checkpoints(series_file, tmp_path, capsys, content, message):
    assert train.main(train_args(series_file, tmp_path)) == 0
    (tmp_path / "run" / "checkpoint.pt").write_bytes(content)
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--max-steps", "6", "--quiet"]), message)


def test_truncated_and_other_rank_checkpoints(series_file, tmp_path, capsys):
    assert train.main(train_args(series_file, tmp_path)) == 0
    path = tmp_path / "run" / "checkpoint.pt"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--max-steps", "6", "--quiet"]),
             "not a readable checkpoint")
    ckpt = torch.load(__import__("io").BytesIO(whole), weights_only=True)
    ckpt["trainable"] = {k: torch.zeros(v.shape[0] * 2 if "lora_A" in k else v.shape[0], v.shape[1] * 2
                                        if "lora_B" in k else v.shape[1]) for k, v in ckpt["trainable"].items()}
    torch.save(ckpt, path)
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--max-steps", "6", "--quiet"]),
             "the checkpoint is of another model or LoRA rank")


class Payload:
    """Unpickling this runs code: writes a file next to the checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_runs_no_code(series_file, tmp_path, capsys):
    assert train.main(train_args(series_file, tmp_path)) == 0
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    marker = tmp_path / "owned"
    ckpt["extra"] = Payload(str(marker))
    torch.save(ckpt, path)
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--max-steps", "6", "--quiet"]),
             "not a readable checkpoint")
    assert not marker.exists()


def test_resume_refuses_a_changed_clip(series_file, tmp_path, capsys):
    assert train.main(train_args(series_file, tmp_path)) == 0
    one_line(capsys, train.main(["--resume", str(tmp_path / "run"), "--clip", "0.5", "--max-steps", "6", "--quiet"]),
             "the run was trained with --clip 0.0, and a resumed run keeps it; drop --clip 0.5 to continue it, "
             "or start a new run with --out")


def test_resume_of_a_folder_that_is_no_run_names_resume(tmp_path, capsys):
    """`--resume data` (the project's own package, or any folder of files) is not a run: the line names
    --resume and what it takes, and never advises emptying the folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "simulate.py").write_text("")
    one_line(capsys, train.main(["--resume", str(folder), "--quiet"]),
             f"--resume {folder}: not a run folder (no config.json); --resume takes a folder that train.py wrote, "
             "with config.json and checkpoint.pt")


# --- data files ------------------------------------------------------------------------------------

def test_data_files(tmp_path, capsys):
    traj = np.random.default_rng(0).uniform(0.1, 3, (12, 100, 2)).astype(np.float32)
    good = write_series(tmp_path / "good.h5", traj, np.linspace(0, 50, 100))
    cases = []
    path = tmp_path / "reversed.h5"
    write_series(path, traj, np.linspace(50, 0, 100))
    cases.append((path, "/time must increase"))
    path = tmp_path / "constant.h5"
    write_series(path, traj, np.zeros(100))
    cases.append((path, "/time must increase"))
    path = tmp_path / "complex.h5"
    with h5py.File(path, "w") as f:
        f["trajectories"] = traj.astype(np.complex64)
        f["time"] = np.linspace(0, 50, 100)
    cases.append((path, "must be real numbers"))
    path = tmp_path / "truncated.h5"
    path.write_bytes(good.read_bytes()[:3000])
    cases.append((path, "truncated.h5"))
    path = tmp_path / "one.h5"
    write_series(path, traj[:1], np.linspace(0, 50, 100))
    cases.append((path, "at least 2 are needed"))
    for path, message in cases:
        one_line(capsys, evaluation.main(["--model", "tiny-random", "--data", str(path), "--no-ode-fit", "--quiet",
                                          "--ledger", str(tmp_path / "l.json"), "--out", str(tmp_path / "e")]), message)
        one_line(capsys, train.main(["--model", "tiny-random", "--data", str(path), "--chunk", "128", "--stride", "64",
                                     "--quiet", "--ledger", str(tmp_path / "l.json"), "--out", str(tmp_path / "r")]),
                 message)
    assert not (tmp_path / "l.json").exists()


# --- model, tokenizer and adapter files ------------------------------------------------------------

def model_dir(tmp_path, **overrides):
    model = tiny_model(vocab_size=257)  # the byte tokenizer's size
    path = save_pretrained(model, tmp_path / "m", tokenizer=tiny_tokenizer())
    config = json.loads((path / "config.json").read_text())
    config.update(overrides)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("overrides, message", [
    ({"rope_scaling": "yarn"}, "rope_scaling must be an object or null"),
    ({"rope_parameters": [1, 2]}, "rope_parameters must be an object or null"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
    ({"num_hidden_layers": 2.0}, "num_hidden_layers must be an integer"),
])
def test_model_configs(series_file, tmp_path, capsys, overrides, message):
    path = model_dir(tmp_path, **overrides)
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--model", str(path))), message)
    assert nothing_charged(tmp_path)


def test_config_defaults_are_transformers(tmp_path):
    """A key a config.json leaves out means what it means to transformers' Qwen2Config."""
    from transformers import Qwen2Config

    c = QwenConfig.from_dict({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2})
    ref = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      num_hidden_layers=2)
    assert c.tie_word_embeddings is ref.tie_word_embeddings is False
    assert c.rope_theta == ref.rope_parameters["rope_theta"] == 10000.0
    assert c.vocab_size == ref.vocab_size and c.rms_norm_eps == ref.rms_norm_eps


def test_shard_index_of_the_wrong_shape(series_file, tmp_path, capsys):
    path = model_dir(tmp_path)
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    save_file(state, path / "shard-1.safetensors")
    for weight_map in (["shard-1.safetensors"], {k: 1 for k in state}):
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--model", str(path))),
                 "weight_map must map each key")
    assert nothing_charged(tmp_path)


@needs_qwen_tokenizer
@pytest.mark.parametrize("content", [b"\x80\x81\xff", b"[1, 2]"])
def test_tokenizer_config_of_the_wrong_kind(series_file, tmp_path, capsys, content):
    path = save_pretrained(tiny_model(vocab_size=151936), tmp_path / "m")
    (path / "tokenizer.json").write_bytes((QWEN_TOKENIZER / "tokenizer.json").read_bytes())
    (path / "tokenizer_config.json").write_bytes(content)
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--model", str(path))), "tokenizer_config.json")


def test_model_vocabulary_smaller_than_the_tokenizer(series_file, tmp_path, capsys):
    """Was an IndexError at the first window holding a token past the embedding."""
    path = save_pretrained(tiny_model(vocab_size=100), tmp_path / "m", tokenizer=tiny_tokenizer())
    argv = train_args(series_file, tmp_path)
    argv[argv.index("--model") + 1] = str(path)
    one_line(capsys, train.main(argv), "its vocabulary (100) is smaller than its tokenizer's (257 tokens)")
    assert nothing_charged(tmp_path)


def adapter_dir(tmp_path, series_file):
    assert train.main(train_args(series_file, tmp_path, "--rank", "2")) == 0
    return tmp_path / "run" / "adapter_last"


@pytest.mark.parametrize("change, message", [
    ({"raw": b"\x80\xff"}, "not valid JSON"),
    ({"lora_alpha": "16"}, "lora_alpha must be positive, got '16'"),
    ({"lora_dropout": "abc"}, "lora_dropout must be in [0, 1), got 'abc'"),
])
def test_adapter_configs(series_file, tmp_path, capsys, change, message):
    adapter = adapter_dir(tmp_path, series_file)
    path = adapter / "adapter_config.json"
    if "raw" in change:
        path.write_bytes(change["raw"])
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    before = Ledger.open(tmp_path / "ledger.json").total
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--adapter", str(adapter))), message)
    assert Ledger.open(tmp_path / "ledger.json").total == before


def test_adapter_without_alpha_is_peft_default(tmp_path):
    import lora

    model = lora.inject(load_pretrained("tiny-random"), rank=4, verbose=False)
    lora.save_adapter(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    loaded = lora.load_adapter(load_pretrained("tiny-random"), tmp_path / "a")
    assert lora.lora_config(loaded)["lora_alpha"] == 8  # peft's LoraConfig default, not the rank


def test_adapter_with_non_finite_weights_is_refused(series_file, tmp_path, capsys):
    adapter = adapter_dir(tmp_path, series_file)
    weights = load_file(adapter / "adapter_model.safetensors")
    key = sorted(weights)[0]
    weights[key][0, 0] = float("nan")
    save_file(weights, adapter / "adapter_model.safetensors")
    before = Ledger.open(tmp_path / "ledger.json").total
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--adapter", str(adapter))), "NaN or infinite")
    assert Ledger.open(tmp_path / "ledger.json").total == before


def test_mismatched_adapter_is_refused_before_the_base_model_is_charged(series_file, tmp_path, capsys):
    import lora

    other = lora.inject(tiny_model(), rank=2, verbose=False)  # another model's shapes
    lora.save_adapter(other, tmp_path / "other")
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--adapter", str(tmp_path / "other"))),
             "has shape")
    assert nothing_charged(tmp_path) and not (tmp_path / "eval").exists()


# --- the ODE fit on data the simulator did not make ------------------------------------------------

@pytest.mark.parametrize("name", ["scaled by 1e6", "noise"])
def test_ode_fit_is_bounded_on_foreign_data(name):
    """On data scaled by 1e6 the fit never returned (LSODA on stiff trial parameters). Bounded by
    right-hand-side evaluations it returns, finite, within a count that takes well under a minute."""
    import time

    from data.baselines import ode_fit
    from data.simulate import simulate

    traj, t, _ = simulate(2, seed=3)
    rng = np.random.default_rng(0)
    data = traj[1].astype(np.float64) * 1e6 if name == "scaled by 1e6" else rng.uniform(0.1, 5.0, (100, 2))
    start = time.perf_counter()
    forecast, _ = ode_fit(t, data[:40], 20, max_evaluations=30_000)
    assert time.perf_counter() - start < 30 and forecast.shape == (20, 2) and np.isfinite(forecast).all()


def test_eval_states_the_ode_fits_bound(series_file, tmp_path):
    assert evaluation.main(["--model", "tiny-random", "--data", str(series_file), "--ctx", "40", "--limit", "2",
                            "--ode-evaluations", "50000", "--workers", "1", "--ledger", str(tmp_path / "l.json"),
                            "--out", str(tmp_path / "e"), "--quiet"]) == 0
    r = json.loads((tmp_path / "e" / "results.json").read_text())
    assert r["ode_fit"]["rhs_evaluations_per_fit"] == 50000 and r["ode_fit"]["fits"] == 2
