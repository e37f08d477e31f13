"""The reference report's whole experiment plan on one ledger and one FLOPs budget.

Stages (the budget is split between three groups by `shares`, the report's about 10% / 70% / 20%):
  1. the untuned model's evaluation (contexts 40 and 80, 20 steps, validation systems)      } share 1
  2. a default LoRA run (rank 4, lr 1e-5, batch 4, chunk 512) and its evaluation            }
  3. the grid lr {1e-5, 5e-5, 1e-4} x rank {2, 4, 8} on 20% of the training systems         } share 2
  4. chunk sizes 128 and 768 at the grid's best setting                                     }
  5. a final run on all training systems at the best setting, and its evaluation            } share 3
Each training run gets the steps its share pays for, computed from `flops` (validation passes
included), and says so before it starts. The best setting is chosen from validation loss and
written to choice.json with the numbers. Running the plan again continues where it stopped:
finished stages are read back from their outputs, a stopped run resumes from its checkpoint, and
the ledger charges nothing twice. Ends with report.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lora
from flops import Ledger, get_convention
from qwen_min import ModelSource, open_model, parse_device

from .baseline_runs import select
from .batches import prepare_data
from .costs import affordable_steps, planned_run, run_cost
from .encodings import encoding_of
from .outputs import PlanFolder
from .forecast import evaluate
from .models import META, forecast_model
from .report import plan_report
from .settings import EvalSettings, PlanSettings, TrainSettings, UsageError, derive, grid_name
from .sweep import best_of
from .trainer import train


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Plan:
    """The settings of every stage, what each costs, and the ledger they are charged to."""

    def __init__(self, a: PlanSettings, source: ModelSource):
        self.a, self.source = a, source
        self.folder = PlanFolder(a.out)
        self.out, self.ledger_path = self.folder.path, self.folder.ledger
        self.encoding = encoding_of(a.encoding)
        self.config = source.config(a.encoding)
        self.tok = source.tokenizer(a.encoding)
        self.shares = [s * a.budget for s in a.shares]
        self.convention = get_convention(a.convention)
        self._val_ids = None
        self._selection = None

    # --- the stages' settings ----------------------------------------------------------------------
    def run_settings(self, name: str, rank: int, lr: float, chunk: int, fraction: float, steps: int) -> TrainSettings:
        a = self.a
        return derive(TrainSettings, a, rank=rank, lr=lr, chunk=chunk, stride=a.stride_for(chunk),
                      train_fraction=fraction, max_steps=max(1, steps), out=str(self.out / name), name=name,
                      **self.charged).resolved()

    def eval_settings(self, name: str, adapter: Path | None = None) -> EvalSettings:
        return derive(EvalSettings, self.a, out=str(self.out / name), name=name, limit=self.a.eval_limit,
                      adapter=[str(adapter)] if adapter else [], no_base=adapter is not None, **self.charged)

    @property
    def charged(self) -> dict:
        """Where every stage is charged: the plan's ledger, under its budget and convention."""
        return {"ledger": str(self.ledger_path), "budget": self.a.budget, "convention": self.a.convention}

    def best_adapter(self, name: str) -> Path:
        """Where the run `name` keeps its best adapter."""
        return self.folder.run(name).weights("best", full=False)

    # --- costs -------------------------------------------------------------------------------------
    def run_costs(self, rank: int, chunk: int) -> tuple[float, float]:
        """(one full training step, one validation pass) in FLOPs."""
        probe = self.run_settings("probe", rank, 1e-4, chunk, 1.0, 1)
        if self._val_ids is None:
            self._val_ids = prepare_data(probe, self.tok, self.encoding).val_ids
        return planned_run(probe, self.source, self.encoding, self._val_ids, self.convention.name)

    def affordable(self, budget: float, rank: int, chunk: int) -> int:
        """Most steps a run can take (validation passes included) within `budget` FLOPs."""
        return affordable_steps(budget, *self.run_costs(rank, chunk), self.a.eval_every)

    def eval_cost(self, rank: int = 0) -> float:
        """Upper bound of one evaluation's FLOPs with a LoRA of `rank` (0: the untuned model)."""
        s = self.eval_settings("probe")
        if self._selection is None:
            self._selection = select(s)
        sel = self._selection
        model = forecast_model(self.source, self.encoding, s.seed, META, None, rank=rank,
                               targets=lora.parse_targets(self.a.targets))
        return self.encoding.bound(model, self.tok, sel.values, sel.alpha, s.task, self.convention)

    def steps(self) -> dict:
        """Steps per training run, fixed once from the shares (plan.json, so a re-run does the same)."""
        saved = self.folder.steps()
        if saved is not None:
            return saved
        a = self.a
        base_eval, default_eval = self.eval_cost(), self.eval_cost(a.default_rank)
        search_runs = len(a.ranks) * len(a.lrs) + len(a.chunks)
        per_search_run = self.shares[1] / search_runs
        plan = {
            "budget": a.budget, "shares": a.shares, "convention": a.convention,
            "untuned_eval_flops": base_eval, "default_eval_flops": default_eval,
            "final_eval_flops": self.eval_cost(max(a.ranks)),
            "default_steps": self.affordable(self.shares[0] - base_eval - default_eval, a.default_rank, a.chunk),
            "grid_steps": {str(r): self.affordable(per_search_run, r, a.chunk) for r in a.ranks},
            "per_search_run_flops": per_search_run,
        }
        plan["final_budget_flops"] = self.shares[2] - plan["final_eval_flops"]
        too_small = self.too_small(plan)
        if too_small:
            raise UsageError(f"--budget {a.budget:.3g} is too small: " + "; ".join(too_small))
        self.folder.write(self.folder.STEPS, plan)
        return plan

    def too_small(self, plan: dict) -> list[str]:
        """Why the budget can't pay for one step of some stage (empty when it can)."""
        a = self.a
        top_rank, top_chunk = max(a.ranks), max([a.chunk, *a.chunks])
        per_search_run = plan["per_search_run_flops"]
        out = []
        if plan["default_steps"] < 1:
            out.append(f"share 1 ({self.shares[0]:.3e}) pays for the untuned evaluation ({plan['untuned_eval_flops']:.3e}) "
                       f"and the default run's evaluation ({plan['default_eval_flops']:.3e}) but no training step "
                       f"({sum(self.run_costs(a.default_rank, a.chunk)):.3e} with its validation)")
        for r, k in plan["grid_steps"].items():
            if k < 1:
                out.append(f"a grid run at rank {r} gets {per_search_run:.3e} FLOPs, less than one step and "
                           f"its validation ({sum(self.run_costs(int(r), a.chunk)):.3e})")
        if self.affordable(per_search_run, top_rank, top_chunk) < 1:
            out.append(f"a chunk-{top_chunk} run gets {per_search_run:.3e} FLOPs, less than one step and its "
                       f"validation ({sum(self.run_costs(top_rank, top_chunk)):.3e})")
        if self.affordable(plan["final_budget_flops"], top_rank, top_chunk) < 1:
            out.append(f"the final run gets {plan['final_budget_flops']:.3e} FLOPs after its evaluation, less "
                       f"than one step ({sum(self.run_costs(top_rank, top_chunk)):.3e}) at the largest setting")
        return out


