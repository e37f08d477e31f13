"""20-step forecasts of the validation systems, scored by MAE, against persistence and an ODE fit.

    python eval.py --ctx 80                                   # Qwen/Qwen2.5-0.5B-Instruct, untuned
    python eval.py --ctx 40 80 --adapter runs/lora-r8-lr0.0001-c512/adapter_best
    python eval.py --model tiny-random --ctx 40 80 --limit 8 --out runs/eval-tiny
    python eval.py --adapter runs/a --adapter runs/b --plot-systems 0 10 20

For each context length the first `ctx` steps of each system are written as text (ending with ';'),
the model continues them for --horizon steps under a grammar of the number format (so every step
parses), and the forecast is scored against the truth. Writes to --out: results.json, results.md,
mae_vs_horizon.png, forecasts.png, forecasts.npz (every forecast, for later figures). Generation FLOPs are charged to --ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import lora
from data import DataError, decode, encode, ensure_data, load_series, make_splits, scale_for, step_pattern
from data.baselines import ode_fit, persistence
from flops import BudgetExceeded, Ledger, get_convention
from flops.ledger import DEFAULT_BUDGET, LedgerError
from qwen_min import LoadError, generate, load_pretrained, load_tokenizer, parse_device, parse_dtype

from train import DEFAULT_DATA, DEFAULT_MODEL, UsageError  # the flags mean the same in both scripts

SPECIES = ("prey", "predator")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python eval.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local directory, or tiny-random")
    p.add_argument("--adapter", action="append", default=[], help="LoRA adapter (PEFT layout, or a train.py run "
                   "directory); repeat to compare several")
    p.add_argument("--no-base", action="store_true", help="with --adapter, skip the untuned model")
    p.add_argument("--data", default=DEFAULT_DATA, help="HDF5 series file (simulated if the default is missing)")
    p.add_argument("--split", choices=("validation", "train"), default="validation")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--ctx", type=int, nargs="+", default=[40, 80], help="context lengths in time steps")
    p.add_argument("--horizon", type=int, default=20, help="steps to forecast")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N systems of the split")
    p.add_argument("--batch-size", type=int, default=8, help="systems per generation batch, each with every context and sample")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt (median); 1 with temperature 0 is greedy")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--decimals", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 (CPU default) or bf16 (CUDA default)")
    p.add_argument("--out", default="runs/eval", help="output folder")
    p.add_argument("--name", default=None, help="experiment name in the ledger (default eval-<out folder>)")
    p.add_argument("--ledger", default="runs/ledger.json")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="budget of a new ledger")
    p.add_argument("--convention", choices=("exact", "coursework"), default="exact", help="convention of a new ledger")
    p.add_argument("--no-ode-fit", action="store_true", help="skip the ODE-fit baseline")
    p.add_argument("--ode-model", choices=("rosenzweig-macarthur", "classical"), default="rosenzweig-macarthur")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes for the ODE fits")
    p.add_argument("--plot-systems", type=int, nargs="*", default=[0, 1, 2],
                   help="positions in the evaluated list to draw forecasts for")
    p.add_argument("--quiet", action="store_true")
    return p


def check(a, n_points: int) -> None:
    if any(c < 1 for c in a.ctx) or a.horizon < 1:
        raise UsageError("--ctx values and --horizon must be at least 1")
    if max(a.ctx) + a.horizon > n_points:
        raise UsageError(f"--ctx {max(a.ctx)} + --horizon {a.horizon} needs {max(a.ctx) + a.horizon} time points; "
                         f"{a.data} has {n_points}")
    if a.samples < 1 or a.batch_size < 1 or (a.limit is not None and a.limit < 1):
        raise UsageError("--samples, --batch-size and --limit must be at least 1")
    if a.samples > 1 and a.temperature <= 0:
        raise UsageError("--samples > 1 needs --temperature > 0 (greedy samples would all be equal)")


# --- metrics ---------------------------------------------------------------------------------------

def score(pred: np.ndarray, true: np.ndarray, alpha: float, failed: int = 0) -> dict:
    """Forecasts (systems, horizon, 2) against truth, both in original units.

    mae, mse and mae_by_step are in the scaled units the model reads (divided by alpha);
    mae_original in the file's units."""
    err = (pred - true) / alpha
    return {"mae": float(np.abs(err).mean()), "mae_by_step": np.abs(err).mean(axis=(0, 2)).tolist(),
            "mae_by_species": {s: float(np.abs(err[..., i]).mean()) for i, s in enumerate(SPECIES)},
            "mae_by_step_species": {s: np.abs(err[..., i]).mean(axis=0).tolist() for i, s in enumerate(SPECIES)},
            "mae_original": float(np.abs(pred - true).mean()), "mse": float((err ** 2).mean()),
            "failed_steps": int(failed)}


