"""Several evaluations side by side: every forecaster on every set (each evaluation folder is one
set: a split of the data file, or a whole file), and how the chosen forecaster stands against the
targets a forecaster of this project is held to. Nothing is computed again: the figures are the
evaluations' own results.json.

    rows = compare_folders(["runs/eval-val", "runs/eval-fresh"])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .folders import check_writable
from .outputs import CompareFolder, EvalFolder
from .report import comparison_markdown, plot_comparison
from .settings import UsageError

# what a forecaster must show on every set (issue: forecasts that hold on data the project did not make)
TARGETS = {"combined MAE <= 0.04": lambda r, _: r["mae"] <= 0.04,
           "90% coverage 85-95%": lambda r, _: r["cov90"] is not None and 0.85 <= r["cov90"] <= 0.95,
           "50% coverage 40-60%": lambda r, _: r["cov50"] is not None and 0.40 <= r["cov50"] <= 0.60,
           "CRPS <= 0.8 x MAE": lambda r, _: r["crps"] <= 0.8 * r["mae"],
           "beats parroting at each context (MAE and CRPS)": lambda r, p: None if p is None else all(
               r["ctx_mae"][c] < p["ctx_mae"][c] and r["ctx_crps"][c] < p["ctx_crps"][c] for c in r["ctx_mae"]),
           "no 90% interval wider than 5": lambda r, _: r["widest"] is not None and r["widest"] <= 5}


@dataclass
class Row:
    """One forecaster on one set, in the set's scale (scaled units)."""

    set: str
    method: str
    figures: dict


def set_name(results: dict) -> str:
    """The set an evaluation scored: its data file's name for a whole file, else the split's name."""
    return Path(results["data"]).stem if results["split"] == "all" else results["split"]


def method_name(results: dict, method: str) -> str:
    """The language model's rows are called after the run (or folder) its model or adapter came from."""
    if not method.startswith("model"):
        return method
    source = Path(results["adapters"][0] if results["adapters"] and method != "model" else results["model"])
    return source.parent.name if source.name in ("model_best", "model_last", "adapter_best", "adapter_last") else source.name


def figures_of(r: dict, contexts: list[int]) -> dict:
    per = {c: r["contexts"][str(c)] for c in contexts}
    mean = lambda key: None if any(per[c].get(key) is None for c in contexts) else sum(  # noqa: E731
        per[c][key] for c in contexts) / len(contexts)
    widest = [per[c].get("widest_90") for c in contexts]
    return {"ctx_mae": {c: per[c]["mae"] for c in contexts}, "ctx_crps": {c: per[c]["crps"] for c in contexts},
            "mae": r["combined_mae"], "crps": r["combined_crps"], "cov50": mean("coverage_50"),
            "cov90": mean("coverage_90"), "widest": None if None in widest else max(widest), "flops": r.get("flops", 0.0),
            "mae_by_step": [sum(per[c]["mae_by_step"][i] for c in contexts) / len(contexts)
                            for i in range(len(per[contexts[0]]["mae_by_step"]))],
            "crps_by_step": [sum(per[c]["crps_by_step"][i] for c in contexts) / len(contexts)
                             for i in range(len(per[contexts[0]]["crps_by_step"]))]}


def compare_folders(folders: list[str | Path], names: dict[str, str] | None = None) -> list[Row]:
    """Every (set, forecaster) of the evaluations in `folders`, the first evaluation's figures where
    two score the same forecaster on the same set (the baselines, say); `names` renames forecasters.
    A forecaster scored on fewer of a set's systems than the others (the first N, where it is slow)
    says so in its name."""
    names = names or {}
    evaluations = []
    for folder in folders:
        results = EvalFolder(folder).results()
        if results is None:
            raise UsageError(f"{folder}: no {EvalFolder.RESULTS} there (an evaluation folder of eval.py)")
        evaluations.append(results)
    systems = {}
    for results in evaluations:
        systems[set_name(results)] = max(systems.get(set_name(results), 0), len(results["systems"]))
    rows, seen = [], set()
    for results in evaluations:
        n = len(results["systems"])
        for method, r in results["methods"].items():
            name = method_name(results, method)
            name = names.get(name, name) + ("" if n == systems[set_name(results)] else f" (first {n})")
            if (set_name(results), name) not in seen:
                seen.add((set_name(results), name))
                rows.append(Row(set_name(results), name, figures_of(r, results["contexts"])))
    return rows


def targets(rows: list[Row], forecaster: str) -> dict[str, dict[str, bool | None]]:
    """{set: {target: met, or None where the set has nothing to judge it by}} for `forecaster`; on a
    set whose name says other-family, also whether it beats the ODE fit (which fits a family that did
    not make the series)."""
    by = {(r.set, r.method): r.figures for r in rows}
    out = {}
    for name in dict.fromkeys(r.set for r in rows):
        mine = by.get((name, forecaster))
        if mine is None:
            continue
        met = {target: None if (ok := test(mine, by.get((name, "parroting")))) is None else bool(ok)
               for target, test in TARGETS.items()}  # None: nothing to judge it by on this set
        for (s, m), ode in by.items():  # on the same systems: the ODE fit may have had only the first N
            same = by.get((s, forecaster + m[len("ode_fit"):]))
            if s == name and "other-family" in name and m.startswith("ode_fit") and same is not None:
                met["beats the ODE fit"] = same["mae"] < ode["mae"]
        out[name] = met
    return out


def compare(folders: list[str | Path], out: str | Path, forecaster: str | None = None,
            names: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> str:
    """comparison.md and comparison.png of the evaluations in `folders`, in `out`; `forecaster`
    (default: the first evaluation's model) is held against the targets; `names` renames
    forecasters, and those in `skip` (by their names in the table) are left out. Returns the table."""
    rows = [r for r in compare_folders(folders, names) if r.method not in skip]
    if not rows:
        raise UsageError("nothing to compare: give evaluation folders")
    forecaster = forecaster or rows[0].method
    if forecaster not in {r.method for r in rows}:
        raise UsageError(f"--forecaster {forecaster}: not among {', '.join(dict.fromkeys(r.method for r in rows))}")
    folder = CompareFolder(out)
    check_writable(folder.path)
    table = comparison_markdown(rows, targets(rows, forecaster), forecaster)
    folder.write(table)
    plot_comparison(rows, folder / folder.FIGURE)
    return table


def parse_names(pairs: list[str]) -> dict[str, str]:
    """OLD=NEW pairs (eval.py compare --name) as {OLD: NEW}."""
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise UsageError(f"--name {bad[0]}: expected OLD=NEW, e.g. f1=new-default")
    return dict(p.split("=", 1) for p in pairs)
