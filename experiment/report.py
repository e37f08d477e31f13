"""What a person reads: the tables (Markdown) and figures of a run, an evaluation, the sweep and the
plan. Every function takes the numbers it shows and writes files; nothing here computes a result."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from data.files import atomic_write  # noqa: E402
from flops import Ledger  # noqa: E402
from flops.report import component_table, format_table  # noqa: E402

from .models import meta_model  # noqa: E402
from .scoring import SPECIES, Forecast  # noqa: E402
from .settings import grid_name  # noqa: E402


def save_figure(fig, path: Path, dpi: int) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)


# one colour and line style per method in every figure, whatever the other methods are
STYLES = {"model": ("#1f77b4", "-"), "persistence": ("#7f7f7f", ":"), "parroting": ("#ff7f0e", "--"),
          "ode_fit": ("#9467bd", "-."),
          "arima": ("#8c564b", "--"), "ets": ("#e377c2", "--"), "theta": ("#bcbd22", "--")}
MODEL_COLOURS = ("#e6ab02", "#d62728", "#2ca02c", "#17becf", "#000080", "#c51b7d")
SUBSET = re.compile(r" \(first \d+\)$")  # the same method, scored on a set's first systems only


def line_of(method: str) -> dict:
    colour, ls = style_of(method)
    return {"color": colour, "ls": ls, "alpha": 0.55 if SUBSET.search(method) else 1.0}


def style_of(method: str) -> tuple[str, str]:
    """(colour, line style) of a method: fixed for the baselines, a colour picked from the method's
    name (not its place in a list) for a model; a method scored on a subset of the systems keeps its own."""
    method = SUBSET.sub("", method)
    if method in STYLES:
        return STYLES[method]
    return MODEL_COLOURS[zlib.crc32(method.encode()) % len(MODEL_COLOURS)], "-"


# --- a training run --------------------------------------------------------------------------------

def plot_losses(metrics: list[dict], path: Path, title: str, ylabel: str = "cross-entropy (nats/token)") -> None:
    """Training loss per step and validation loss per pass (in `ylabel`'s units) against the step."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [m["step"] for m in metrics]
    ax.plot(steps, [m["train_loss"] for m in metrics], lw=0.8, alpha=0.7, label="train (per step)")
    val = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, 120)


# --- the lr x rank grid ----------------------------------------------------------------------------

