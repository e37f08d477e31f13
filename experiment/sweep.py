"""The learning-rate x rank grid of LoRA runs on one ledger (the report's Table 4): every run planned
and paid for up front, finished runs read back, then the table."""

from __future__ import annotations

import sys

from flops import Ledger
from qwen_min import open_model

from .batches import prepare_data
from .costs import affordable_steps, planned_run, run_cost
from .encodings import encoding_of
from .folders import RunFolder
from .outputs import SweepFolder
from .report import sweep_markdown
from .settings import SweepSettings, UsageError
from .trainer import train


def sweep(a: SweepSettings) -> dict:
    """Run the grid's unfinished runs (refused up front if the ledger can't pay for all of them);
    write sweep.md and sweep.json. Returns the sweep's summary."""
    source = open_model(a.model)
    runs = a.runs(source.encoding)
    encoding = encoding_of(runs[0].encoding)
    ledger = Ledger.open(a.ledger, a.budget, a.convention)
    val_ids = prepare_data(runs[0], source.tokenizer(encoding.name), encoding).val_ids
    todo, need, dearest = [], 0.0, (0.0, 0.0)
    for r in runs:
        if RunFolder(r.out).finished():
            continue
        step, val = planned_run(r, source, encoding, val_ids, ledger.convention)
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
        train(r, source)
    return write_sweep(a)


def write_sweep(a: SweepSettings) -> dict:
    """sweep.md and sweep.json from the runs' summaries (validation loss per lr x rank)."""
    folder, results = SweepFolder(a.out), {}
    for rank in a.ranks:
        for lr in a.lrs:
            summary = folder.run(a.run_name(rank, lr)).summary() or {}
            results[a.run_name(rank, lr)] = {"rank": rank, "lr": lr, **summary}
    chosen = best_of(results)
    best = chosen and chosen[1]
    table = sweep_markdown(a.lrs, a.ranks, a.max_steps, a.train_fraction,
                           lambda r, lr: results[a.run_name(r, lr)].get("best_val_loss"), best)
    summary = {"runs": results, "best": best and {"rank": best["rank"], "lr": best["lr"],
                                                  "val_loss": best["best_val_loss"]}}
    folder.write(table, summary)
    print(table)
    return summary


def best_of(runs: dict[str, dict | None]) -> tuple[str, dict] | None:
    """(name, summary) of the run with the lowest best validation loss, or None if none has one."""
    scored = {n: s for n, s in runs.items() if s and s.get("best_val_loss") is not None}
    return min(scored.items(), key=lambda kv: kv[1]["best_val_loss"]) if scored else None
