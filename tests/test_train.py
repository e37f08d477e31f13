"""train.py on the offline tiny preset: learning, exact FLOPs charges, outputs, kill-and-resume, sweeps, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train
from experiment.batches import prepare_data
from experiment.encodings import encoding_of
from experiment.models import run_model
from flops import EXACT, Ledger

from .conftest import ROOT


SERIES = (60, 5)  # systems, seed of the simulated file (conftest.series_file)


def base_args(series_file, tmp_path, *extra):
    return ["--model", "tiny-random", "--data", str(series_file), "--chunk", "128", "--stride", "64",
            "--batch-size", "4", "--val-limit", "6", "--ledger", str(tmp_path / "ledger.json"), "--quiet", *extra]


def test_training_lowers_validation_loss_and_charges_exact_flops(series_file, tmp_path):
    out = tmp_path / "run"
    argv = base_args(series_file, tmp_path, "--max-steps", "200", "--eval-every", "50", "--lr", "1e-2",
                     "--out", str(out))
    assert train.main(argv) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 201))
    vals = [m["val_loss"] for m in metrics if m["val_loss"] is not None]
    assert len(vals) == 4 and vals[-1] < vals[0] - 0.05
    for name in ("config.json", "metrics.jsonl", "loss.png", "checkpoint.pt", "summary.json",
                 "adapter_best/adapter_config.json", "adapter_last/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert set(metrics[0]) == {"step", "train_loss", "val_loss", "lr", "tokens", "flops", "seconds"}

    # the FLOPs the ledger holds are exactly what `flops` computes for those batches and validations
    a = train.settings_from_argv(argv)
    from qwen_min import load_tokenizer, open_model

    prep = prepare_data(a, load_tokenizer("tiny-random"), encoding_of(a.encoding))
    model = run_model(a, open_model(a.model), encoding_of(a.encoding), torch.device("cpu"), torch.float32)
    expected = 0.0
    for step in range(1, 201):
        _, labels = prep.batch(step, 4, a.seed)
        for k in (labels[:, 1:] != -100).sum(1).tolist():
            expected += model.flops(128, EXACT, head_positions=k).training
    expected += 4 * sum(model.flops(len(ids), EXACT, head_positions=len(ids) - 1).forward for ids in prep.val_ids)
    ledger = Ledger.open(tmp_path / "ledger.json")
    assert ledger.total == pytest.approx(expected, rel=1e-12)
    assert metrics[-1]["flops"] == pytest.approx(expected, rel=1e-12)
    run_id = json.loads((out / "config.json").read_text())["run_id"]
    assert list(ledger.named(a.name)) == [run_id] and ledger.experiments[run_id]["steps"] == 200


def run_cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_and_resumed_run_equals_uninterrupted(series_file, tmp_path):
    common = ["--max-steps", "40", "--eval-every", "10", "--checkpoint-every", "5", "--lr", "5e-3", "--dropout", "0.1"]
    whole = tmp_path / "whole"
    assert run_cli(base_args(series_file, whole, *common, "--out", str(whole / "run"))).wait(timeout=300) == 0

    cut = tmp_path / "cut"
    proc = run_cli(base_args(series_file, cut, *common, "--out", str(cut / "run")))
    metrics = cut / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 23:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 23 <= done < 40, "the run should have been killed mid-way"
    resumed = run_cli(["--resume", str(cut / "run"), "--quiet"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert "resuming" in resumed.stderr.read()

    a, b = load_file(whole / "run/adapter_last/adapter_model.safetensors"), load_file(cut / "run/adapter_last/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                          for line in path.read_text().splitlines()]
    assert strip(whole / "run/metrics.jsonl") == strip(cut / "run/metrics.jsonl")
    assert Ledger.open(cut / "ledger.json").total == Ledger.open(whole / "ledger.json").total


def test_budget_stops_before_the_crossing_step_and_spent_ledger_refuses(series_file, tmp_path, capsys):
    argv = base_args(series_file, tmp_path, "--max-steps", "50", "--eval-every", "100", "--out", str(tmp_path / "run"),
                     "--budget", "5e9")
    assert train.main(argv) == 0
    err = capsys.readouterr().err
    assert "budget: stopping before step" in err
    ledger = Ledger.open(tmp_path / "ledger.json")
    assert ledger.total <= 5e9
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not summary["complete"] and 0 < summary["steps"] < 50
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert train.main(base_args(series_file, tmp_path, "--max-steps", "5", "--out", str(tmp_path / "run2"))) == 2
    assert "the budget is spent" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_sweep_writes_its_table_and_refuses_over_budget(series_file, tmp_path, capsys):
    argv = ["sweep", *base_args(series_file, tmp_path, "--max-steps", "6", "--eval-every", "3", "--lrs", "1e-3", "1e-2",
                                "--ranks", "2", "4", "--out", str(tmp_path / "sweep"))]
    assert train.main(argv) == 0
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| learning rate | rank 2 | rank 4 |" in table and "Best: rank" in table
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(summary["runs"]) == 4 and summary["best"]["rank"] in (2, 4)
    ledger = Ledger.open(tmp_path / "ledger.json")
    assert sorted(e["name"] for e in ledger.experiments.values()) == [
        "grid-r2-lr0.001", "grid-r2-lr0.01", "grid-r4-lr0.001", "grid-r4-lr0.01"]
    total = ledger.total
    assert train.main(argv) == 0  # done runs are read back, not paid again
    assert Ledger.open(tmp_path / "ledger.json").total == total
    capsys.readouterr()
    small = ["sweep", *base_args(series_file, tmp_path / "other", "--max-steps", "6", "--budget", "1e9",
                                 "--out", str(tmp_path / "sweep2"))]
    assert train.main(small) == 2
    assert "could afford about" in capsys.readouterr().err
    assert not (tmp_path / "other" / "ledger.json").exists() or Ledger.open(tmp_path / "other" / "ledger.json").total == 0


@pytest.mark.parametrize("extra, message", [
    (["--rank", "0"], "--rank must be a positive integer, got 0"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--targets", "q_proj,qq_proj"], "--targets: unknown LoRA target module 'qq_proj'"),
    (["--chunk", "4", "--stride", "2"], "--chunk 4 is smaller than one time step of text (10 tokens)"),
    (["--model", "no/such-model-here"], "no/such-model-here: not in the local Hugging Face cache"),
    (["--data", "/nonexistent/lv.h5"], "/nonexistent/lv.h5: file not found"),
    (["--device", "tpu"], "unknown device 'tpu'; expected cpu, cuda or cuda:N"),
])
def test_bad_arguments_are_one_line(series_file, tmp_path, extra, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_cli([*base_args(series_file, tmp_path, "--out", str(tmp_path / "run")), *extra])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [f"error: {err.strip().removeprefix('error: ')}"] and message in err
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "ledger.json").exists()  # nothing written for a mistake


def test_torchrun_two_processes_share_one_ledger(series_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(ROOT / "train.py"),
           *base_args(series_file, tmp_path, "--max-steps", "6", "--eval-every", "3", "--out", str(tmp_path / "run"))]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ledger = Ledger.open(tmp_path / "ledger.json")
    names = sorted(ledger.experiments)
    assert len(names) == 2 and names[0].endswith("/rank0") and names[1].endswith("/rank1")
    assert all(e["steps"] == 6 for e in ledger.experiments.values())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2


def test_other_settings_in_a_run_folder_are_refused(series_file, tmp_path, capsys):
    argv = base_args(series_file, tmp_path, "--max-steps", "2", "--out", str(tmp_path / "run"))
    assert train.main(argv) == 0
    assert train.main([*argv, "--lr", "0.5"]) == 2
    assert "holds a run with other settings (lr: 0.0001 there, 0.5 now)" in capsys.readouterr().err


def test_resume_reads_abbreviated_flags_as_given(series_file, tmp_path, capsys):
    """argparse accepts `--max 4` for `--max-steps 4`: resume must see it as given, not let the saved value win;
    and an abbreviated defining flag (`--drop` for `--dropout`) is refused like the full one."""
    out = tmp_path / "run"
    assert train.main(base_args(series_file, tmp_path, "--max-steps", "2", "--eval-every", "2", "--out", str(out))) == 0
    assert train.main(["--resume", str(out), "--max", "4", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    assert json.loads((out / "config.json").read_text())["max_steps"] == 4
    capsys.readouterr()
    assert train.main(["--resume", str(out), "--drop", "0.2", "--max", "6", "--quiet"]) == 2
    assert "the run was trained with --dropout 0.0, and a resumed run keeps it; drop --dropout 0.2" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
