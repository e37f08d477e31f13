"""The reference report's whole experiment plan in one command, on one ledger and one FLOPs budget.

    python reproduce.py --out runs/report                      # Qwen/Qwen2.5-0.5B-Instruct, 1e17 FLOPs
    python train.py plan --out runs/report                     # the same
    python reproduce.py --model tiny-random --budget 2e12 --eval-limit 8 --val-limit 10 --out runs/report-tiny

Stages (the budget is split between three groups by --shares, the report's about 10% / 70% / 20%):
  1. the untuned model's evaluation (contexts 40 and 80, 20 steps, validation systems)      } share 1
  2. a default LoRA run (rank 4, lr 1e-5, batch 4, chunk 512) and its evaluation            }
  3. the grid lr {1e-5, 5e-5, 1e-4} x rank {2, 4, 8} on 20% of the training systems         } share 2
  4. chunk sizes 128 and 768 at the grid's best setting                                     }
  5. a final run on all training systems at the best setting, and its evaluation            } share 3
Each training run gets the steps its share pays for, computed from `flops` (validation passes
included), and says so before it starts. The best setting is chosen from validation loss and
written to choice.json with the numbers. Re-running the same command continues where it stopped:
finished stages are read back from their outputs, a stopped run resumes from its checkpoint, and
the ledger charges nothing twice. Writes report.md with the tables and figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import eval as evaluation
import train
from data import DataError
from flops import BudgetExceeded, Ledger
from flops.ledger import LedgerError
from flops.report import component_table, format_table, meta_model
from qwen_min import LoadError, load_config, load_tokenizer, parse_device


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python reproduce.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=train.DEFAULT_MODEL, help="hub id, local directory, or tiny-random")
    p.add_argument("--data", default=train.DEFAULT_DATA)
    p.add_argument("--out", default="runs/report", help="folder for every run, the ledger and report.md")
    p.add_argument("--budget", type=float, default=1e17, help="FLOPs for the whole plan")
    p.add_argument("--convention", choices=("exact", "coursework"), default="exact")
    p.add_argument("--shares", type=float, nargs=3, default=[0.1, 0.7, 0.2], metavar=("BASE", "SEARCH", "FINAL"),
                   help="budget shares: untuned + default run, grid + chunks, final run")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 5e-5, 1e-4])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--chunks", type=int, nargs="+", default=[128, 768], help="chunk sizes tried at the best setting")
    p.add_argument("--grid-fraction", type=float, default=0.2, help="share of the training systems in the grid")
    p.add_argument("--default-rank", type=int, default=4)
    p.add_argument("--default-lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--stride", type=int, default=268, help="stride at --chunk; other chunks scale it")
    p.add_argument("--eval-every", type=int, default=200, help="steps between validation passes of a run")
    p.add_argument("--val-limit", type=int, default=None, help="validation systems in the training runs' loss")
    p.add_argument("--eval-limit", type=int, default=None, help="validation systems in the forecast evaluations")
    p.add_argument("--ctx", type=int, nargs="+", default=[40, 80])
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--plot-systems", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


class Plan:
    """Names, settings and FLOPs of every stage, and the ledger they are charged to."""

    def __init__(self, a):
        self.a = a
        self.out = Path(a.out)
        self.ledger_path = self.out / "ledger.json"
        self.config = load_config(a.model)
        self.shares = [s * a.budget for s in a.shares]

    # --- argument lists for train.py and eval.py ---------------------------------------------------
    def stride(self, chunk: int) -> int:
        return max(1, round(chunk * self.a.stride / self.a.chunk))

    def train_argv(self, name, rank, lr, chunk, fraction, steps) -> list[str]:
        a = self.a
        argv = ["--model", a.model, "--data", a.data, "--rank", str(rank), "--lr", repr(lr), "--chunk", str(chunk),
                "--stride", str(self.stride(chunk)), "--batch-size", str(a.batch_size), "--train-fraction",
                repr(fraction), "--max-steps", str(max(1, steps)), "--eval-every", str(a.eval_every),
                "--seed", str(a.seed), "--device", a.device, "--ledger", str(self.ledger_path), "--budget",
                repr(a.budget), "--convention", a.convention, "--out", str(self.out / name), "--name", name]
        argv += ["--val-limit", str(a.val_limit)] if a.val_limit else []
        argv += ["--dtype", a.dtype] if a.dtype else []
        return argv + (["--quiet"] if a.quiet else [])

    def eval_argv(self, name, adapter=None) -> list[str]:
        a = self.a
        argv = ["--model", a.model, "--data", a.data, "--ctx", *map(str, a.ctx), "--horizon", str(a.horizon),
                "--out", str(self.out / name), "--name", name, "--ledger", str(self.ledger_path), "--budget",
                repr(a.budget), "--convention", a.convention, "--device", a.device, "--seed", str(a.seed),
                "--plot-systems", *map(str, a.plot_systems)]
        argv += ["--limit", str(a.eval_limit)] if a.eval_limit else []
        argv += ["--dtype", a.dtype] if a.dtype else []
        argv += ["--adapter", str(adapter), "--no-base"] if adapter else []
        return argv + (["--quiet"] if a.quiet else [])

    # --- costs -------------------------------------------------------------------------------------
    def run_costs(self, rank: int, chunk: int) -> tuple[float, float]:
        """(one full training step, one validation pass) in FLOPs."""
        args = train.args_for_run(self.train_argv("probe", rank, 1e-4, chunk, 1.0, 1))
        if not hasattr(self, "_val_ids"):
            self._val_ids = train.prepare_data(args, load_tokenizer(self.a.model)).val_ids
        return train.planned_cost(args, self.config, self._val_ids)

    def affordable(self, budget: float, rank: int, chunk: int) -> int:
        """Most steps a run can take (validation passes included) within `budget` FLOPs."""
        return train.affordable_steps(budget, *self.run_costs(rank, chunk), self.a.eval_every)

    def eval_cost(self, rank: int = 0) -> float:
        return evaluation.planned_cost(self.eval_argv("probe"), rank=rank)

    def run_plan(self) -> dict:
        """Steps per training run, fixed once from the shares (saved, so a re-run does the same)."""
        path = self.out / "plan.json"
        if path.exists():
            return json.loads(path.read_text())
        a = self.a
        base_eval, default_eval = self.eval_cost(), self.eval_cost(a.default_rank)
        top_rank, top_chunk = max(a.ranks), max([a.chunk, *a.chunks])
        search_runs = len(a.ranks) * len(a.lrs) + len(a.chunks)
        per_search_run = self.shares[1] / search_runs
        final_eval = self.eval_cost(top_rank)
        plan = {
            "budget": a.budget, "shares": a.shares, "convention": a.convention,
            "untuned_eval_flops": base_eval, "default_eval_flops": default_eval, "final_eval_flops": final_eval,
            "default_steps": self.affordable(self.shares[0] - base_eval - default_eval, a.default_rank, a.chunk),
            "grid_steps": {str(r): self.affordable(per_search_run, r, a.chunk) for r in a.ranks},
            "per_search_run_flops": per_search_run,
            "final_budget_flops": self.shares[2] - final_eval,
        }
        too_small = []
        if plan["default_steps"] < 1:
            too_small.append(f"share 1 ({self.shares[0]:.3e}) pays for the untuned evaluation ({base_eval:.3e}) and the "
                             f"default run's evaluation ({default_eval:.3e}) but no training step "
                             f"({sum(self.run_costs(a.default_rank, a.chunk)):.3e} with its validation)")
        for r, k in plan["grid_steps"].items():
            if k < 1:
                too_small.append(f"a grid run at rank {r} gets {per_search_run:.3e} FLOPs, less than one step and "
                                 f"its validation ({sum(self.run_costs(int(r), a.chunk)):.3e})")
        if self.affordable(per_search_run, top_rank, top_chunk) < 1:
            too_small.append(f"a chunk-{top_chunk} run gets {per_search_run:.3e} FLOPs, less than one step and its "
                             f"validation ({sum(self.run_costs(top_rank, top_chunk)):.3e})")
        if self.affordable(plan["final_budget_flops"], top_rank, top_chunk) < 1:
            too_small.append(f"the final run gets {plan['final_budget_flops']:.3e} FLOPs after its evaluation, less "
                             f"than one step ({sum(self.run_costs(top_rank, top_chunk)):.3e}) at the largest setting")
        if too_small:
            raise train.UsageError(f"--budget {a.budget:.3g} is too small: " + "; ".join(too_small))
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan, indent=1) + "\n")
        return plan


# --- running stages --------------------------------------------------------------------------------

def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def do_train(plan: Plan, label: str, name: str, rank: int, lr: float, chunk: int, fraction: float, steps: int) -> dict | None:
    """A training run, or its summary if it is complete; shortened or skipped if the ledger can't pay."""
    out = plan.out / name
    done = out / "summary.json"
    if done.exists() and json.loads(done.read_text()).get("complete"):
        say(f"{label}: {name} done, read back")
        return json.loads(done.read_text())
    ledger = Ledger.open(plan.ledger_path)
    step, val = plan.run_costs(rank, chunk)
    cost = steps * step + train.evaluations(steps, plan.a.eval_every) * val
    spent = (ledger.entry(name) or {}).get("flops", 0.0)
    if cost - spent > ledger.remaining:
        shorter = plan.affordable(ledger.remaining + spent, rank, chunk)
        if shorter < 1:
            say(f"{label}: skipping {name}: {ledger.remaining:.3e} FLOPs remain, one step costs {step + val:.3e}")
            return None
        say(f"{label}: shortening {name} from {steps} to {shorter} steps to stay within the budget")
        steps, cost = shorter, shorter * step + train.evaluations(shorter, plan.a.eval_every) * val
    say(f"{label}: {name}: rank {rank}, lr {lr:g}, chunk {chunk}, {fraction:.0%} of the training systems, "
        f"{steps} steps at {step:.3e} FLOPs each, {cost:.3e} FLOPs planned")
    summary = train.train(train.args_for_run(plan.train_argv(name, rank, lr, chunk, fraction, steps)))
    if summary.get("interrupted"):  # Ctrl-C stopped the run (checkpointed): stop the plan, not go on to the next stage
        raise KeyboardInterrupt
    return summary


