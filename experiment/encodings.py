"""How a series enters a model and comes back out: one object per encoding, chosen once by name
(`encoding_of`) and then only called. The rest of the library asks the object, never the name.

    Digits       LLMTIME text, a token per character: "0.68,0.75;" is 10 positions per time step
    Bins         the same text, a token per value (0.00 ... 9.99): 4 positions per time step
    Continuous   a position per time step: the scaled (prey, predator) pair through a linear input
                 layer, and a Gaussian mixture over the next step out (qwen_min.continuous)

An encoding owns: its defaults (window, stride) and checks; how a series becomes model inputs,
training windows and padded validation rows; the loss; which model it reads (and how it makes one
from a language model); which layers train beside LoRA; a forecast of a batch of systems with the
FLOPs it spent, and the bound of those FLOPs before any is spent. Adding an encoding is one class
here and one line in ENCODINGS (and, for a new vocabulary, its presets in qwen_min.presets).

The encodings take plain values (a Tokenizer, arrays, a ForecastTask); they never read settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import lora
from data import decode, make_windows, prompt, step_pattern
from data.encodings import jitter
from data.windows import IGNORE, make_value_windows, tokenize_series
from flops import Convention, Cost
from qwen_min import generate
from qwen_min.continuous import QwenForValueForecasting, ValueSpec, forecast_values, value_loss
from qwen_min.loss import lm_loss

from .errors import UsageError

TOKEN_CHUNK = 512  # default training window in tokens (the report's)
CONTINUOUS_CHUNK = 100  # default training window in time steps: a whole series


@dataclass(frozen=True)
class ForecastTask:
    """What a forecast is asked for: every context length (time steps) of each system, `horizon`
    steps ahead, `samples` times at `temperature` (0: greedy), values written with `decimals`."""

    contexts: list[int]
    horizon: int
    samples: int = 1
    temperature: float = 0.0
    decimals: int = 2


class Encoding:
    """The token encodings' shared behaviour (text through a tokenizer, an LM head); see the module."""

    name = ""
    loss_label = "cross-entropy (nats/token)"
    window_key = "input_ids"
    default_chunk = TOKEN_CHUNK
    trained_layers: tuple[str, ...] = ()  # trained in full beside LoRA
    serves_models_of: tuple[str, ...] = ()  # other encodings whose models this one can read (by wrapping them)

    def default_stride(self, chunk: int) -> int:
        """The reference report's window overlap (stride 268 at chunk 512) at another chunk size."""
        return max(1, round(chunk * 268 / 512))

    def check(self, decimals: int) -> None:
        """What this encoding needs of the other settings."""

    def spec(self, components: int, space: str, steps: int, inputs: str = "level") -> ValueSpec | None:
        """The head a model of this encoding has: None, an LM head over the vocabulary."""
        return None

    def top(self, alpha: float, decimals: int) -> float:
        """The largest value (original units) a training series may hold: the text's, one digit before the point."""
        return alpha * (10 - 10.0 ** -decimals)

    def run_suffix(self, spec: ValueSpec | None) -> str:
        """What a default run name says of the encoding (nothing for the report's digits)."""
        return f"-{self.name}"

    # --- the model it reads ------------------------------------------------------------------------
    def check_model(self, source, spec: ValueSpec | None) -> None:
        """Refuse a model (a qwen_min.ModelSource) that can't be read in this encoding, before it is
        loaded. A preset comes in every encoding; a directory reads its own."""
        found = None if source.preset else source.encoding
        if found is not None and found != self.name and found not in self.serves_models_of:
            raise self.refusal(source, found)
        tok, config = source.tokenizer(self.name), source.config(self.name)
        if tok.vocab_size > config.vocab_size:
            raise UsageError(f"--model {source.name}: its vocabulary ({config.vocab_size}) is smaller than its "
                             f"tokenizer's ({tok.vocab_size} tokens)")

    def refusal(self, source, found: str) -> UsageError:
        return UsageError(f"--model {source.name} reads {found}, not --encoding {self.name}")

    def prepare(self, model, spec: ValueSpec | None, generator: torch.Generator):
        """The model this encoding computes with, made from a loaded (or meta) one."""
        return model

    # --- training ----------------------------------------------------------------------------------
    def inputs(self, values: np.ndarray, alpha: float, tok, decimals: int) -> list:
        """Each system's whole series (systems, points, 2) as the model reads it: token ids of its text."""
        return tokenize_series(values, alpha, tok.encode, decimals)

    def check_chunk(self, chunk: int, tok, decimals: int) -> None:
        value = "9." + "9" * decimals
        step_tokens = len(tok.encode(f"{value},{value};"))
        if chunk < step_tokens:
            raise UsageError(f"--chunk {chunk} is smaller than one time step of text ({step_tokens} tokens)")

    def windows(self, inputs: list, chunk: int, stride: int, pad_id: int) -> dict[str, torch.Tensor]:
        """Training windows of `chunk` positions every `stride`: input_ids, labels, attention_mask (N, chunk)."""
        return make_windows(inputs, chunk, stride, pad_id=pad_id)

    def pad(self, rows: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole series of different lengths as one batch, padded on the right: (input_ids, labels),
        each (rows, longest); the padding's labels are IGNORE."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, :len(r)] = labels[j, :len(r)] = torch.tensor(r)
        return ids, labels

    def loss(self, model, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Next-token cross-entropy (nats/token) and the positions it scored."""
        return lm_loss(model, inputs, labels)

    # --- forecasting -------------------------------------------------------------------------------
    def step_positions(self, decimals: int) -> int:
        """Positions one time step takes."""
        return len(step_pattern(decimals))

    def grammar(self, tok, decimals: int) -> list[list[int]]:
        """The token ids allowed at each position of one time step: D . D D , D . D D ;"""
        return [[tok.token_id(ch) for ch in chars] for chars in step_pattern(decimals)]

    def grammar_text(self, decimals: int) -> str:
        """The grammar of a step as results.json says it (D: a digit)."""
        return "".join(c if len(c) == 1 else "D" for c in step_pattern(decimals))

    def bound(self, model, tok, values: np.ndarray, alpha: float, task: ForecastTask, convention: Convention) -> float:
        """An upper bound of the FLOPs of forecasting `values` (systems, points, 2): every prompt and
        forecast position through the body, the head at every generated position, for every context
        and sample."""
        generated = task.horizon * self.step_positions(task.decimals)
        total = 0.0
        for ctx in task.contexts:
            for v in values:
                length = len(tok.encode(prompt(v, ctx, alpha, task.decimals)))
                total += model.flops(length + generated, convention, head_positions=generated).forward * task.samples
        return total

    def forecast(self, model, tok, values: np.ndarray, alpha: float, task: ForecastTask, convention: Convention,
                 gen: torch.Generator, rng: np.random.Generator) -> tuple[dict, dict, Cost]:
        """Forecast samples {ctx: (systems, samples, horizon, 2)} in original units of one batch of
        systems, steps that failed to parse {ctx: count over all samples}, and what was computed
        (the modules' own forward Cost: its FLOPs, and their linear-layer part). One
        generation call holds every system, context and sample, so a system's shorter contexts and
        repeated samples share the prefill of its longest prompt."""
        pattern = self.grammar(tok, task.decimals)
        jobs = [(v, ctx) for v in values for ctx in task.contexts]
        prompts = [tok.encode(prompt(v, ctx, alpha, task.decimals)) for v, ctx in jobs for _ in range(task.samples)]
        out = generate(model, prompts, task.horizon * len(pattern), pad_id=tok.pad_id or 0, pattern=pattern,
                       temperature=task.temperature, generator=gen, convention=convention.name)
        preds = {ctx: [] for ctx in task.contexts}
        failed = {ctx: 0 for ctx in task.contexts}
        for j, (v, ctx) in enumerate(jobs):
            texts = [tok.decode(ids) for ids in out[j * task.samples:(j + 1) * task.samples]]
            samples = np.stack([self.parse(text, v[ctx - 1:ctx], alpha, task, failed, ctx) for text in texts])
            preds[ctx].append(self.drawn(samples, alpha, task, rng))
        return {ctx: np.stack(p) for ctx, p in preds.items()}, failed, out.cost

    def parse(self, text: str, last: np.ndarray, alpha: float, task: ForecastTask, failed: dict, ctx: int) -> np.ndarray:
        """Generated text -> (horizon, 2) in original units; steps that did not parse are counted in
        failed[ctx] and filled with the last good step (`last`, the context's, when none is)."""
        steps, report = decode(text, alpha, task.decimals)
        failed[ctx] += task.horizon - min(report.recovered, task.horizon)
        steps = steps[:task.horizon]
        if len(steps) < task.horizon:
            fill = steps[-1:] if len(steps) else last
            steps = np.concatenate([steps, np.repeat(fill, task.horizon - len(steps), 0)])
        return steps

    def drawn(self, samples: np.ndarray, alpha: float, task: ForecastTask, rng: np.random.Generator) -> np.ndarray:
        """The samples as forecast values (a digit text's value is the value itself)."""
        return samples


class Digits(Encoding):
    name = "digits"

    def run_suffix(self, spec: ValueSpec | None) -> str:
        return ""


class Bins(Encoding):
    """The digits' text read a value per token: the scale and windows are the digits', the grammar
    is value , value ; and a sampled bin is a sample within the bin."""

    name = "bins"

    def check(self, decimals: int) -> None:
        if decimals != 2:
            raise UsageError(f"--encoding bins: the value vocabulary is 0.00 to 9.99, so --decimals must be 2, "
                             f"got {decimals}")

    def refusal(self, source, found: str) -> UsageError:
        return UsageError(f"--encoding bins needs a preset (scratch-*, tiny-random) or a model trained with bins: "
                          f"{source.name} reads {found}, its vocabulary has no value tokens")

    def step_positions(self, decimals: int) -> int:
        return 4

    def grammar(self, tok, decimals: int) -> list[list[int]]:
        values = sorted(tok.value_words.values())
        return [values, [tok.token_id(",")], values, [tok.token_id(";")]]

    def grammar_text(self, decimals: int) -> str:
        return "V,V;"

    def drawn(self, samples: np.ndarray, alpha: float, task: ForecastTask, rng: np.random.Generator) -> np.ndarray:
        return jitter(samples, alpha, task.decimals, rng) if task.temperature > 0 else samples


class Continuous(Encoding):
    """Values in, a Gaussian mixture out; a language model's decoder can be read this way under new
    value layers, which then train in full beside its LoRA matrices."""

    name = "continuous"
    loss_label = "negative log-likelihood (nats/step)"
    window_key = "values"
    default_chunk = CONTINUOUS_CHUNK
    trained_layers = lora.VALUE_LAYERS
    serves_models_of = ("digits",)

    def default_stride(self, chunk: int) -> int:
        return chunk

    def spec(self, components: int, space: str, steps: int, inputs: str = "level") -> ValueSpec:
        return ValueSpec(components, space, steps, inputs)

    def top(self, alpha: float, decimals: int) -> float:
        return float("inf")  # a value is a value: no vocabulary to stay within

    def run_suffix(self, spec: ValueSpec | None) -> str:
        """A head other than the default's says so, so that runs of both don't share a folder."""
        default = ValueSpec()
        return (f"-{self.name}" + ("" if spec.space == default.space else f"-{spec.space}")
                + ("" if spec.components == default.components else f"-k{spec.components}")
                + ("" if spec.steps == default.steps else f"-h{spec.steps}")
                + ("" if spec.inputs == default.inputs else f"-{spec.inputs}"))

    def check_model(self, source, spec: ValueSpec | None) -> None:
        saved = source.spec  # a preset's is built as asked
        if saved is not None and saved != spec:
            raise UsageError(f"--model {source.name} is a continuous model of {saved.components} component(s) in "
                             f"{saved.space} space over {saved.steps} step(s) reading {saved.inputs} inputs; give "
                             f"--components {saved.components} --value-space {saved.space} --head-steps {saved.steps} "
                             f"--value-inputs {saved.inputs}")
        found = None if source.preset else source.encoding
        if found is not None and found != self.name and found not in self.serves_models_of:
            raise self.refusal(source, found)

    def prepare(self, model, spec: ValueSpec | None, generator: torch.Generator):
        """A language model gets new value layers around its decoder (initialised from `generator`)."""
        if isinstance(model, QwenForValueForecasting):
            return model
        return QwenForValueForecasting.from_decoder(model.model, model.config, spec or ValueSpec(), generator)

    def inputs(self, values: np.ndarray, alpha: float, tok, decimals: int) -> list:
        """Each system's values divided by alpha, float32 (points, 2)."""
        return [np.asarray(v / alpha, dtype=np.float32) for v in values]

    def check_chunk(self, chunk: int, tok, decimals: int) -> None:
        pass  # a time step is one position

    def windows(self, inputs: list, chunk: int, stride: int, pad_id: int) -> dict[str, torch.Tensor]:
        """values (N, chunk, 2) and labels (N, chunk): 0 at a real step, IGNORE at padding."""
        return make_value_windows(inputs, chunk, stride)

    def pad(self, rows: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        values = torch.zeros((len(rows), width, 2))
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for j, r in enumerate(rows):
            values[j, :len(r)] = torch.as_tensor(r)
            labels[j, :len(r)] = 0
        return values, labels

    def loss(self, model, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The next step's negative log-likelihood (nats/step) and the steps it scored."""
        return value_loss(model, inputs, labels)

    def step_positions(self, decimals: int) -> int:
        return 1

    def grammar(self, tok, decimals: int) -> list[list[int]]:
        return []  # values, not tokens: nothing to restrict

    def grammar_text(self, decimals: int) -> str:
        return "(prey, predator) values, one position per step"

    def bound(self, model, tok, values: np.ndarray, alpha: float, task: ForecastTask, convention: Convention) -> float:
        """Each series' longest context once, then every context's steps for every sample."""
        prefill = model.flops(max(task.contexts), convention, head_positions=0).forward
        steps = sum(model.flops(task.horizon, convention, past=ctx, head_positions=task.horizon).forward
                    for ctx in task.contexts)
        return (prefill + steps * task.samples) * len(values)

    def forecast(self, model, tok, values: np.ndarray, alpha: float, task: ForecastTask, convention: Convention,
                 gen: torch.Generator, rng: np.random.Generator) -> tuple[dict, dict, Cost]:
        """One prefill of the batch's longest context of scaled values, shared by every context and
        sample, then a step at a time (a sample, or the mean when greedy); nothing can fail to parse."""
        series = torch.as_tensor(values[:, :max(task.contexts)] / alpha, dtype=torch.float32).to(model.device)
        outs = forecast_values(model, series, task.horizon, task.contexts, task.samples, task.temperature, gen,
                               convention.name)
        samples = {ctx: out.cpu().double().numpy() * alpha for ctx, out in zip(task.contexts, outs)}
        return samples, {ctx: 0 for ctx in task.contexts}, outs.cost


ENCODINGS: dict[str, Encoding] = {e.name: e for e in (Digits(), Bins(), Continuous())}


def encoding_of(name: str) -> Encoding:
    """The encoding called `name`: the one place the name is read."""
    if name not in ENCODINGS:
        raise UsageError(f"unknown encoding {name!r}; expected one of {', '.join(ENCODINGS)}")
    return ENCODINGS[name]


def adapter_encoding(adapter: lora.Adapter) -> str | None:
    """What an adapter's own files show of its encoding: the encoding whose layers it keeps in full
    (a continuous model's value layers), or None (a language model's: digits or bins alike)."""
    saved = set(adapter.config["modules_to_save"])
    return next((e.name for e in ENCODINGS.values() if saved and saved == set(e.trained_layers)), None)
