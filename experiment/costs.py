"""What work will cost, in FLOPs, from the modules' own `flops()`: a training step, a validation pass,
a whole run within a budget, and an evaluation's generation. Planning uses a model on the meta
device (no memory, no weights read); charging uses the same functions on the model that runs.
"""

from __future__ import annotations

import torch

import lora
from data import prompt, step_pattern
from data.windows import IGNORE
from flops import Convention, Cost, get_convention
from qwen_min import QwenConfig, QwenForCausalLM
from qwen_min.continuous import QwenForValueForecasting, ValueSpec
from qwen_min.weights import empty_model

from .settings import requested_spec


def meta_model(config: QwenConfig | None = None, rank: int = 0, targets=lora.DEFAULT_TARGETS,
               spec: ValueSpec | None = None) -> QwenForCausalLM | QwenForValueForecasting:
    """The full-size model (or `config`) on the meta device, with LoRA injected when rank > 0: no memory.
    With `spec`, the continuous model of that head."""
    model = empty_model(config or QwenConfig(), spec)
    with torch.device("meta"):
        if rank:
            lora.inject(model, rank=rank, targets=targets, verbose=False)
    return model


# --- training --------------------------------------------------------------------------------------

def step_cost(model, convention: Convention, chunk: int, labels: torch.Tensor) -> Cost:
    """FLOPs of one training step on these windows (labels (rows, chunk)): every window's tokens,
    padding included, through the body; the LM head and softmax on its labelled positions only."""
    positions = (labels[:, 1:] != IGNORE).sum(1).tolist()
    return sum(model.flops(chunk, convention, head_positions=k) for k in positions)


def full_step_cost(model, convention: Convention, chunk: int, batch: int) -> float:
    """Training FLOPs of a step of `batch` windows with no padding: the dearest step a run can take."""
    return step_cost(model, convention, chunk, torch.zeros(batch, chunk, dtype=torch.long)).training


def val_cost(model, convention: Convention, val_ids: list[list[int]]) -> float:
    """Forward FLOPs of one validation pass over whole series (the head on every position but the last)."""
    return sum(model.flops(len(ids), convention, head_positions=len(ids) - 1).forward for ids in val_ids)


def evaluations(max_steps: int, eval_every: int) -> int:
    """Validation passes a run of max_steps makes (every eval_every steps and at the end)."""
    return max_steps // eval_every + (max_steps % eval_every != 0)


def run_cost(steps: int, step: float, val: float, eval_every: int) -> float:
    """FLOPs of a run of `steps` full steps with its validation passes."""
    return steps * step + evaluations(steps, eval_every) * val


def affordable_steps(budget: float, step: float, val: float, eval_every: int) -> int:
    """Most steps a run can take within `budget` FLOPs, its validation passes included."""
    k = max(0, int((budget - val) // (step + val / eval_every)))  # near the answer: validation spread over steps
    while k > 0 and run_cost(k, step, val, eval_every) > budget:
        k -= 1
    while run_cost(k + 1, step, val, eval_every) <= budget:
        k += 1
    return k


def planned_run(s, config: QwenConfig, val_ids: list[list[int]], convention: str) -> tuple[float, float]:
    """(FLOPs of one full step, FLOPs of one validation pass) for a run of settings `s`, planned on
    the meta device."""
    model = meta_model(config, rank=0 if s.full else s.rank, targets=lora.parse_targets(s.targets),
                       spec=requested_spec(s))
    for name in lora.VALUE_LAYERS if s.encoding == "continuous" else ():
        getattr(model, name).requires_grad_(True)
    if s.full:
        for p in model.parameters():
            p.requires_grad_(True)
    conv = get_convention(convention)
    return full_step_cost(model, conv, s.chunk, s.batch_size), val_cost(model, conv, val_ids)


# --- evaluation ------------------------------------------------------------------------------------

def generation_bound(model, tok, values, s, alpha: float, convention: Convention, encoding: str = "digits",
                     step_positions: int | None = None) -> float:
    """An upper bound of one model's generation FLOPs for evaluation settings `s` on `values`
    (systems, points, 2): every prompt and forecast position through the body, and the head (full
    vocabulary, or the value head) at every generated position, for every context and sample.
    `step_positions`: tokens per time step (default: the digit text's); a continuous model has one,
    and computes each series' longest context once for all its contexts and samples."""
    total = 0.0
    if encoding == "continuous":
        prefill = model.flops(max(s.contexts), convention, head_positions=0).forward
        steps = sum(model.flops(s.horizon, convention, past=ctx, head_positions=s.horizon).forward for ctx in s.contexts)
        return (prefill + steps * s.samples) * len(values)
    generated = s.horizon * (step_positions or len(step_pattern(s.decimals)))
    for ctx in s.contexts:
        for v in values:
            length = len(tok.encode(prompt(v, ctx, alpha, s.decimals)))
            total += model.flops(length + generated, convention, head_positions=generated).forward * s.samples
    return total
