"""What a finished command says, in words: where each output went, the figure that matters, the FLOPs
this work spent and what is left in the ledger. The scripts print these; the library returns them."""

from __future__ import annotations

import math

from pathlib import Path

from flops import Ledger

from .folders import RunFolder
from .outputs import CompareFolder, EvalFolder, PlanFolder, SweepFolder


def shown(path: Path | str) -> str:
    """A path as a person reads it: relative to the working folder when it is inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def files_block(files: dict[str, Path | str]) -> list[str]:
    """'  what   path' lines for the files (and folders) that exist, in the order given."""
    present = {what: shown(path) for what, path in files.items() if Path(path).exists()}
    width = max(map(len, present), default=0)
    return [f"  {what:<{width}}  {path}" for what, path in present.items()]


def ledger_line(path: Path | str) -> str:
    """The ledger's state: spent, budget and what is left, in FLOPs."""
    ledger = Ledger.open(path)
    return (f"ledger {shown(path)}: {ledger.total:.3e} of {ledger.budget:.3e} FLOPs spent ({ledger.convention} "
            f"convention), {ledger.remaining:.3e} left")


def run_summary(summary: dict) -> str:
    """A training run's end: steps, best validation loss, files, FLOPs, ledger, and the next command."""
    out = Path(summary["out"])
    if summary["complete"]:
        head = f"run {summary['name']} finished: {summary['steps']} steps"
    else:
        head = (f"run {summary['name']} stopped at step {summary['steps']} of {summary['max_steps']} "
                f"(python train.py --resume {shown(out)} continues it)")
    best = summary.get("best_val_loss")
    head += (f", best validation loss {best:.4f} (at step {summary['best_step']})" if best is not None
             else ", no validation pass yet")
    run = RunFolder(out)
    lines = [head + f", {summary['seconds']:.0f} s of steps", *files_block(run.files(summary["full"])),
             f"FLOPs: {summary['flops']:.3e} for this run ({summary['flops_this_start']:.3e} since this start); "
             + ledger_line(summary["ledger"])]
    if best is not None:
        weights = shown(run.weights("best", summary["full"]))
        model = f"--model {weights}" if summary["full"] else f"--model {shown(summary['model'])} --adapter {weights}"
        lines.append(f"next: python eval.py {model} --out {shown(out)}-eval")
    return "\n".join(lines)


def sweep_summary(out: Path | str, best: dict | None, ledger: Path | str) -> str:
    head = (f"sweep: best rank {best['rank']}, lr {best['lr']:g}, validation loss {best['val_loss']:.4f}"
            if best else "sweep: no run has a validation loss yet")
    return "\n".join([head, *files_block(SweepFolder(out).files()), ledger_line(ledger)])


def eval_summary(out: Path | str, results: dict, ledger: Path | str) -> str:
    """An evaluation's end: the best method by combined MAE, the files, FLOPs and the ledger."""
    methods = {m: r for m, r in results["methods"].items()  # a method with no finite score is never "best"
               if isinstance(r["combined_mae"], float) and math.isfinite(r["combined_mae"])}
    head = (f"evaluation of {len(results['systems'])} {results['split']} systems, contexts "
            f"{' '.join(map(str, results['contexts']))}")
    if methods:
        best = min(methods, key=lambda m: methods[m]["combined_mae"])
        crps = methods[best].get("combined_crps")
        head += (f": lowest combined MAE {methods[best]['combined_mae']:.4f} by {best}"
                 + (f" (CRPS {crps:.4f})" if crps is not None else ""))
    return "\n".join([head, *files_block(EvalFolder(out).files()),
                      f"FLOPs: {results['flops']:.3e} computed by the language models{charged_note(results)}; "
                      + ledger_line(ledger)])


def charged_note(results: dict) -> str:
    """What of an evaluation's FLOPs an earlier run of the same evaluation had charged already."""
    computed, charged = results["flops"], results.get("charged", results["flops"])
    if charged >= computed:
        return ""
    if charged == 0:
        return " (already charged by an earlier run of this evaluation: nothing charged now)"
    return f" ({charged:.3e} charged now, the rest by an earlier run of this evaluation)"


def plan_summary(out: Path | str) -> str:
    folder = PlanFolder(out)
    return "\n".join(["plan finished", *files_block(folder.files()), ledger_line(folder.ledger)])


def compare_summary(out: Path | str) -> str:
    return "\n".join(["comparison written", *files_block(CompareFolder(out).files())])