# --- the language model ----------------------------------------------------------------------------

def resolve_adapter(path: str) -> Path:
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        return p
    if (p / "adapter_best" / "adapter_config.json").is_file():  # a train.py run directory
        return p / "adapter_best"
    raise UsageError(f"--adapter {path}: no adapter_config.json there (nor in {p / 'adapter_best'})")


def forecast_model(model, tok, values: np.ndarray, a, alpha: float, stats: dict, bar=None, charge=None):
    """Forecasts {ctx: (systems, horizon, 2)} in original units, and {ctx: steps that failed to parse}.

    Each generation batch holds `--batch-size` systems with every context and every sample, so a
    system's shorter contexts and repeated samples share the prefill of its longest prompt.
    `charge(first, end, flops)` is called after each batch with the FLOPs it spent on systems
    first..end-1, so a run stopped part-way has charged what it computed.
    """
    pattern_chars = step_pattern(a.decimals)
    pattern = [[tok.token_id(ch) for ch in chars] for chars in pattern_chars]
    tokens_needed = a.horizon * len(pattern)
    gen = torch.Generator().manual_seed(a.seed)
    preds = {ctx: [] for ctx in a.ctx}
    failed = {ctx: 0 for ctx in a.ctx}
    for start in range(0, len(values), a.batch_size):
        batch = values[start:start + a.batch_size]
        jobs = [(v, ctx) for v in batch for ctx in a.ctx]
        prompts = [tok.encode(encode(v[:ctx], alpha, a.decimals) + ";") for v, ctx in jobs]
        prompts = [p for p in prompts for _ in range(a.samples)]
        spent = stats.get("flops", 0.0)
        out = generate(model, prompts, tokens_needed, pad_id=tok.pad_id or 0, pattern=pattern,
                       temperature=a.temperature, generator=gen, stats=stats)
        if charge is not None:
            charge(start, start + len(batch), stats["flops"] - spent)
        for j, (v, ctx) in enumerate(jobs):
            samples = []
            for ids in out[j * a.samples:(j + 1) * a.samples]:
                steps, report = decode(tok.decode(ids), alpha, a.decimals)
                failed[ctx] += a.horizon - min(report.recovered, a.horizon)
                steps = steps[:a.horizon]
                if len(steps) < a.horizon:  # can't happen under the grammar; kept for safety
                    fill = steps[-1:] if len(steps) else v[ctx - 1:ctx]
                    steps = np.concatenate([steps, np.repeat(fill, a.horizon - len(steps), 0)])
                samples.append(steps)
            preds[ctx].append(np.median(np.stack(samples), axis=0))
        if bar is not None:
            bar.update(len(jobs))
    return ({ctx: np.stack(p) for ctx, p in preds.items()},
            {ctx: f // max(1, a.samples) for ctx, f in failed.items()})


def planned_flops(model, tok, values, a, alpha, convention) -> float:
    """An upper bound of a model's generation FLOPs: every prompt and forecast token through the body,
    and the head (full vocabulary) at every generated position."""
    total = 0.0
    generated = a.horizon * len(step_pattern(a.decimals))
    for ctx in a.ctx:
        for v in values:
            prompt = len(tok.encode(encode(v[:ctx], alpha, a.decimals) + ";"))
            total += model.flops(prompt + generated, convention, head_positions=generated).forward * a.samples
    return total


# --- baselines -------------------------------------------------------------------------------------

def _fit_one(job):
    time, series, ctxs, horizon, model, seed = job
    out, warm = {}, None
    for ctx in sorted(ctxs):
        out[ctx], params = ode_fit(time, series[:ctx], horizon, model=model, warm=warm, seed=seed)
        warm = params if model == "rosenzweig-macarthur" else None
    return out


def forecast_ode(time, values, a, bar=None) -> dict[int, np.ndarray]:
    jobs = [(time, v.astype(np.float64), a.ctx, a.horizon, a.ode_model, a.seed) for v in values]
    results = []
    if a.workers and a.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=a.workers) as pool:
            for r in pool.map(_fit_one, jobs):
                results.append(r)
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            results.append(_fit_one(job))
            if bar is not None:
                bar.update(1)
    return {ctx: np.stack([r[ctx] for r in results]) for ctx in a.ctx}


# --- outputs ---------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    ctxs = results["contexts"]
    lines = ["| method | " + " | ".join(f"MAE ctx {c}" for c in ctxs) + " | combined MAE | prey | predator | failed steps | FLOPs |",
             "| --- |" + " ---: |" * (len(ctxs) + 5)]
    for method, r in results["methods"].items():
        per = r["contexts"]
        prey = np.mean([per[str(c)]["mae_by_species"]["prey"] for c in ctxs])
        pred = np.mean([per[str(c)]["mae_by_species"]["predator"] for c in ctxs])
        failed = sum(per[str(c)]["failed_steps"] for c in ctxs)
        lines.append(f"| {method} | " + " | ".join(f"{per[str(c)]['mae']:.4f}" for c in ctxs)
                     + f" | **{r['combined_mae']:.4f}** | {prey:.4f} | {pred:.4f} | {failed} | {r.get('flops', 0.0):.3g} |")
    return ("MAE in scaled units (values / alpha, alpha = " + f"{results['alpha']:.4f}), "
            f"{results['horizon']} steps, {len(results['systems'])} {results['split']} systems of {results['data']}.\n\n"
            + "\n".join(lines) + "\n")


def plot_horizon(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctxs = results["contexts"]
    fig, axes = plt.subplots(2, len(ctxs), figsize=(5 * len(ctxs), 7), squeeze=False, sharex=True)
    steps = np.arange(1, results["horizon"] + 1)
    for j, c in enumerate(ctxs):
        for i, s in enumerate(SPECIES):
            ax = axes[i, j]
            for method, r in results["methods"].items():
                ax.plot(steps, r["contexts"][str(c)]["mae_by_step_species"][s], marker=".", label=method)
            ax.set_title(f"{s}, context {c}")
            ax.set_ylabel("MAE (scaled units)")
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("steps ahead")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_forecasts(values, time, forecasts: dict, systems: list[int], picks: list[int], ctxs, horizon, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [p for p in picks if 0 <= p < len(values)] or [0]
    fig, axes = plt.subplots(len(picks), len(ctxs), figsize=(6 * len(ctxs), 3.2 * len(picks)), squeeze=False)
    for r, pos in enumerate(picks):
        for c, ctx in enumerate(ctxs):
            ax = axes[r, c]
            for i, (s, colour) in enumerate(zip(SPECIES, ("tab:blue", "tab:red"))):
                ax.plot(time[:ctx + horizon], values[pos, :ctx + horizon, i], color=colour, lw=1.5, label=f"{s} (truth)")
                for k, (method, fc) in enumerate(forecasts.items()):
                    ax.plot(time[ctx:ctx + horizon], fc[ctx][pos, :, i], ls=("--", ":", "-.", (0, (1, 3)))[k % 4],
                            color=colour, alpha=0.8, label=f"{s} ({method})")
            ax.axvline(time[ctx - 1], color="grey", lw=0.8)
            ax.set_title(f"system {systems[pos]}, context {ctx}")
            ax.set_xlabel("time")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the whole evaluation --------------------------------------------------------------------------

def select(a):
    """(series, evaluated system indices, their values (systems, points, 2), the split's alpha)."""
    series = ensure_data(a.data) if a.data == DEFAULT_DATA else load_series(a.data)
    check(a, series.points)
    a.ctx = sorted(set(a.ctx))
    split = make_splits(series.systems, seed=a.split_seed)[a.split]
    alpha = scale_for(series.trajectories[split])
    systems = split[: a.limit] if a.limit else split
    return series, systems, series.trajectories[systems].astype(np.float64), alpha


def planned_cost(argv: list[str], rank: int = 0, targets=("q_proj", "v_proj")) -> float:
    """Upper bound of the FLOPs `python eval.py ARGV` charges for one model (with a LoRA of `rank`)."""
    from flops.report import meta_model
    from qwen_min import load_config

    a = parser().parse_args(argv)
    _, _, values, alpha = select(a)
    model = meta_model(load_config(a.model), rank, targets)
    exists = Path(a.ledger).exists()
    convention = get_convention(Ledger.open(a.ledger).convention if exists else a.convention)
    return planned_flops(model, load_tokenizer(a.model), values, a, alpha, convention)


def evaluate(a) -> dict:
    series, systems, values, alpha = select(a)
    truth = {ctx: values[:, ctx:ctx + a.horizon] for ctx in a.ctx}
    adapters = [resolve_adapter(p) for p in a.adapter]
    labels = ([] if (adapters and a.no_base) else ["model"]) + [
        ("model+" + (p.parent.name if p.name in ("adapter_best", "adapter_last") else p.name)) for p in adapters]
    device = parse_device(a.device)
    dtype = parse_dtype(a.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    tok = load_tokenizer(a.model)
    name = a.name or f"eval-{Path(a.out).name}"
    ledger = Ledger.use(a.ledger, a.budget, a.convention)
    convention = get_convention(ledger.convention)

    forecasts, flops, failed = {}, {}, {}
    bar = None
    if not a.quiet:
        from tqdm import tqdm

        total = len(labels) * len(a.ctx) * len(values) + (0 if a.no_ode_fit else len(values))
        bar = tqdm(total=total, desc="systems", dynamic_ncols=True)
    try:
        for label, adapter in zip(labels, ([None] if "model" in labels else []) + adapters):
            model = load_pretrained(a.model, dtype=dtype, device=device)
            if adapter is not None:
                lora.load_adapter(model, adapter)
            need = planned_flops(model, tok, values, a, alpha, convention)
            if not ledger.can_afford(need):
                raise UsageError(f"{a.ledger}: evaluating {label} needs up to {need:.3e} FLOPs, "
                                 f"{ledger.refresh().remaining:.3e} remain")
            stats = {"convention": convention.name}
            key = f"{label}|{adapter}|ctx{'+'.join(map(str, a.ctx))}|{a.split}|{len(values)}|s{a.samples}"

            def charge(first, end, spent, key=key):  # one key per batch: a re-run charges only what was not
                ledger.charge(name, "eval", spent, tokens=0, steps=0, key=f"{key}|systems{first}-{end}")
            forecasts[label], failed[label] = forecast_model(model, tok, values, a, alpha, stats, bar, charge)
            flops[label] = stats["flops"]
            del model
        forecasts["persistence"] = {ctx: np.stack([persistence(v[:ctx], a.horizon) for v in values]) for ctx in a.ctx}
        if not a.no_ode_fit:
            forecasts["ode_fit"] = forecast_ode(series.time, values, a, bar)
    finally:
        if bar is not None:
            bar.close()

    results = {"data": str(a.data), "split": a.split, "split_seed": a.split_seed, "systems": list(map(int, systems)),
               "alpha": alpha, "contexts": a.ctx, "horizon": a.horizon, "model": a.model,
               "adapters": [str(p) for p in adapters], "decoding": {"samples": a.samples, "temperature": a.temperature,
                                                                    "grammar": "".join(c if len(c) == 1 else "D" for c in step_pattern(a.decimals))},
               "convention": convention.name, "flops": sum(flops.values()), "methods": {}}
    for method, fc in forecasts.items():
        per = {str(ctx): score(fc[ctx], truth[ctx], alpha, failed.get(method, {}).get(ctx, 0)) for ctx in a.ctx}
        results["methods"][method] = {"contexts": per, "combined_mae": float(np.mean([per[str(c)]["mae"] for c in a.ctx])),
                                      "flops": flops.get(method, 0.0)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    np.savez_compressed(out / "forecasts.npz", systems=np.asarray(systems), time=series.time,
                        **{f"truth|{ctx}": values[:, :ctx + a.horizon] for ctx in a.ctx},
                        **{f"{m}|{ctx}": fc[ctx] for m, fc in forecasts.items() for ctx in a.ctx})
    (out / "results.md").write_text(markdown(results))
    plot_horizon(results, out / "mae_vs_horizon.png")
    plot_forecasts(values, series.time, forecasts, systems, a.plot_systems, a.ctx, a.horizon, out / "forecasts.png")
    return results


def main(argv=None) -> int:
    a = None
    try:
        a = parser().parse_args(argv)
        results = evaluate(a)
    except (UsageError, LoadError, DataError, LedgerError, BudgetExceeded) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ledger = "the ledger" if a is None else a.ledger
        print(f"stopped: no results written; the batches generated so far are charged to {ledger}, "
              "and the same command again charges only the rest", file=sys.stderr)
        return 130
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