def do_eval(plan: Plan, label: str, name: str, adapter: Path | None, rank: int = 0) -> dict | None:
    out = plan.out / name
    if (out / "results.json").exists():
        say(f"{label}: {name} done, read back")
        return json.loads((out / "results.json").read_text())
    if adapter is not None and not (adapter / "adapter_config.json").exists():
        say(f"{label}: skipping {name}: no adapter at {adapter}")
        return None
    cost = plan.eval_cost(rank)
    ledger = Ledger.open(plan.ledger_path)
    spent = (ledger.entry(name) or {}).get("flops", 0.0)
    if cost - spent > ledger.remaining:
        say(f"{label}: skipping {name}: it may need {cost:.3e} FLOPs, {ledger.remaining:.3e} remain")
        return None
    say(f"{label}: {name}: {len(plan.a.ctx)} contexts, up to {cost:.3e} FLOPs")
    return evaluation.evaluate(evaluation.parser().parse_args(plan.eval_argv(name, adapter)))


def best_of(runs: dict[str, dict]) -> tuple[str, dict] | None:
    scored = {n: s for n, s in runs.items() if s and s.get("best_val_loss") is not None}
    return min(scored.items(), key=lambda kv: kv[1]["best_val_loss"]) if scored else None


def reproduce(a) -> Path:
    for name, value in (("--batch-size", a.batch_size), ("--eval-every", a.eval_every), ("--chunk", a.chunk)):
        if value < 1:
            raise train.UsageError(f"{name} must be at least 1, got {value}")
    if any(s < 0 for s in a.shares) or abs(sum(a.shares) - 1) > 1e-6:
        raise train.UsageError(f"--shares must be three non-negative numbers summing to 1, got {a.shares}")
    parse_device(a.device)  # before plan.json or the ledger is written
    plan = Plan(a)
    numbers = plan.run_plan()
    Ledger.open(plan.ledger_path, budget=a.budget, convention=a.convention)  # refuses another budget
    say(f"plan: budget {a.budget:.3e} FLOPs ({a.convention}), shares {a.shares}; default run "
        f"{numbers['default_steps']} steps; grid runs {numbers['grid_steps']} steps by rank; ledger {plan.ledger_path}")

    # 1-2: the untuned model, a default LoRA run
    untuned = do_eval(plan, "stage 1", "eval-untuned", None)
    default_name = f"default-r{a.default_rank}-lr{a.default_lr:g}"
    do_train(plan, "stage 2", default_name, a.default_rank, a.default_lr, a.chunk, 1.0, numbers["default_steps"])
    default_eval = do_eval(plan, "stage 2", "eval-default", plan.out / default_name / "adapter_best", a.default_rank)

    # 3: the grid
    grid = {}
    for rank in a.ranks:
        for lr in a.lrs:
            name = f"grid-r{rank}-lr{lr:g}"
            grid[name] = do_train(plan, "stage 3", name, rank, lr, a.chunk, a.grid_fraction, numbers["grid_steps"][str(rank)])
    chosen = best_of(grid)
    if chosen is None:
        raise train.UsageError("no grid run finished with a validation loss; nothing to choose from")
    best_rank, best_lr = next((r, lr) for r in a.ranks for lr in a.lrs if f"grid-r{r}-lr{lr:g}" == chosen[0])

    # 4: chunk sizes at the best setting
    chunks = {a.chunk: chosen[1]}
    for chunk in a.chunks:
        name = f"chunk{chunk}-r{best_rank}-lr{best_lr:g}"
        steps = plan.affordable(numbers["per_search_run_flops"], best_rank, chunk)
        chunks[chunk] = do_train(plan, "stage 4", name, best_rank, best_lr, chunk, a.grid_fraction, steps)
    scored = {c: s for c, s in chunks.items() if s and s.get("best_val_loss") is not None}
    best_chunk = min(scored, key=lambda c: scored[c]["best_val_loss"])
    choice = {"grid": {n: (s or {}).get("best_val_loss") for n, s in grid.items()},
              "best_setting": {"rank": best_rank, "lr": best_lr, "run": chosen[0], "val_loss": chosen[1]["best_val_loss"]},
              "chunks": {str(c): (s or {}).get("best_val_loss") for c, s in chunks.items()},
              "best_chunk": best_chunk,
              "rule": "lowest validation loss (best over each run), grid first, then chunk size at the best setting"}
    (plan.out / "choice.json").write_text(json.dumps(choice, indent=1) + "\n")
    say(f"choice: rank {best_rank}, lr {best_lr:g} (validation loss {chosen[1]['best_val_loss']:.4f}), chunk {best_chunk}")

    # 5: the final run on all training systems
    final_name = f"final-r{best_rank}-lr{best_lr:g}-c{best_chunk}"
    final_budget = numbers["final_budget_flops"]
    final_steps = plan.affordable(final_budget, best_rank, best_chunk)
    do_train(plan, "stage 5", final_name, best_rank, best_lr, best_chunk, 1.0, final_steps)
    final_eval = do_eval(plan, "stage 5", "eval-final", plan.out / final_name / "adapter_best", best_rank)

    write_report(plan, choice, {"untuned": untuned, "default LoRA": default_eval, "tuned LoRA": final_eval},
                 {"untuned": "eval-untuned", "default LoRA": "eval-default", "tuned LoRA": "eval-final"})
    return plan.out / "report.md"


