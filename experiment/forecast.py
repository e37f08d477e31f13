"""Forecasts of a split's systems by the language model (under the number grammar) and by the
baselines, scored and written out: the work of eval.py.

    results = evaluate(EvalSettings(model="tiny-random", limit=8, out="runs/eval-tiny"))

For each context length the first `ctx` steps of each system are written as text (ending with ';'),
the model continues them for `horizon` steps, and the forecast is scored against the truth. Writes
results.json, results.md, mae_vs_horizon.png, forecasts.png and forecasts.npz to the output folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import lora
from data import decode, make_splits, prompt, scale_for, step_pattern
from data.baselines import LEVELS, PARROT_WINDOW, STATISTICAL, ode_fit, parroting, persistence, statistical
from data.encodings import jitter
from data.files import atomic_write, file_digest, write_text
from data.simulate import ensure_data
from flops import Convention, Ledger, get_convention
from qwen_min import PRESETS, device_and_dtype, generate, load_config, load_pretrained, load_tokenizer
from qwen_min.continuous import QwenForValueForecasting, ValueSpec, forecast_values
from qwen_min.hub import resolve_dir
from qwen_min.presets import is_preset
from qwen_min.weights import empty_model, model_encoding

from .costs import generation_bound
from .report import plot_forecasts, plot_horizon, results_markdown
from .scoring import Forecast, score_methods
from .runfolder import check_writable
from .settings import EvalSettings, UsageError


@dataclass
class Selection:
    """The systems an evaluation forecasts: their indices in the file, values (systems, points, 2) in
    original units, the time axis, and the split's scale alpha."""

    systems: list[int]
    values: np.ndarray
    time: np.ndarray
    alpha: float


def select(s: EvalSettings) -> Selection:
    """The split's first `limit` systems (every system of the file for split 'all'), after checking
    the settings against the file."""
    series = ensure_data(s.data)
    s.check(series.points)
    split = list(range(series.systems)) if s.split == "all" else make_splits(series.systems, seed=s.split_seed)[s.split]
    alpha = scale_for(series.trajectories[split])
    systems = split[: s.limit] if s.limit else split
    return Selection(systems, series.trajectories[systems].astype(np.float64), series.time, alpha)


def resolve_adapter(path: str) -> Path:
    """An adapter directory, or the adapter_best/ of a train.py run directory."""
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        return p
    if (p / "adapter_best" / "adapter_config.json").is_file():
        return p / "adapter_best"
    raise UsageError(f"--adapter {path}: no adapter_config.json there (nor in {p / 'adapter_best'})")


def adapter_label(path: Path) -> str:
    """`model+<run>` for a run's adapter_best/ or adapter_last/, else `model+<folder>`."""
    return "model+" + (path.parent.name if path.name in ("adapter_best", "adapter_last") else path.name)


def labelled_adapters(s: EvalSettings) -> list[tuple[str, Path]]:
    """(label, adapter folder) for every --adapter, each checked against the model's shapes before
    any work; two adapters that would share a label are told apart by their whole paths."""
    adapters = [resolve_adapter(p) for p in s.adapter]
    if len({p.resolve() for p in adapters}) < len(adapters):
        raise UsageError("--adapter: the same adapter is given twice")
    labels = [adapter_label(p) for p in adapters]
    labels = [label if labels.count(label) == 1 else f"model+{p}" for label, p in zip(labels, adapters)]
    for p in adapters:
        lora.check_adapter(empty_model(load_config(s.model, model_encoding(s.model, s.encoding)),
                                       lora.adapter_spec(p)), p)
    return list(zip(labels, adapters))


def run_encoding(adapter: Path) -> str | None:
    """The encoding recorded by the train.py run an adapter folder belongs to (its parent's
    config.json), or what the adapter itself shows (value layers: continuous); None if neither says."""
    config = adapter.parent / "config.json"
    if adapter.name in ("adapter_best", "adapter_last") and config.is_file():
        try:
            saved = json.loads(config.read_text()).get("encoding", "digits")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            saved = None
        if saved:
            return saved
    return "continuous" if lora.adapter_spec(adapter) else None


