"""The learning-rate x rank grid of LoRA runs on one ledger (the report's Table 4): every run planned
and paid for up front, finished runs read back, then the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from data.files import write_text
from flops import Ledger
from qwen_min import load_config, load_tokenizer

from .batches import prepare_data
from .costs import affordable_steps, planned_run, run_cost
from .report import sweep_markdown
from .settings import SweepSettings, UsageError
from .runfolder import finished
from .trainer import train


def sweep(a: SweepSettings) -> dict:
    """Run the grid's unfinished runs (refused up front if the ledger can't pay for all of them);
    write sweep.md and sweep.json. Returns the sweep's summary."""
    runs = a.runs()
    ledger = Ledger.open(a.ledger, a.budget, a.convention)
    config = load_config(a.model, runs[0].encoding)
    val_ids = prepare_data(runs[0], load_tokenizer(a.model, runs[0].encoding)).val_ids
    todo, need, dearest = [], 0.0, (0.0, 0.0)
    for r in runs:
        if finished(r.out):
            continue
        step, val = planned_run(r, config, val_ids, ledger.convention)
        spent = ledger.spent(r.name)
        need += max(0.0, run_cost(a.max_steps, step, val, a.eval_every) - spent)
        dearest = max(dearest, (step, val))
        todo.append(r)
    if need > ledger.remaining:
        afford = affordable_steps(ledger.remaining / max(1, len(todo)), *dearest, a.eval_every)
        raise UsageError(f"{a.ledger}: the grid's {len(todo)} remaining runs need {need:.3e} FLOPs but "
                         f"{ledger.remaining:.3e} remain; it could afford about {afford} steps per run "
                         f"(--max-steps {afford})")
    print(f"sweep: {len(runs)} runs ({len(runs) - len(todo)} done), {a.max_steps} steps each, "
          f"planned {need:.3e} FLOPs of {ledger.remaining:.3e} remaining", file=sys.stderr)
    for r in todo:
        train(r)
    return write_sweep(a)


def write_sweep(a: SweepSettings) -> dict:
    """sweep.md and sweep.json from the runs' summaries (validation loss per lr x rank)."""
    results = {}
    for rank in a.ranks:
        for lr in a.lrs:
            path = Path(a.out) / a.run_name(rank, lr) / "summary.json"
            results[a.run_name(rank, lr)] = {"rank": rank, "lr": lr,
                                             **(json.loads(path.read_text()) if path.exists() else {})}
    scored = [v for v in results.values() if v.get("best_val_loss") is not None]
    best = min(scored, key=lambda v: v["best_val_loss"]) if scored else None
    table = sweep_markdown(a.lrs, a.ranks, a.max_steps, a.train_fraction,
                           lambda r, lr: results[a.run_name(r, lr)].get("best_val_loss"), best)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.md", table)
    summary = {"runs": results, "best": best and {"rank": best["rank"], "lr": best["lr"],
                                                  "val_loss": best["best_val_loss"]}}
    write_text(out / "sweep.json", json.dumps(summary, indent=1) + "\n")
    print(table)
    return summary
