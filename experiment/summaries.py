"""What a finished command says, in words: where each output went, the figure that matters, the FLOPs
this work spent and what is left in the ledger. The scripts print these; the library returns them."""

from __future__ import annotations

from pathlib import Path

from flops import Ledger


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


def run_files(out: Path, full: bool) -> dict[str, Path]:
    """A training run's outputs, by what they are."""
    kind = "model" if full else "adapter"
    return {f"best {kind}": out / f"{kind}_best", f"last {kind}": out / f"{kind}_last",
            "metrics": out / "metrics.jsonl", "loss plot": out / "loss.png", "summary": out / "summary.json",
            "settings": out / "config.json", "checkpoint": out / "checkpoint.pt"}


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
    lines = [head + f", {summary['seconds']:.0f} s of steps", *files_block(run_files(out, summary["full"])),
             f"FLOPs: {summary['flops']:.3e} for this run ({summary['flops_this_start']:.3e} since this start); "
             + ledger_line(summary["ledger"])]
    if best is not None:
        kind = "model_best" if summary["full"] else "adapter_best"
        model = (f"--model {shown(out / kind)}" if summary["full"]
                 else f"--model {shown(summary['model'])} --adapter {shown(out / kind)}")
        lines.append(f"next: python eval.py {model} --out {shown(out)}-eval")
    return "\n".join(lines)


def sweep_summary(out: Path | str, best: dict | None, ledger: Path | str) -> str:
    out = Path(out)
    head = (f"sweep: best rank {best['rank']}, lr {best['lr']:g}, validation loss {best['val_loss']:.4f}"
            if best else "sweep: no run has a validation loss yet")
    return "\n".join([head, *files_block({"table": out / "sweep.md", "as JSON": out / "sweep.json",
                                          "runs": out}), ledger_line(ledger)])


def eval_summary(out: Path | str, results: dict, ledger: Path | str) -> str:
    """An evaluation's end: the best method by combined MAE, the files, FLOPs and the ledger."""
    out = Path(out)
    methods = results["methods"]
    head = (f"evaluation of {len(results['systems'])} {results['split']} systems, contexts "
            f"{' '.join(map(str, results['contexts']))}")
    if methods:
        best = min(methods, key=lambda m: methods[m]["combined_mae"])
        crps = methods[best].get("combined_crps")
        head += (f": lowest combined MAE {methods[best]['combined_mae']:.4f} by {best}"
                 + (f" (CRPS {crps:.4f})" if crps is not None else ""))
    files = {name: out / name for name in ("results.md", "results.json", "forecasts.png", "mae_vs_horizon.png",
                                           "forecasts.npz")}
    return "\n".join([head, *files_block(files),
                      f"FLOPs: {results['flops']:.3e} computed by the language models; " + ledger_line(ledger)])


def plan_summary(report: Path, ledger: Path | str) -> str:
    out = report.parent
    return "\n".join(["plan finished", *files_block({"report": report, "plan": out / "plan.json", "runs": out}),
                      ledger_line(ledger)])