# --- the report ------------------------------------------------------------------------------------

def write_report(plan: Plan, choice: dict, evals: dict, folders: dict) -> None:
    a, out = plan.a, plan.out
    ledger = Ledger.open(plan.ledger_path)
    model = meta_model(plan.config, rank=choice["best_setting"]["rank"])
    table3 = format_table(component_table(model, a.chunk, ledger.convention), ledger.convention, a.chunk)
    grid_lines = ["| learning rate | " + " | ".join(f"rank {r}" for r in a.ranks) + " |", "| --- |" + " ---: |" * len(a.ranks)]
    for lr in a.lrs:
        cells = [choice["grid"].get(f"grid-r{r}-lr{lr:g}") for r in a.ranks]
        grid_lines.append(f"| {lr:g} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    mae_lines = ["| model | " + " | ".join(f"MAE ctx {c}" for c in a.ctx) + " | combined MAE |", "| --- |" + " ---: |" * (len(a.ctx) + 1)]
    baselines = next((e for e in (evals["tuned LoRA"], evals["default LoRA"], evals["untuned"]) if e), None)
    rows = [(label, e["methods"]["model"] if "model" in e["methods"] else next(
        v for k, v in e["methods"].items() if k.startswith("model"))) for label, e in evals.items() if e]
    if baselines:
        rows += [(m, baselines["methods"][m]) for m in ("persistence", "ode_fit") if m in baselines["methods"]]
    for label, m in rows:
        mae_lines.append(f"| {label} | " + " | ".join(f"{m['contexts'][str(c)]['mae']:.4f}" for c in a.ctx)
                         + f" | **{m['combined_mae']:.4f}** |")
    figures = make_figures(plan, evals, folders)
    text = [f"# Experiment plan: {a.model}", "",
            f"Budget {a.budget:.3e} FLOPs ({ledger.convention} convention), shares {a.shares}; "
            f"used {ledger.total:.3e} ({ledger.total / ledger.budget:.2%}). Data `{a.data}`; runs and outputs in this folder.", "",
            f"## Table 3: FLOPs per component, one sequence of {a.chunk} tokens (LoRA rank {choice['best_setting']['rank']})", "",
            "```", table3, "```", "",
            "## Table 4: validation loss per learning rate and LoRA rank", "",
            f"{a.grid_fraction:.0%} of the training systems; best over each run, nats/token.", "", *grid_lines, "",
            f"Chosen: rank {choice['best_setting']['rank']}, learning rate {choice['best_setting']['lr']:g} "
            f"(validation loss {choice['best_setting']['val_loss']:.4f}); chunk sizes "
            + ", ".join(f"{c}: {'-' if v is None else f'{v:.4f}'}" for c, v in choice["chunks"].items())
            + f", so chunk {choice['best_chunk']}. The rule and numbers are in `choice.json`.", "",
            "## Table 5: FLOPs per experiment", "", ledger.table(), "",
            "## Forecast MAE (scaled units, 20 steps)", "", *mae_lines, "",
            "Per-model details: " + ", ".join(f"[{k}]({v}/results.md)" for k, v in folders.items() if evals.get(k)) + ".", "",
            "## Figures", ""]
    for caption, path in figures:
        text += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    (out / "report.md").write_text("\n".join(text))
    say(f"report: {out / 'report.md'}")


def make_figures(plan: Plan, evals: dict, folders: dict) -> list[tuple[str, str]]:
    """The three models compared (MAE against horizon; forecasts against truth), from saved forecasts."""
    out = plan.out
    present = {k: v for k, v in evals.items() if v}
    if not present:
        return []
    first = next(iter(present.values()))
    methods = {label: next(v for k, v in e["methods"].items() if k.startswith("model")) for label, e in present.items()}
    for m in ("persistence", "ode_fit"):
        if m in first["methods"]:
            methods[m] = first["methods"][m]
    evaluation.plot_horizon({"contexts": first["contexts"], "horizon": first["horizon"], "methods": methods},
                            out / "mae_vs_horizon.png")
    figures = [("MAE against steps ahead, per species and context: the three models and the baselines", "mae_vs_horizon.png")]
    forecasts, truth, systems, time = {}, None, None, None
    for label, folder in folders.items():
        path = out / folder / "forecasts.npz"
        if label in present and path.exists():
            z = np.load(path)
            key = next(k.split("|")[0] for k in z.files if k.startswith("model"))
            forecasts[label] = {c: z[f"{key}|{c}"] for c in first["contexts"]}
            truth, systems, time = z, z["systems"], z["time"]
    if forecasts:
        ctx = max(first["contexts"])
        values = truth[f"truth|{ctx}"]
        evaluation.plot_forecasts(values, time, forecasts, list(systems), plan.a.plot_systems, first["contexts"],
                                  first["horizon"], out / "forecasts_compared.png")
        figures.append(("Forecasts against the truth for chosen validation systems, the three models overlaid",
                        "forecasts_compared.png"))
    for label, folder in folders.items():
        if label in present:
            figures.append((f"{label}: MAE against steps ahead with the baselines", f"{folder}/mae_vs_horizon.png"))
    return figures


def main(argv=None) -> int:
    try:
        path = reproduce(parser().parse_args(argv))
    except (train.UsageError, LoadError, DataError, LedgerError, BudgetExceeded) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: the same command continues from here (finished stages are read back, a stopped "
              "training run resumes from its checkpoint, nothing is charged twice)", file=sys.stderr)
        return 130
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
