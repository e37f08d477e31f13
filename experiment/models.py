"""The one door to the model a unit of work computes with: a training run's (`run_model`) and an
evaluation's (`forecast_model`). On the meta device the same builders give the same network with
no memory and no weights read, so what a plan or a sweep counts is the model that will run.

Each rule is written here once: --full trains every weight, else LoRA (fp32 adapters, seeded) on
the targets, and the encoding's own layers train in full beside it; an encoding may wrap a language
model (the continuous one gives its decoder new value layers, seeded). `meta_model` is the bare
full-size network with LoRA, for the per-component FLOPs table.
"""

from __future__ import annotations

import torch

import lora
from qwen_min import ModelSource, QwenConfig, QwenForCausalLM, QwenForValueForecasting, ValueSpec
from qwen_min.weights import empty_model

from .encodings import Encoding

META = torch.device("meta")


def base_model(source: ModelSource, encoding: Encoding, spec: ValueSpec | None, device, dtype,
               generator: torch.Generator):
    """The source's network read in `encoding`: with its weights (in `dtype`, default fp32), or its
    shape alone on the meta device."""
    if torch.device(device) == META:
        model = source.empty(encoding.name, spec)
    else:
        model = source.load(dtype=dtype or torch.float32, device=device, encoding=encoding.name, spec=spec)
    return encoding.prepare(model, spec, generator)


def run_model(s, source: ModelSource, encoding: Encoding, device, dtype):
    """The model of a training run of settings `s` (a TrainSettings): every weight trainable with
    --full; else LoRA of `s.rank` on `s.targets` in fp32 and the encoding's own layers, in fp32,
    trained in full. `s.seed` draws the encoding's new layers, then the LoRA matrices."""
    gen = torch.Generator().manual_seed(s.seed)
    model = base_model(source, encoding, s.spec, device, dtype, gen)
    if s.full:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    add_lora(model, s.rank, s.targets, s.alpha, s.dropout, gen)
    for name in encoding.trained_layers:
        getattr(model, name).float().requires_grad_(True)
    return model


def add_lora(model, rank: int, targets, alpha: float | None = None, dropout: float = 0.0,
             generator: torch.Generator | None = None):
    """LoRA of `rank` on `targets` injected into `model` as a training run trains it: in fp32 even on
    a bf16 base, its matrices drawn from `generator` (when given) after the cast."""
    lora.inject(model, rank=rank, alpha=alpha, dropout=dropout, targets=targets, verbose=False)
    for layer in lora.lora_layers(model).values():
        layer.lora_A.float()
        layer.lora_B.float()
        if generator is not None:
            layer.reset_lora(generator=generator)
    return model


def forecast_model(source: ModelSource, encoding: Encoding, seed: int, device, dtype,
                   adapter: lora.Adapter | None = None, rank: int = 0, targets=lora.DEFAULT_TARGETS):
    """The model an evaluation forecasts with: the source read in `encoding`, with `adapter` loaded
    (its value layers around a language model's decoder, when it has them). A model with no adapter
    of its own gets new layers drawn from `seed` (an untuned base). On the meta device, LoRA of
    `rank` on `targets` stands in for an adapter not trained yet. In eval mode."""
    spec = (adapter.spec if adapter is not None else None) or ValueSpec()
    model = base_model(source, encoding, spec, device, dtype, torch.Generator().manual_seed(seed))
    if adapter is not None:
        lora.load_adapter(model, adapter.directory)
    elif rank:
        lora.inject(model, rank=rank, targets=targets, verbose=False)
    return model.eval()


def meta_model(config: QwenConfig | None = None, rank: int = 0, targets=lora.DEFAULT_TARGETS,
               spec: ValueSpec | None = None) -> QwenForCausalLM | QwenForValueForecasting:
    """The full-size model (or `config`) on the meta device, with LoRA injected when rank > 0: no memory.
    With `spec`, the continuous model of that head."""
    model = empty_model(config or QwenConfig(), spec)
    if rank:
        lora.inject(model, rank=rank, targets=targets, verbose=False)
    return model


# --- how a training step runs on its device ----------------------------------------------------------

def optimizer(params: list, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable `params`, its state in their dtype (fp32 for LoRA and value layers,
    even on a bf16 base); on CUDA the fused kernel (one launch for every parameter)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if device.type == "cuda" else None)


def autocast(device: torch.device, dtype: torch.dtype):
    """The step's autocast context: bf16 matmuls on CUDA with a bf16 base (the fp32 adapters' too),
    nothing elsewhere."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on the step's device; to CUDA through pinned memory, without waiting for the copy."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)
