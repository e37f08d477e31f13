"""Forecasts of a split's systems by the model (and its adapters), in their encoding, and by the
baselines, scored and written out: the work of eval.py.

    results = evaluate(EvalSettings(model="tiny-random", limit=8, out="runs/eval-tiny"))

For each context length the first `ctx` steps of each system are given to the model (as text ending
with ';' under a grammar of the number format, or as values), the model continues them for
`horizon` steps, and the forecast is scored against the truth. The model is named once (one
ModelSource for the whole evaluation); what is written, and where, is the folder's (`EvalFolder`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import lora
from data.files import file_digest
from flops import Convention, Ledger, get_convention
from qwen_min import ModelSource, device_and_dtype, open_model
from qwen_min.weights import empty_model, is_preset

from .baseline_runs import Selection, forecast_baselines, select
from .encodings import Encoding, adapter_encoding, encoding_of
from .folders import RunFolder, check_writable
from .outputs import EvalFolder
from .models import forecast_model
from .report import plot_forecasts, plot_horizon, results_markdown
from .scoring import Forecast, score_methods
from .settings import EvalSettings, UsageError


@dataclass
class GivenAdapter:
    """An --adapter: its label in the results, its files, and the encoding its run (or its own files) records."""

    label: str
    adapter: lora.Adapter
    encoding: str | None


def resolve_adapter(path: str) -> Path:
    """An adapter directory, or the best adapter of a train.py run directory."""
    p = Path(path)
    if (p / lora.adapter.CONFIG_FILE).is_file():
        return p
    best = RunFolder(p).weights("best", full=False)
    if (best / lora.adapter.CONFIG_FILE).is_file():
        return best
    if (p / "model.safetensors").is_file() or RunFolder(p).weights("best", full=True).is_dir():
        model = p if (p / "model.safetensors").is_file() else RunFolder(p).weights("best", full=True)
        raise UsageError(f"--adapter {path}: a whole model (model.safetensors), not a LoRA adapter; "
                         f"evaluate it with --model {model}")
    raise UsageError(f"--adapter {path}: no {lora.adapter.CONFIG_FILE} there (nor in {best})")


def with_base_model(flags: dict) -> dict:
    """Evaluation flags with --model taken from the first --adapter when it was not given: the base
    model its run trained (config.json), else the one its adapter_config.json names, where that is
    a preset or a directory here (a hub id is the default's business)."""
    if "model" in flags or not flags.get("adapter"):
        return flags
    path = resolve_adapter(flags["adapter"][0])
    run = RunFolder.containing(path)
    base = run.read_config().get("model") if run else lora.Adapter(path).config.get("base_model_name_or_path")
    if isinstance(base, str) and (is_preset(base) or Path(base).is_dir()):
        return {**flags, "model": base}
    return flags


def adapter_label(path: Path) -> str:
    """`model+<run>` for a run's best or last adapter, else `model+<folder>`."""
    return "model+" + (path.parent.name if path.name in RunFolder.WEIGHTS else path.name)


def given_adapters(s: EvalSettings, source: ModelSource) -> list[GivenAdapter]:
    """Every --adapter, each checked against the model's shapes before any work; two adapters that
    would share a label are told apart by their whole paths."""
    paths = [resolve_adapter(p) for p in s.adapter]
    if len({p.resolve() for p in paths}) < len(paths):
        raise UsageError("--adapter: the same adapter is given twice")
    labels = [adapter_label(p) for p in paths]
    labels = [label if labels.count(label) == 1 else f"model+{p}" for label, p in zip(labels, paths)]
    given = []
    for label, path in zip(labels, paths):
        adapter = lora.Adapter(path)
        adapter.check(empty_model(source.config(s.encoding), adapter.spec))
        run = RunFolder.containing(path)
        if run is not None:
            run.same_head(adapter)
        given.append(GivenAdapter(label, adapter, run.encoding() if run else adapter_encoding(adapter)))
    return given


def resolve_encoding(s: EvalSettings, source: ModelSource, adapters: list[GivenAdapter]) -> str:
    """The encoding of the evaluation: --encoding, else what the model directory or the adapters'
    runs say, else the preset's default. Refuses a model and adapters (or --encoding) that disagree;
    a model read under another encoding's layers (a language model's decoder under value layers) agrees."""
    said = {f"--encoding {s.encoding}": s.encoding} if s.encoding else {}
    said.update({f"--adapter {a.adapter.directory}": a.encoding for a in adapters if a.encoding})
    if not source.preset and not any(source.encoding in encoding_of(e).serves_models_of for e in said.values()):
        said[f"--model {s.model}"] = source.encoding
    kinds = set(said.values())
    if len(kinds) > 1:
        raise UsageError("the encodings disagree: " + ", ".join(f"{k} reads {v}" for k, v in said.items()))
    return kinds.pop() if kinds else source.encoding  # a preset alone: its default


def identity(s: EvalSettings, sel: Selection, source: ModelSource, adapters: list[GivenAdapter]) -> str:
    """The ledger key of an evaluation: a digest of everything that decides what it computes (model
    and adapter files, data file, systems, contexts, horizon, samples, temperature, decimals, seed,
    batch size, dtype), not of where its results go."""
    what = {"model": source.digest, "data": file_digest(s.data), "systems": list(map(int, sel.systems)),
            "encoding": s.encoding, "adapters": [(a.label, a.adapter.digest) for a in adapters], "base": not s.no_base,
            "contexts": s.contexts, "horizon": s.horizon, "samples": s.samples, "temperature": s.temperature,
            "decimals": s.decimals, "seed": s.seed, "batch_size": s.batch_size, "dtype": s.dtype, "split": s.split}
    if s.scale_from is not None:  # the scale decides what a model reads
        what["alpha"] = sel.alpha
    return "eval-" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


# --- the model -------------------------------------------------------------------------------------

def forecast_batches(model, tok, encoding: Encoding, values: np.ndarray, s: EvalSettings, alpha: float,
                     convention: Convention, bar=None, ledger=None) -> tuple[dict, dict, float]:
    """Forecast samples {ctx: (systems, samples, horizon, 2)} in original units, steps that failed to
    parse {ctx: count}, and the FLOPs spent, `batch_size` systems at a time, each batch with every
    context and every sample. `ledger.claim(first, end)` is called before each batch on
    systems first..end-1 and `ledger.settle(first, end, flops, claimed)` after it, so no batch is
    computed that the budget can't pay for, and a run stopped part-way has charged what it computed."""
    gen, rng, task = torch.Generator().manual_seed(s.seed), np.random.default_rng(s.seed), s.task
    preds = {ctx: [] for ctx in task.contexts}
    failed = {ctx: 0 for ctx in task.contexts}
    spent = 0.0
    for start in range(0, len(values), s.batch_size):
        batch = values[start:start + s.batch_size]
        claimed = ledger.claim(start, start + len(batch)) if ledger is not None else False
        samples, bad, cost = encoding.forecast(model, tok, batch, alpha, task, convention, gen, rng)
        spent += cost.forward
        if ledger is not None:
            ledger.settle(start, start + len(batch), cost.forward, claimed)
        for ctx in task.contexts:
            preds[ctx].append(samples[ctx])
            failed[ctx] += bad[ctx]
        if bar is not None:
            bar.update(len(batch))
    return ({ctx: np.concatenate(p) for ctx, p in preds.items()},
            {ctx: f // task.samples for ctx, f in failed.items()}, spent)


class BatchClaims:
    """An evaluation's batches in the ledger: each batch's bound claimed (key `label|systemsA-B`)
    before it is computed, then settled to what it spent; a batch an earlier run of the same
    evaluation charged is computed again without a charge."""

    def __init__(self, ledger: Ledger, key: str, name: str, label: str, bounds: dict[int, float]):
        """`bounds`: {a batch's first system: the FLOPs bound of the batch}."""
        self.ledger, self.key, self.name, self.label, self.bounds = ledger, key, name, label, bounds
        self.charged = 0.0

    def batch_key(self, first: int, end: int) -> str:
        return f"{self.label}|systems{first}-{end}"

    def claim(self, first: int, end: int) -> bool:
        return self.ledger.charge(self.key, "eval", self.bounds[first], name=self.name, tokens=0, steps=0,
                                  key=self.batch_key(first, end), claim=True)

    def settle(self, first: int, end: int, spent: float, claimed: bool) -> None:
        if claimed:
            self.ledger.settle(self.key, self.batch_key(first, end), spent)
            self.charged += spent


def forecast_language_models(s: EvalSettings, sel: Selection, source: ModelSource, adapters: list[GivenAdapter],
                             tok, ledger: Ledger, key: str, bar, device: torch.device, dtype: torch.dtype):
    """({label: forecasts}, {label: failed steps}, {label: FLOPs}, FLOPs charged now (a batch an
    earlier run of the same evaluation charged is not charged again), {label: its value head or
    None}) for the untuned model (unless
    --no-base) and each adapter, each charged to the ledger batch by batch, each refused before any
    FLOP if the ledger can't pay for its bound."""
    convention, encoding = get_convention(ledger.convention), encoding_of(s.encoding)
    forecasts, failed, flops, charged, heads = {}, {}, {}, 0.0, {}
    for label, adapter in ([] if (adapters and s.no_base) else [("model", None)]) + [(a.label, a.adapter)
                                                                                      for a in adapters]:
        model = forecast_model(source, encoding, s.seed, device, dtype, adapter)
        spec = getattr(model, "spec", None)  # the value head it forecasts with, recorded in results.json
        heads[label] = None if spec is None else asdict(spec)  # {components, space, steps, inputs}
        bounds = {b: encoding.bound(model, tok, sel.values[b:b + s.batch_size], sel.alpha, s.task, convention)
                  for b in range(0, len(sel.values), s.batch_size)}  # each batch's, claimed before it is computed
        need = sum(bounds.values())
        if not ledger.can_afford(need):
            raise UsageError(f"{s.ledger}: evaluating {label} needs up to {need:.3e} FLOPs, "
                             f"{ledger.refresh().remaining:.3e} remain")

        claims = BatchClaims(ledger, key, s.ledger_name, label, bounds)
        samples, failed[label], flops[label] = forecast_batches(model, tok, encoding, sel.values, s, sel.alpha,
                                                               convention, bar, claims)
        charged += claims.charged
        forecasts[label] = {ctx: Forecast(samples[ctx]) for ctx in s.contexts}
        del model
    return forecasts, failed, flops, charged, heads


# --- the whole evaluation --------------------------------------------------------------------------

def evaluate(s: EvalSettings, source: ModelSource | None = None) -> dict:
    """Forecast, score and write every output; returns results.json's content."""
    s.check()
    folder = EvalFolder(s.out)
    check_writable(folder.path)  # a file there, or a folder that can't be written, is refused before any FLOP
    RunFolder(s.model).refuse_as_model()
    source = source or open_model(s.model)
    adapters = given_adapters(s, source)
    s = s.resolved(resolve_encoding(s, source, adapters))
    sel = select(s)
    s.check_plots(len(sel.systems))
    if not s.quiet and (folder / folder.RESULTS).exists():
        print(f"{folder.path}: replacing the evaluation there (--out another folder keeps it)", file=sys.stderr)
    device, dtype = device_and_dtype(s.device, s.dtype)
    tok = source.tokenizer(s.encoding)
    key = identity(s, sel, source, adapters)
    ledger = Ledger.open(s.ledger, s.budget, s.convention)
    n_models = len(adapters) + (0 if (adapters and s.no_base) else 1)
    fitted = "ode_fit" in s.methods
    bar = None if s.quiet else tqdm(total=(n_models + fitted) * len(sel.values), dynamic_ncols=True,
                                    desc=f"{len(sel.values)} systems x {n_models} model{'s' * (n_models > 1)}"
                                         + (" and the ODE fit" if fitted else ""))
    try:
        forecasts, failed, flops, charged, heads = forecast_language_models(s, sel, source, adapters, tok, ledger, key, bar, device,
                                                            dtype)
        baselines, about = forecast_baselines(s, sel, bar)
        forecasts.update(baselines)
    finally:
        if bar is not None:
            bar.close()
    truth = {ctx: sel.values[:, ctx:ctx + s.horizon] for ctx in s.contexts}
    results = {"data": str(s.data), "split": s.split, "split_seed": s.split_seed, "systems": list(map(int, sel.systems)),
               "alpha": sel.alpha, "scale_from": s.scale_from, "contexts": s.contexts, "horizon": s.horizon,
               "model": s.model,
               "adapters": [str(a.adapter.directory) for a in adapters], "ledger_key": key,
               "encoding": s.encoding, "value_heads": heads,
               "decoding": {"samples": s.samples, "temperature": s.temperature,
                            "grammar": encoding_of(s.encoding).grammar_text(s.decimals)},
               "convention": ledger.convention, "flops": sum(flops.values()), "charged": charged, "baselines": about,
               "ode_fit": about.get("ode_fit", {}),
               "methods": score_methods(forecasts, truth, sel.alpha, s.contexts, failed, flops)}
    write_results(s, folder, sel, results, forecasts)
    return results


def write_results(s: EvalSettings, folder: EvalFolder, sel: Selection, results: dict, forecasts: dict) -> None:
    medians = {m: {ctx: fc[ctx].median() for ctx in s.contexts} for m, fc in forecasts.items()}
    arrays = {"systems": np.asarray(sel.systems), "time": sel.time,
              **{f"truth|{ctx}": sel.values[:, :ctx + s.horizon] for ctx in s.contexts},
              **{f"{m}|{ctx}": medians[m][ctx] for m in medians for ctx in s.contexts},
              **{f"{m}|{ctx}|q{q:g}": forecasts[m][ctx].quantile(q) for m in medians for ctx in s.contexts
                 for q in (0.05, 0.25, 0.75, 0.95) if not forecasts[m][ctx].point}}
    folder.write(results, results_markdown(results), arrays)
    plot_horizon(results, folder / folder.HORIZON_PLOT)
    plot_forecasts(sel.values, sel.time, forecasts, sel.systems, s.plots(len(sel.systems)), s.contexts, s.horizon,
                   folder / folder.FORECAST_PLOT, title=f"{s.model}, {s.split} systems of {Path(s.data).name}")
