"""Two processes on one ledger that pays for one: each step is claimed in the ledger before it is
computed, so the ledger ends equal to what the two computed, never above its budget, and the run
that loses the race stops cleanly at a checkpoint it can resume from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from flops import Ledger

from .conftest import ROOT

SERIES = (30, 2)


def argv(series_file, ledger, out, steps: int) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--model", "tiny-random", "--data", str(series_file), "--chunk",
            "128", "--stride", "64", "--val-limit", "3", "--max-steps", str(steps), "--eval-every", "2",
            "--checkpoint-every", "1", "--ledger", str(ledger), "--out", str(out), "--quiet"]


def test_two_runs_racing_for_one_budget_never_compute_what_it_cannot_pay(series_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    alone = tmp_path / "alone.json"
    subprocess.run(argv(series_file, alone, tmp_path / "alone", 6), env=env, check=True, capture_output=True)
    budget = 1.5 * Ledger.open(alone).total  # room for one run of 6 steps and half of another
    ledger = tmp_path / "shared.json"
    Ledger.open(ledger, budget=budget)
    runs = [subprocess.Popen(argv(series_file, ledger, tmp_path / name, 6), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = [r.communicate(timeout=300) for r in runs]
    assert all(r.returncode == 0 for r in runs), [o[1] for o in outs]
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("a", "b")]
    total = Ledger.open(ledger).total
    assert total <= budget
    assert total == sum(s["flops"] for s in summaries)  # what was computed is what was charged, to the FLOP
    assert sum(s["complete"] for s in summaries) <= 1 < sum(s["steps"] for s in summaries) < 12
    loser = next(s for s in summaries if not s["complete"])
    assert loser["stopped"].startswith("budget: stopping before step")
    ckpt = torch.load(tmp_path / ("a" if loser is summaries[0] else "b") / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == loser["steps"]  # checkpointed where it stopped: nothing computed is lost


def test_a_competitor_spending_the_rest_during_a_step_cannot_take_what_the_step_computes(series_file, tmp_path,
                                                                                          monkeypatch):
    """The race made certain: while step 3 computes, another process tries to charge everything that
    step 3 had not taken. With the step claimed before it is computed, the competitor is refused and
    every FLOP computed is charged (checking the budget before the step and charging after it, the
    competitor won and the step's charge failed after its compute)."""
    import train
    from experiment.trainer import Trainer
    from flops import BudgetExceeded

    ledger_path = tmp_path / "ledger.json"
    ledger = Ledger.open(ledger_path, budget=1e12)
    competitor = {}
    step = Trainer.step

    def step_with_a_competitor(self, nxt, batch, cost):
        if nxt == 3:
            mine = self.ledger.refresh().experiments[self.key]
            taken = self.ledger.total - (cost if mine["last_step"] == 3 else 0.0)  # all but step 3's own
            try:
                ledger.charge("competitor", "train", ledger.budget - taken, name="competitor")
                competitor["charged"] = True
            except BudgetExceeded:
                competitor["charged"] = False
        return step(self, nxt, batch, cost)
    monkeypatch.setattr(Trainer, "step", step_with_a_competitor)
    code = train.main(["--model", "tiny-random", "--data", str(series_file), "--chunk", "128", "--stride", "64",
                       "--val-limit", "3", "--max-steps", "6", "--eval-every", "2", "--ledger", str(ledger_path),
                       "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0 and competitor["charged"] is False
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    final = Ledger.open(ledger_path)
    run_entry = next(e for k, e in final.experiments.items() if k != "competitor")
    assert run_entry["flops"] == summary["flops"] and final.total <= final.budget