def grid_table(lrs, ranks, value: Callable[[int, float], float | None]) -> list[str]:
    """Markdown rows of the report's Table 4: one row per learning rate, one column per rank,
    `value(rank, lr)` in each cell ('-' where None)."""
    lines = ["| learning rate | " + " | ".join(f"rank {r}" for r in ranks) + " |", "| --- |" + " ---: |" * len(ranks)]
    for lr in lrs:
        cells = [value(r, lr) for r in ranks]
        lines.append(f"| {lr:g} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    return lines


def sweep_markdown(lrs, ranks, max_steps: int, fraction: float, value, best: dict | None) -> str:
    """sweep.md: validation loss per lr x rank, and the best cell."""
    table = ("Validation loss (best over the run, nats/token) per learning rate x LoRA rank, "
             f"{max_steps} steps on {fraction:.0%} of the training systems.\n\n"
             + "\n".join(grid_table(lrs, ranks, value)) + "\n")
    if best:
        table += f"\nBest: rank {best['rank']}, learning rate {best['lr']:g} (validation loss {best['best_val_loss']:.4f}).\n"
    return table


# --- an evaluation ---------------------------------------------------------------------------------

def results_markdown(results: dict) -> str:
    """results.md: per method, MAE per context, combined MAE and CRPS, 50% and 90% coverage, per
    species, failed steps and FLOPs; a point forecast's coverage is '-'."""
    ctxs = results["contexts"]
    lines = ["| method | forecast | " + " | ".join(f"MAE ctx {c}" for c in ctxs) + " | combined MAE | CRPS | "
             "50% coverage | 90% coverage | 90% width | widest 90% | prey | predator | failed steps | FLOPs |",
             "| --- | --- |" + " ---: |" * (len(ctxs) + 10)]
    for method, r in results["methods"].items():
        per = r["contexts"]
        prey = np.mean([per[str(c)]["mae_by_species"]["prey"] for c in ctxs])
        pred = np.mean([per[str(c)]["mae_by_species"]["predator"] for c in ctxs])
        failed = sum(per[str(c)]["failed_steps"] for c in ctxs)
        lines.append(f"| {method} | {'point' if r.get('point_forecast') else 'distribution'} | "
                     + " | ".join(f"{per[str(c)]['mae']:.4f}" for c in ctxs)
                     + f" | **{r['combined_mae']:.4f}** | {cell(r.get('combined_crps'))} | "
                     + " | ".join(cell(mean_over(per, ctxs, k)) for k in ("coverage_50", "coverage_90", "width_90"))
                     + f" | {cell(most_over(per, ctxs, 'widest_90'), 2)} | {prey:.4f} | {pred:.4f} | {failed} | "
                     + f"{r.get('flops', 0.0):.3g} |")
    d = results.get("decoding", {})
    return ("MAE, CRPS and interval widths in scaled units (values / alpha, alpha = " + f"{results['alpha']:.4f}), "
            f"{results['horizon']} steps, {len(results['systems'])} {results['split']} systems of {results['data']}; "
            f"the model's {d.get('samples', 1)} sample(s) per prompt at temperature {d.get('temperature', 0)}. "
            "Coverage is the share of true values inside the central interval; a point forecast has none.\n\n"
            + "\n".join(lines) + "\n")


def cell(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def most_over(per: dict, ctxs, key: str) -> float | None:
    values = [per[str(c)].get(key) for c in ctxs]
    return None if any(v is None for v in values) else float(max(values))


def mean_over(per: dict, ctxs, key: str) -> float | None:
    values = [per[str(c)].get(key) for c in ctxs]
    return None if any(v is None for v in values) else float(np.mean(values))


def plot_horizon(results: dict, path: Path, title: str | None = None) -> None:
    """MAE against steps ahead, a panel per species and context, and CRPS (both species) below; a line per method."""
    ctxs = results["contexts"]
    fig, axes = plt.subplots(3, len(ctxs), figsize=(5 * len(ctxs), 9.5), squeeze=False, sharex=True,
                             layout="constrained")
    steps = np.arange(1, results["horizon"] + 1)
    for j, c in enumerate(ctxs):
        for method, r in results["methods"].items():
            per = r["contexts"][str(c)]
            for i, s in enumerate(SPECIES):
                axes[i, j].plot(steps, per["mae_by_step_species"][s], marker=".", label=method, **line_of(method))
            if "crps_by_step" in per:
                axes[2, j].plot(steps, per["crps_by_step"], marker=".", label=method, **line_of(method))
        for i, s in enumerate(SPECIES):
            axes[i, j].set_title(f"{s}, context {c}")
            axes[i, j].set_ylabel("MAE (scaled units)")
        axes[2, j].set_title(f"both species, context {c}")
        axes[2, j].set_ylabel("CRPS (scaled units)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("steps ahead")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title or f"{results.get('model', '')} on {Path(str(results.get('data', ''))).name}")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, path, 110)


def as_forecast(fc) -> Forecast:
    return fc if isinstance(fc, Forecast) else Forecast(np.asarray(fc)[:, None])


def plot_forecasts(values, time, forecasts: dict, systems: list[int], picks: list[int], ctxs, horizon, path: Path,
                   title: str = "") -> None:
    """Fan charts: for the systems at positions `picks`, a row per system and species, a column per
    context: the truth (context and what followed), and each method's median with its 50% and 90%
    central intervals, every method in its own colour and line style; the context's end marked. The
    y range is the truth's and the medians', so a wide band does not flatten the rest."""
    picks = [p for p in picks if 0 <= p < len(values)] or [0]
    banded = any(not as_forecast(per_ctx[c]).point for per_ctx in forecasts.values() for c in ctxs)
    fig, axes = plt.subplots(2 * len(picks), len(ctxs), figsize=(6 * len(ctxs), 2.6 * 2 * len(picks)), squeeze=False,
                             layout="constrained")
    for r, pos in enumerate(picks):
        for c, ctx in enumerate(ctxs):
            for i, species in enumerate(SPECIES):
                ax = axes[2 * r + i, c]
                truth = values[pos, :ctx + horizon, i]
                ax.plot(time[:ctx + horizon], truth, color="black", lw=1.3, label="truth")
                shown = [truth]
                for method, per_ctx in forecasts.items():
                    fc, (colour, ls), t = as_forecast(per_ctx[ctx]), style_of(method), time[ctx:ctx + horizon]
                    if not fc.point:
                        for width, shade in ((0.9, 0.15), (0.5, 0.3)):
                            low, high = fc.quantile((1 - width) / 2)[pos, :, i], fc.quantile((1 + width) / 2)[pos, :, i]
                            ax.fill_between(t, low, high, color=colour, alpha=shade, lw=0)
                    median = fc.median()[pos, :, i]
                    ax.plot(t, median, color=colour, lw=1.2, ls=ls, label=method)
                    shown.append(median)
                low, high = min(float(np.min(s)) for s in shown), max(float(np.max(s)) for s in shown)
                pad = 0.1 * (high - low or 1.0)
                ax.set_ylim(max(low - pad, 0.0) if low >= 0 else low - pad, high + pad)
                ax.axvline(time[ctx - 1], color="grey", lw=0.8, ls=":")
                ax.annotate("context end", (time[ctx - 1], 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                            ha="right", va="top", color="grey", xytext=(-3, 0), textcoords="offset points")
                ax.set_title(f"system {systems[pos]}, {species}, context {ctx}", fontsize=9)
                ax.set_ylabel(f"{species} (file's units)")
                ax.set_xlabel("time (file's units)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if banded:
        handles += [plt.Rectangle((0, 0), 1, 1, color="grey", alpha=0.3), plt.Rectangle((0, 0), 1, 1, color="grey",
                                                                                       alpha=0.15)]
        labels += ["50% interval", "90% interval"]
    if title:
        fig.suptitle(title, fontsize=10)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8)
    save_figure(fig, path, 100)


# --- the plan --------------------------------------------------------------------------------------

def model_method(results: dict) -> dict:
    """The language model's entry of an evaluation's methods (`model`, or `model+<adapter>`)."""
    return next(v for k, v in results["methods"].items() if k.startswith("model"))


def plan_report(a, out, ledger: Ledger, config, choice: dict, evals: dict, folders: dict) -> Path:
    """report.md of the plan with settings `a` in its folder `out` (a PlanFolder): Tables 3-5, the
    forecast MAE of the three models with the baselines, and the figures."""
    best = choice["best_setting"]
    table3 = format_table(component_table(meta_model(config, rank=best["rank"]), a.chunk, ledger.convention),
                          ledger.convention, a.chunk)
    grid_lines = grid_table(a.lrs, a.ranks, lambda r, lr: choice["grid"].get(grid_name("grid", r, lr)))
    mae_lines = ["| model | " + " | ".join(f"MAE ctx {c}" for c in a.ctx)
                 + " | combined MAE | CRPS | 50% coverage | 90% coverage |", "| --- |" + " ---: |" * (len(a.ctx) + 4)]
    baselines = next((e for e in (evals["tuned LoRA"], evals["default LoRA"], evals["untuned"]) if e), None)
    rows = [(label, model_method(e)) for label, e in evals.items() if e]
    if baselines:
        rows += [(m, r) for m, r in baselines["methods"].items() if not m.startswith("model")]
    for label, m in rows:
        mae_lines.append(f"| {label} | " + " | ".join(f"{m['contexts'][str(c)]['mae']:.4f}" for c in a.ctx)
                         + f" | **{m['combined_mae']:.4f}** | {cell(m.get('combined_crps'))} | "
                         + " | ".join(cell(mean_over(m["contexts"], a.ctx, k)) for k in ("coverage_50", "coverage_90"))
                         + " |")
    figures = plan_figures(a, out, evals, folders)
    text = [f"# Experiment plan: {a.model}", "",
            f"Budget {a.budget:.3e} FLOPs ({ledger.convention} convention), shares {a.shares}; "
            f"used {ledger.total:.3e} ({ledger.total / ledger.budget:.2%}). Data `{a.data}`; runs and outputs in this folder.", "",
            f"## Table 3: FLOPs per component, one sequence of {a.chunk} tokens (LoRA rank {best['rank']})", "",
            "```", table3, "```", "",
            "## Table 4: validation loss per learning rate and LoRA rank", "",
            f"{a.grid_fraction:.0%} of the training systems; best over each run, nats/token.", "", *grid_lines, "",
            f"Chosen: rank {best['rank']}, learning rate {best['lr']:g} (validation loss {best['val_loss']:.4f}); chunk sizes "
            + ", ".join(f"{c}: {'-' if v is None else f'{v:.4f}'}" for c, v in choice["chunks"].items())
            + f", so chunk {choice['best_chunk']}. The rule and numbers are in `choice.json`.", "",
            "## Table 5: FLOPs per experiment", "", ledger.table(), "",
            "## Forecast MAE and CRPS (scaled units, 20 steps) and interval coverage", "", *mae_lines, "",
            "Per-model details: " + ", ".join(f"[{k}]({v}/results.md)" for k, v in folders.items() if evals.get(k)) + ".", "",
            "## Figures", ""]
    for caption, path in figures:
        text += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return out.write(out.REPORT, "\n".join(text))


def plan_figures(a, out, evals: dict, folders: dict) -> list[tuple[str, str]]:
    """The three models compared (MAE against horizon; forecasts against truth), from saved forecasts;
    `out` is the PlanFolder, `folders` the evaluations' names by label."""
    present = {k: v for k, v in evals.items() if v}
    if not present:
        return []
    first = next(iter(present.values()))
    methods = {label: model_method(e) for label, e in present.items()}
    for m, r in first["methods"].items():
        if not m.startswith("model"):
            methods[m] = r
    plot_horizon({"contexts": first["contexts"], "horizon": first["horizon"], "methods": methods},
                 out / out.HORIZON_PLOT, title=f"{a.model} on {Path(a.data).name}: the three models and the baselines")
    figures = [("MAE against steps ahead, per species and context: the three models and the baselines", out.HORIZON_PLOT)]
    forecasts, saved = {}, None
    for label, name in folders.items():
        found = out.evaluation(name).forecasts() if label in present else None
        if found is not None:
            saved = found
            key = next(k.split("|")[0] for k in saved.files if k.startswith("model"))
            forecasts[label] = {c: saved[f"{key}|{c}"] for c in first["contexts"]}
    if forecasts:
        values = saved[f"truth|{max(first['contexts'])}"]
        plot_forecasts(values, saved["time"], forecasts, list(saved["systems"]), a.plots(len(saved["systems"])),
                       first["contexts"], first["horizon"], out / out.FORECAST_PLOT)
        figures.append(("Forecasts against the truth for chosen validation systems, the three models overlaid",
                        out.FORECAST_PLOT))
    for label, name in folders.items():
        if label in present:
            figures.append((f"{label}: MAE against steps ahead with the baselines",
                            f"{name}/{out.evaluation(name).HORIZON_PLOT}"))
    return figures


# --- several evaluations ---------------------------------------------------------------------------

def comparison_markdown(rows, met: dict, forecaster: str) -> str:
    """comparison.md: a row per set and forecaster (scaled units), then the targets `forecaster` meets."""
    ctxs = sorted(rows[0].figures["ctx_mae"]) if rows else []
    lines = ["| set | forecaster | " + " | ".join(f"MAE ctx {c}" for c in ctxs) + " | combined MAE | CRPS | "
             "50% coverage | 90% coverage | widest 90% | FLOPs |", "| --- | --- |" + " ---: |" * (len(ctxs) + 6)]
    for r in rows:
        f = r.figures
        name = f"**{r.method}**" if r.method == forecaster else r.method
        lines.append(f"| {r.set} | {name} | " + " | ".join(f"{f['ctx_mae'][c]:.4f}" for c in ctxs)
                     + f" | {f['mae']:.4f} | {f['crps']:.4f} | {cell(f['cov50'], 3)} | {cell(f['cov90'], 3)} | "
                     + f"{cell(f['widest'], 2)} | {f['flops']:.3g} |")
    names = list(dict.fromkeys(target for m in met.values() for target in m))
    check = ["| target | " + " | ".join(met) + " |", "| --- |" + " :---: |" * len(met)]
    for target in names:
        check.append(f"| {target} | " + " | ".join("yes" if m.get(target) else ("-" if m.get(target) is None else "**no**")
                                                 for m in met.values()) + " |")
    return ("Every forecaster on every set, in scaled units (each set's values divided by the scale its "
            "evaluation used); coverage is the share of true values inside the central interval, a point "
            "forecast has none. FLOPs: a language model's, for all systems of the set.\n\n" + "\n".join(lines)
            + f"\n\nThe targets, for {forecaster}:\n\n" + "\n".join(check) + "\n")


def plot_comparison(rows, path: Path) -> None:
    """MAE and CRPS against steps ahead (mean over contexts), a column per set, a line per forecaster."""
    sets = list(dict.fromkeys(r.set for r in rows))
    fig, axes = plt.subplots(2, len(sets), figsize=(4.2 * len(sets), 7), squeeze=False, sharex=True)
    for j, name in enumerate(sets):
        for r in (r for r in rows if r.set == name):
            steps = np.arange(1, len(r.figures["mae_by_step"]) + 1)
            axes[0, j].plot(steps, r.figures["mae_by_step"], label=r.method, **line_of(r.method))
            axes[1, j].plot(steps, r.figures["crps_by_step"], label=r.method, **line_of(r.method))
        axes[0, j].set_title(name)
        axes[1, j].set_xlabel("steps ahead")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-3))  # an exact forecast (0) would flatten the rest
    axes[0, 0].set_ylabel("MAE (scaled units)")
    axes[1, 0].set_ylabel("CRPS (scaled units)")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 7), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path, 110)
