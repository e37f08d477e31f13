"""What a training process needs around its loop: the process group under torchrun (and every
process agreeing to stop), the learning-rate schedule, the random state a checkpoint keeps, and the
optional loggers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .errors import UsageError
from .settings import TrainSettings, as_config


def distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world


def all_agree(ok: bool, world: int, device) -> bool:
    """True only if every process says so: all stop together at the budget."""
    if world == 1:
        return ok
    flag = torch.tensor([int(ok)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def learning_rate(s: TrainSettings, step: int) -> float:
    """The learning rate at `step` (1-based): linear warm-up, then constant or cosine to zero."""
    if s.warmup and step <= s.warmup:
        return s.lr * step / s.warmup
    if s.schedule == "cosine":
        progress = (step - s.warmup) / max(1, s.max_steps - s.warmup)
        return s.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return s.lr


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_logger(s: TrainSettings, out: Path):
    """Optional TensorBoard or Weights & Biases logging; a clear error if asked for and not installed."""
    if s.log == "none":
        return None
    try:
        if s.log == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # optional: imported only when asked for

            writer = SummaryWriter(str(out / "tensorboard"))
            return lambda row: [writer.add_scalar(k, v, row["step"]) for k, v in row.items()
                                if k != "step" and v is not None] and writer.flush()
        import wandb  # optional: imported only when asked for

        run = wandb.init(project="qwen-min", name=s.name, config=as_config(s), dir=str(out))
        return lambda row: run.log({k: v for k, v in row.items() if v is not None}, step=row["step"])
    except ImportError:
        raise UsageError(f"--log {s.log}: the package is not installed (pip install "
                         f"{'tensorboard' if s.log == 'tensorboard' else 'wandb'})") from None
