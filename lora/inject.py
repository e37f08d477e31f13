"""Put LoRA layers into a loaded model, freeze the rest structurally, report what trains."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from qwen_min.errors import LoadError

from .layer import LoRALinear

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION + MLP
DEFAULT_TARGETS = ("q_proj", "v_proj")


def part_of(name: str) -> str:
    """The block's submodule that holds projection `name`: self_attn or mlp."""
    return "self_attn" if name in ATTENTION else "mlp"


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """'q_proj,v_proj' or a sequence -> a validated tuple in the canonical order."""
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    if not names:
        raise LoadError("no LoRA target modules given")
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise LoadError(f"unknown LoRA target module {unknown[0]!r}; expected some of {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in names)


def check_config(rank, alpha=None, dropout=0.0, name=lambda key: f"LoRA {key}") -> None:
    """Refuse a rank, alpha or dropout LoRA can't use; the message calls each value `name(key)`
    (train.py says `--rank`, a library call `LoRA rank`)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise LoadError(f"{name('rank')} must be a positive integer, got {rank!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                                  and math.isfinite(alpha) and alpha > 0):
        raise LoadError(f"{name('alpha')} must be positive, got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise LoadError(f"{name('dropout')} must be in [0, 1), got {dropout!r}")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Module name -> LoRALinear, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject(model, rank: int = 8, alpha: float | None = None, dropout: float = 0.0,
           targets: str | Iterable[str] = DEFAULT_TARGETS, verbose: bool = True):
    """Wrap the target projections of every block in LoRALinear; only the LoRA matrices stay trainable.

    Freezing is structural: every parameter is frozen, then exactly the lora_A and lora_B weights of
    the layers created here are unfrozen. Returns the model (modified in place).
    """
    check_config(rank, alpha, dropout)
    targets = parse_targets(targets)
    if lora_layers(model):
        raise LoadError("this model already has LoRA layers; load or inject adapters once")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.model.layers:
        for name in targets:
            parent = getattr(block, part_of(name))
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
    for layer in lora_layers(model).values():
        layer.lora_A.weight.requires_grad_(True)
        layer.lora_B.weight.requires_grad_(True)
    if verbose:
        print(summary(model))
    return model


def lora_config(model: nn.Module) -> dict | None:
    """{r, lora_alpha, lora_dropout, target_modules} of the model's LoRA layers (None without any),
    read from the layers themselves: `inject` gives every layer the same settings."""
    layers = list(lora_layers(model).values())
    if not layers:
        return None
    names = {name.rsplit(".", 1)[-1] for name in lora_layers(model)}
    first = layers[0]
    return {"r": first.rank, "lora_alpha": first.alpha, "lora_dropout": first.dropout,
            "target_modules": [t for t in TARGETS if t in names]}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def summary(model: nn.Module) -> str:
    """'LoRA r=8 on q_proj, v_proj: 540,672 trainable of 494,573,440 parameters (0.1093%)'."""
    trainable = sum(p.numel() for p in trainable_parameters(model))
    total = sum(p.numel() for p in model.parameters())
    cfg = lora_config(model)
    head = f"LoRA r={cfg['r']} on {', '.join(cfg['target_modules'])}" if cfg else "no LoRA"
    return f"{head}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.4%})"
