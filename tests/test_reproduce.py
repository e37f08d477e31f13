"""The whole plan in one command on the tiny preset: tables, figures, resume after a kill, refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flops import Ledger

from .conftest import ROOT

BUDGET = "4e11"


SERIES = (40, 11)  # systems, seed of the simulated file (conftest.series_file)


def plan_args(series_file, out, budget=BUDGET):
    return ["--model", "tiny-random", "--data", str(series_file), "--budget", budget, "--out", str(out),
            "--lrs", "1e-3", "1e-2", "--ranks", "2", "4", "--eval-limit", "3", "--val-limit", "3", "--eval-every", "20",
            "--plot-systems", "0", "1", "--quiet"]


def start(args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "reproduce.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_plan_completes_and_resumes_to_the_same_ledger(series_file, tmp_path):
    whole = tmp_path / "whole"
    proc = start(plan_args(series_file, whole))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    report = (whole / "report.md").read_text()
    for heading in ("Table 3", "Table 4", "Table 5", "Forecast MAE"):
        assert heading in report
    for line in report.splitlines():
        if line.startswith("!["):
            assert (whole / line.split("](")[1].rstrip(")")).is_file(), line
    assert "| tuned LoRA |" in report and "| persistence |" in report and "| ode_fit |" in report
    choice = json.loads((whole / "choice.json").read_text())
    assert choice["best_setting"]["rank"] in (2, 4) and choice["best_chunk"] in (128, 512, 768)
    assert min(v for v in choice["grid"].values()) == choice["best_setting"]["val_loss"]
    ledger = Ledger.open(whole / "ledger.json")
    assert 0 < ledger.total <= float(BUDGET)
    assert {"eval-untuned", "eval-default", "eval-final"} <= {e["name"] for e in ledger.experiments.values()}
    assert "stage 3: grid-r2-lr0.001" in err and "steps at" in err  # each stage says its plan first
    tail = out[out.rindex("plan finished"):].splitlines()  # the summary after report.md names the files
    assert tail[1:3] == [f"  report  {whole / 'report.md'}", f"  plan    {whole / 'plan.json'}"], out[-500:]
    assert tail[-1].startswith(f"ledger {whole / 'ledger.json'}: {ledger.total:.3e} of")

    cut = tmp_path / "cut"
    proc = start(plan_args(series_file, cut))
    deadline = time.time() + 600
    while time.time() < deadline and not (cut / "grid-r4-lr0.001" / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "report.md").exists()
    again = start(plan_args(series_file, cut))
    _, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert "done, read back" in err
    assert Ledger.open(cut / "ledger.json").total == pytest.approx(ledger.total, rel=1e-12)
    assert json.loads((cut / "choice.json").read_text()) == choice

    # the audit: every training run's entry, killed and resumed or not, re-derived from its folder
    for folder in (whole, cut):
        subfolders = sorted(str(p) for p in folder.iterdir() if p.is_dir())
        done = subprocess.run([sys.executable, "-m", "flops", "audit", str(folder / "ledger.json"), *subfolders],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        entries = len(Ledger.open(folder / "ledger.json").experiments)
        assert done.stdout.count("agrees with the work") == entries >= 10 and "DISAGREES" not in done.stdout


def test_budget_too_small_is_refused_up_front(series_file, tmp_path):
    proc = start(plan_args(series_file, tmp_path / "small", budget="1e8"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --budget 1e+08 is too small:")
    assert "FLOPs" in lines[0]
    assert not (tmp_path / "small" / "plan.json").exists()


def test_ctrl_c_in_a_training_run_stops_the_plan(series_file, tmp_path, monkeypatch, capsys):
    """A run stopped by Ctrl-C returns its summary (checkpointed); the plan stops there instead of going on."""
    import experiment.plan
    import reproduce

    started = []

    def interrupted_run(a, source=None):
        started.append(a.name)
        return {"name": a.name, "complete": False, "stopped": "interrupted at step 3", "interrupted": True}
    monkeypatch.setattr(experiment.plan, "train", interrupted_run)
    out = tmp_path / "plan"
    assert reproduce.main(plan_args(series_file, out)) == 130
    assert "stopped: the same command continues from here" in capsys.readouterr().err
    assert len(started) == 1 and not (out / "report.md").exists()
    assert not (out / started[0] / "results.json").exists() and not any(out.glob("eval-default*"))


def test_bad_device_is_refused_before_anything_is_written(series_file, tmp_path, capsys):
    import reproduce

    out = tmp_path / "plan"
    assert reproduce.main([*plan_args(series_file, out), "--device", "tpu"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown device 'tpu'; expected cpu, cuda or cuda:N"
    assert not out.exists()