# --- running stages --------------------------------------------------------------------------------

def do_train(plan: Plan, label: str, name: str, rank: int, lr: float, chunk: int, fraction: float, steps: int) -> dict | None:
    """A training run, or its summary if it is complete; shortened or skipped if the ledger can't pay."""
    done = plan.folder.run(name).finished()
    if done:
        say(f"{label}: {name} done, read back")
        return done
    ledger = Ledger.open(plan.ledger_path)
    step, val = plan.run_costs(rank, chunk)
    cost = run_cost(steps, step, val, plan.a.eval_every)
    spent = ledger.spent(name)
    if cost - spent > ledger.remaining:
        shorter = plan.affordable(ledger.remaining + spent, rank, chunk)
        if shorter < 1:
            say(f"{label}: skipping {name}: {ledger.remaining:.3e} FLOPs remain, one step costs {step + val:.3e}")
            return None
        say(f"{label}: shortening {name} from {steps} to {shorter} steps to stay within the budget")
        steps, cost = shorter, run_cost(shorter, step, val, plan.a.eval_every)
    say(f"{label}: {name}: rank {rank}, lr {lr:g}, chunk {chunk}, {fraction:.0%} of the training systems, "
        f"{steps} steps at {step:.3e} FLOPs each, {cost:.3e} FLOPs planned")
    summary = train(plan.run_settings(name, rank, lr, chunk, fraction, steps), plan.source)
    if summary.get("interrupted"):  # Ctrl-C stopped the run (checkpointed): stop the plan, not go on to the next stage
        raise KeyboardInterrupt
    return summary


