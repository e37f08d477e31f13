"""What training will cost, in FLOPs, from the modules' own `flops()`: a step, a validation pass, and
a whole run within a budget. Planning counts the run's own model built on the meta device (no
memory, no weights read); charging uses the same functions on the model that runs. (What a
forecast costs is its encoding's: `Encoding.bound` before, the forecast's own count after.)
"""

from __future__ import annotations

import torch

from data.windows import IGNORE
from flops import Convention, Cost, get_convention
from qwen_min import ModelSource

from .encodings import Encoding
from .models import META, run_model


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


def planned_run(s, source: ModelSource, encoding: Encoding, val_ids: list, convention: str) -> tuple[float, float]:
    """(FLOPs of one full step, FLOPs of one validation pass) for a run of settings `s`, counted on
    the run's own model built on the meta device."""
    model = run_model(s, source, encoding, META, torch.float32)
    conv = get_convention(convention)
    return full_step_cost(model, conv, s.chunk, s.batch_size), val_cost(model, conv, val_ids)