def resolve_encoding(s: EvalSettings, adapters: list[tuple[str, Path]]) -> str:
    """The encoding of the evaluation: --encoding, else what the model directory or the adapters'
    runs say, else the preset's default. Refuses a model and adapters (or --encoding) that disagree."""
    said = {f"--encoding {s.encoding}": s.encoding} if s.encoding else {}
    by_adapters = {f"--adapter {p}": run_encoding(p) for _, p in adapters}
    said.update({k: v for k, v in by_adapters.items() if v})
    model_reads = None if is_preset(s.model) else model_encoding(s.model)
    if model_reads and not (model_reads == "digits" and "continuous" in said.values()):
        said[f"--model {s.model}"] = model_reads  # (a language model's decoder may serve under value layers)
    kinds = set(said.values())
    if len(kinds) > 1:
        raise UsageError("the encodings disagree: " + ", ".join(f"{k} reads {v}" for k, v in said.items()))
    return kinds.pop() if kinds else model_encoding(s.model)  # a preset alone: its default


def model_digest(name: str) -> str:
    """What identifies a model's computation: a preset's name, else the SHA-256 of its config and weights."""
    if name in PRESETS:
        return name
    directory = resolve_dir(name)
    return digest_of([directory / "config.json", *sorted(directory.glob("*.safetensors"))])