def do_eval(plan: Plan, label: str, name: str, adapter: Path | None, rank: int = 0) -> dict | None:
    """An evaluation, or its results if it is done; skipped if the ledger can't pay for its bound."""
    done = plan.folder.evaluation(name).results()
    if done is not None:
        say(f"{label}: {name} done, read back")
        return done
    if adapter is not None and not (adapter / lora.adapter.CONFIG_FILE).exists():
        say(f"{label}: skipping {name}: no adapter at {adapter}")
        return None
    cost = plan.eval_cost(rank)
    ledger = Ledger.open(plan.ledger_path)
    spent = ledger.spent(name)
    if cost - spent > ledger.remaining:
        say(f"{label}: skipping {name}: it may need {cost:.3e} FLOPs, {ledger.remaining:.3e} remain")
        return None
    say(f"{label}: {name}: {len(plan.a.ctx)} contexts, up to {cost:.3e} FLOPs")
    return evaluate(plan.eval_settings(name, adapter), plan.source)


def reproduce(a: PlanSettings) -> Path:
    """Run (or continue) the whole plan; returns the path of report.md."""
    a.check()
    parse_device(a.device)  # before plan.json or the ledger is written
    source = open_model(a.model)
    plan = Plan(a.resolved(source.encoding), source)
    a = plan.a
    numbers = plan.steps()
    Ledger.open(plan.ledger_path, budget=a.budget, convention=a.convention)  # refuses another budget
    say(f"plan: budget {a.budget:.3e} FLOPs ({a.convention}), shares {a.shares}; default run "
        f"{numbers['default_steps']} steps; grid runs {numbers['grid_steps']} steps by rank; ledger {plan.ledger_path}")

    # 1-2: the untuned model, a default LoRA run
    untuned = do_eval(plan, "stage 1", "eval-untuned", None)
    default_name = f"default-r{a.default_rank}-lr{a.default_lr:g}"
    do_train(plan, "stage 2", default_name, a.default_rank, a.default_lr, a.chunk, 1.0, numbers["default_steps"])
    default_eval = do_eval(plan, "stage 2", "eval-default", plan.best_adapter(default_name), a.default_rank)

    # 3-4: the grid, then chunk sizes at its best setting
    choice = search(plan, numbers)
    best_rank, best_lr, best_chunk = choice["best_setting"]["rank"], choice["best_setting"]["lr"], choice["best_chunk"]

    # 5: the final run on all training systems
    final_name = f"final-r{best_rank}-lr{best_lr:g}-c{best_chunk}"
    final_steps = plan.affordable(numbers["final_budget_flops"], best_rank, best_chunk)
    do_train(plan, "stage 5", final_name, best_rank, best_lr, best_chunk, 1.0, final_steps)
    final_eval = do_eval(plan, "stage 5", "eval-final", plan.best_adapter(final_name), best_rank)

    report = plan_report(a, plan.folder, Ledger.open(plan.ledger_path), plan.config, choice,
                         {"untuned": untuned, "default LoRA": default_eval, "tuned LoRA": final_eval},
                         {"untuned": "eval-untuned", "default LoRA": "eval-default", "tuned LoRA": "eval-final"})
    return report


def search(plan: Plan, numbers: dict) -> dict:
    """Stages 3 and 4: the grid, then chunk sizes at the best setting; the choice, also in choice.json."""
    a = plan.a
    grid = {}
    for rank in a.ranks:
        for lr in a.lrs:
            name = grid_name("grid", rank, lr)
            grid[name] = do_train(plan, "stage 3", name, rank, lr, a.chunk, a.grid_fraction, numbers["grid_steps"][str(rank)])
    chosen = best_of(grid)
    if chosen is None:
        raise UsageError("no grid run finished with a validation loss; nothing to choose from")
    best_rank, best_lr = next((r, lr) for r in a.ranks for lr in a.lrs if grid_name("grid", r, lr) == chosen[0])
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
    plan.folder.write(plan.folder.CHOICE, choice)
    say(f"choice: rank {best_rank}, lr {best_lr:g} (validation loss {chosen[1]['best_val_loss']:.4f}), chunk {best_chunk}")
    return choice