def digest_of(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0" + file_digest(path).encode())
    return h.hexdigest()


def identity(s: EvalSettings, sel: "Selection", adapters: list[tuple[str, Path]]) -> str:
    """The ledger key of an evaluation: a digest of everything that decides what it computes (model
    and adapter files, data file, systems, contexts, horizon, samples, temperature, decimals, seed,
    batch size, dtype), not of where its results go."""
    what = {"model": model_digest(s.model), "data": file_digest(s.data), "systems": list(map(int, sel.systems)),
            "encoding": s.encoding,
            "adapters": [(label, digest_of([p / "adapter_config.json", p / "adapter_model.safetensors"]))
                         for label, p in adapters], "base": not s.no_base,
            "contexts": s.contexts, "horizon": s.horizon, "samples": s.samples, "temperature": s.temperature,
            "decimals": s.decimals, "seed": s.seed, "batch_size": s.batch_size, "dtype": s.dtype, "split": s.split}
    return "eval-" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


# --- the language model ----------------------------------------------------------------------------

def forecast_model(model, tok, values: np.ndarray, s: EvalSettings, alpha: float, convention: Convention,
                   bar=None, charge=None) -> tuple[dict, dict, float]:
    """Forecast samples {ctx: (systems, samples, horizon, 2)} in original units, steps that failed to
    parse {ctx: count}, and the FLOPs spent.

    Each generation batch holds `batch_size` systems with every context and every sample, so a
    system's shorter contexts and repeated samples share the prefill of its longest prompt.
    `charge(first, end, flops)` is called after each batch with the FLOPs it spent on systems
    first..end-1, so a run stopped part-way has charged what it computed.
    """
    if s.encoding == "continuous":
        return forecast_values_of(model, values, s, alpha, convention, bar, charge)
    pattern = step_grammar(tok, s)
    gen = torch.Generator().manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    preds = {ctx: [] for ctx in s.contexts}
    failed = {ctx: 0 for ctx in s.contexts}
    spent = 0.0
    for start in range(0, len(values), s.batch_size):
        batch = values[start:start + s.batch_size]
        jobs = [(v, ctx) for v in batch for ctx in s.contexts]
        prompts = [tok.encode(prompt(v, ctx, alpha, s.decimals)) for v, ctx in jobs for _ in range(s.samples)]
        stats = {}
        out = generate(model, prompts, s.horizon * len(pattern), pad_id=tok.pad_id or 0, pattern=pattern,
                       temperature=s.temperature, generator=gen, stats=stats, convention=convention.name)
        spent += stats["flops"]
        if charge is not None:
            charge(start, start + len(batch), stats["flops"])
        for j, (v, ctx) in enumerate(jobs):
            samples = np.stack([parse_forecast(tok.decode(ids), v, ctx, s, alpha, failed)
                                for ids in out[j * s.samples:(j + 1) * s.samples]])
            if s.encoding == "bins" and s.temperature > 0:  # a sampled bin is a sample within the bin
                samples = jitter(samples, alpha, s.decimals, rng)
            preds[ctx].append(samples)
        if bar is not None:
            bar.update(len(batch))
    return ({ctx: np.stack(p) for ctx, p in preds.items()},
            {ctx: f // s.samples for ctx, f in failed.items()}, spent)


def step_grammar(tok, s: EvalSettings) -> list[list[int]]:
    """The token ids allowed at each position of one time step: the digit text's characters
    (D . D D , D . D D ;) or, for bins, a value token, ',', a value token, ';'."""
    if s.encoding == "bins":
        values = sorted(tok.value_words.values())
        return [values, [tok.token_id(",")], values, [tok.token_id(";")]]
    return [[tok.token_id(ch) for ch in chars] for chars in step_pattern(s.decimals)]


def grammar_text(s: EvalSettings) -> str:
    """The grammar of a step as results.json says it: D a digit, V a value token, one step."""
    if s.encoding == "continuous":
        return "(prey, predator) values, one position per step"
    if s.encoding == "bins":
        return "V,V;"
    return "".join(c if len(c) == 1 else "D" for c in step_pattern(s.decimals))


def forecast_values_of(model, values: np.ndarray, s: EvalSettings, alpha: float, convention: Convention,
                       bar=None, charge=None) -> tuple[dict, dict, float]:
    """A continuous model's forecasts, as `forecast_model` returns them: each batch of systems is
    one prefill of its longest context's scaled values, shared by every context and sample, then a
    step at a time (a sample, or the mean when greedy); nothing can fail to parse."""
    gen = torch.Generator().manual_seed(s.seed)
    preds = {ctx: [] for ctx in s.contexts}
    spent = 0.0
    for start in range(0, len(values), s.batch_size):
        batch = values[start:start + s.batch_size]
        stats = {}
        series = torch.as_tensor(batch[:, :max(s.contexts)] / alpha, dtype=torch.float32).to(model.device)
        outs = forecast_values(model, series, s.horizon, s.contexts, s.samples, s.temperature, gen, stats,
                               convention.name)
        for ctx, out in zip(s.contexts, outs):
            preds[ctx].append(out.cpu().double().numpy() * alpha)
        spent += stats["flops"]
        if charge is not None:
            charge(start, start + len(batch), stats["flops"])
        if bar is not None:
            bar.update(len(batch))
    return {ctx: np.concatenate(p) for ctx, p in preds.items()}, {ctx: 0 for ctx in s.contexts}, spent


def parse_forecast(text: str, v: np.ndarray, ctx: int, s: EvalSettings, alpha: float, failed: dict) -> np.ndarray:
    """Generated text -> (horizon, 2) in original units; steps that did not parse are counted in
    failed[ctx] and filled with the last good step (none can fail under the grammar)."""
    steps, report = decode(text, alpha, s.decimals)
    failed[ctx] += s.horizon - min(report.recovered, s.horizon)
    steps = steps[:s.horizon]
    if len(steps) < s.horizon:
        fill = steps[-1:] if len(steps) else v[ctx - 1:ctx]
        steps = np.concatenate([steps, np.repeat(fill, s.horizon - len(steps), 0)])
    return steps


def forecast_language_models(s: EvalSettings, sel: Selection, adapters: list[tuple[str, Path]], tok, ledger: Ledger,
                             key: str, bar, device: torch.device, dtype: torch.dtype):
    """({label: forecasts}, {label: failed steps}, {label: FLOPs}) for the untuned model (unless
    --no-base) and each adapter, each charged to the ledger batch by batch, each refused before any
    FLOP if the ledger can't pay for its bound."""
    convention = get_convention(ledger.convention)
    forecasts, failed, flops = {}, {}, {}
    for label, adapter in ([] if (adapters and s.no_base) else [("model", None)]) + adapters:
        model = load_forecaster(s, adapter, device, dtype)
        need = generation_bound(model, tok, sel.values, s, sel.alpha, convention, s.encoding,
                                None if s.encoding == "continuous" else len(step_grammar(tok, s)))
        if not ledger.can_afford(need):
            raise UsageError(f"{s.ledger}: evaluating {label} needs up to {need:.3e} FLOPs, "
                             f"{ledger.refresh().remaining:.3e} remain")

        def charge(first, end, spent, label=label):  # one key per batch: a re-run charges only what was not
            ledger.charge(key, "eval", spent, name=s.ledger_name, tokens=0, steps=0, key=f"{label}|systems{first}-{end}")
        samples, failed[label], flops[label] = forecast_model(model, tok, sel.values, s, sel.alpha, convention, bar,
                                                             charge)
        forecasts[label] = {ctx: Forecast(samples[ctx]) for ctx in s.contexts}
        del model
    return forecasts, failed, flops


def load_forecaster(s: EvalSettings, adapter: Path | None, device, dtype):
    """The model to forecast with: --model in the evaluation's encoding, with the adapter loaded. A
    language model under a continuous adapter gets the adapter's value layers around its decoder."""
    spec = (lora.adapter_spec(adapter) if adapter is not None else None) or ValueSpec()
    model = load_pretrained(s.model, dtype=dtype, device=device, encoding=s.encoding, spec=spec)
    if s.encoding == "continuous" and not isinstance(model, QwenForValueForecasting):
        model = QwenForValueForecasting.from_decoder(model.model, model.config, spec,
                                                     torch.Generator().manual_seed(s.seed))  # seeded: an untuned base
    if adapter is not None:
        lora.load_adapter(model, adapter)
    return model.eval()


# --- baselines -------------------------------------------------------------------------------------

def _fit_one(job):
    """{ctx: forecast} for one system, and how many of its fits the bound stopped, and how many of
    those found nothing (persistence instead)."""
    time, series, ctxs, horizon, model, seed, evaluations = job
    out, warm, bounded, failed = {}, None, 0, 0
    for ctx in sorted(ctxs):
        report = {}
        out[ctx], params = ode_fit(time, series[:ctx], horizon, model=model, warm=warm, seed=seed,
                                   max_evaluations=evaluations, report=report)
        bounded += int(report.get("bounded", False))
        failed += int(not np.all(np.isfinite(params)))
        warm = params if model == "rosenzweig-macarthur" else None
    return out, (bounded, failed)


def forecast_ode(time, values, s: EvalSettings, bar=None) -> tuple[dict[int, np.ndarray], tuple[int, int]]:
    """The ODE fit's forecasts {ctx: (systems, horizon, 2)}, systems spread over `workers` processes,
    and the number of fits the bound stopped, and of those that fell back to persistence."""
    jobs = [(time, v.astype(np.float64), s.contexts, s.horizon, s.ode_model, s.seed, s.ode_evaluations)
            for v in values]
    workers = os.cpu_count() if s.workers is None else s.workers
    results = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(_fit_one, jobs):
                results.append(r)
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            results.append(_fit_one(job))
            if bar is not None:
                bar.update(1)
    counts = tuple(int(sum(c[i] for _, c in results)) for i in (0, 1))
    return {ctx: np.stack([r[ctx] for r, _ in results]) for ctx in s.contexts}, counts


def forecast_baselines(s: EvalSettings, sel: Selection, bar) -> tuple[dict, dict]:
    """The baselines' forecasts {method: {ctx: Forecast}}, and what the results say of each: persistence
    and the ODE fit are point forecasts; parroting gives `samples` samples from the nearest stretches;
    the statistical models give quantiles from their prediction intervals."""
    chosen, out, about = s.methods, {}, {}
    point = lambda fc: Forecast(fc[:, None])  # noqa: E731  (systems, horizon, 2) -> one sample
    if "persistence" in chosen:
        out["persistence"] = {ctx: point(np.stack([persistence(v[:ctx], s.horizon) for v in sel.values]))
                              for ctx in s.contexts}
    if "parroting" in chosen:
        out["parroting"] = {ctx: Forecast(np.stack([parroting(v[:ctx], s.horizon, s.samples) for v in sel.values]))
                            for ctx in s.contexts}
        about["parroting"] = {"window_steps": PARROT_WINDOW, "samples": s.samples, "rule": "nearest stretches of the context, "
                              "by Euclidean distance over both species; what followed each, copied"}
    names = tuple(m for m in STATISTICAL if m in chosen)
    for ctx in s.contexts if names else ():
        for name, quantiles in statistical(sel.values[:, :ctx], s.horizon, names).items():
            out.setdefault(name, {})[ctx] = Forecast(quantiles=quantiles, levels=LEVELS)
            about[name] = {"library": "statsforecast", "model": STATISTICAL[name], "season_length": 1,
                           "quantiles_from_intervals": list(LEVELS)}
    if "ode_fit" in chosen:
        fc, (bounded, fell_back) = forecast_ode(sel.time, sel.values, s, bar)
        out["ode_fit"] = {ctx: point(fc[ctx]) for ctx in s.contexts}
        about["ode_fit"] = {"model": s.ode_model, "rhs_evaluations_per_fit": s.ode_evaluations,
                            "fits": len(sel.values) * len(s.contexts), "fits_stopped_by_the_bound": bounded,
                            "fits_without_result_persistence_used": fell_back, "point_forecast": True}
    return out, about


# --- the whole evaluation --------------------------------------------------------------------------

def evaluate(s: EvalSettings) -> dict:
    """Forecast, score and write every output; returns results.json's content."""
    s.check()
    check_writable(Path(s.out))  # a file there, or a folder that can't be written, is refused before any FLOP
    sel = select(s)
    adapters = labelled_adapters(s)
    s = dataclasses.replace(s, encoding=resolve_encoding(s, adapters))
    s.check()
    device, dtype = device_and_dtype(s.device, s.dtype)
    tok = load_tokenizer(s.model, s.encoding)
    key = identity(s, sel, adapters)
    ledger = Ledger.open(s.ledger, s.budget, s.convention)
    n_models = len(adapters) + (0 if (adapters and s.no_base) else 1)
    bar = None if s.quiet else tqdm(total=n_models * len(sel.values) + (len(sel.values) if "ode_fit" in s.methods else 0),
                                    desc="systems", dynamic_ncols=True)
    try:
        forecasts, failed, flops = forecast_language_models(s, sel, adapters, tok, ledger, key, bar, device, dtype)
        baselines, about = forecast_baselines(s, sel, bar)
        forecasts.update(baselines)
    finally:
        if bar is not None:
            bar.close()
    truth = {ctx: sel.values[:, ctx:ctx + s.horizon] for ctx in s.contexts}
    results = {"data": str(s.data), "split": s.split, "split_seed": s.split_seed, "systems": list(map(int, sel.systems)),
               "alpha": sel.alpha, "contexts": s.contexts, "horizon": s.horizon, "model": s.model,
               "adapters": [str(p) for _, p in adapters], "ledger_key": key,
               "encoding": s.encoding,
               "decoding": {"samples": s.samples, "temperature": s.temperature, "grammar": grammar_text(s)},
               "convention": ledger.convention, "flops": sum(flops.values()), "baselines": about,
               "ode_fit": about.get("ode_fit", {}),
               "methods": score_methods(forecasts, truth, sel.alpha, s.contexts, failed, flops)}
    write_results(s, sel, results, forecasts)
    return results


def save_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: numpy would add ".npz" to a bare temporary name
        np.savez_compressed(f, **arrays)


def write_results(s: EvalSettings, sel: Selection, results: dict, forecasts: dict) -> None:
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    medians = {m: {ctx: fc[ctx].median() for ctx in s.contexts} for m, fc in forecasts.items()}
    arrays = {"systems": np.asarray(sel.systems), "time": sel.time,
              **{f"truth|{ctx}": sel.values[:, :ctx + s.horizon] for ctx in s.contexts},
              **{f"{m}|{ctx}": medians[m][ctx] for m in medians for ctx in s.contexts},
              **{f"{m}|{ctx}|q{q:g}": forecasts[m][ctx].quantile(q) for m in medians for ctx in s.contexts
                 for q in (0.05, 0.25, 0.75, 0.95) if not forecasts[m][ctx].point}}
    atomic_write(out / "forecasts.npz", lambda tmp: save_npz(tmp, arrays))
    write_text(out / "results.md", results_markdown(results))
    plot_horizon(results, out / "mae_vs_horizon.png")
    plot_forecasts(sel.values, sel.time, forecasts, sel.systems, s.plot_systems, s.contexts, s.horizon,
                   out / "forecasts.png", title=f"{s.model}, {s.split} systems of {Path(s.data).name}")
