"""How fast a LoRA step runs on a device: the step as train.py takes it, timed by the device's own
clock, and its model FLOPs utilisation against the chip's bf16 peak. Used by bench.py and by the
GPU check (gpu_check.py), so both time the same step the same way.
"""

from __future__ import annotations

import time

import torch

import lora
from flops import EXACT
from qwen_min import QwenConfig, QwenForCausalLM, init_weights
from qwen_min.loss import lm_loss

from .models import add_lora, autocast, optimizer

# dense bf16 tensor-core peak, FLOP/s, by a name torch.cuda.get_device_name() contains (the vendors' sheets)
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str | torch.device) -> float:
    """Seconds `fn` takes: between two CUDA events on a GPU (the device's own clock), else the wall clock."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def chip_peak(device: str | torch.device) -> tuple[str, float | None]:
    """(the device's name, its dense bf16 peak in FLOP/s, None where not known)."""
    if torch.device(device).type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(torch.device(device))
    return name, next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def lora_training_step(model, device: str | torch.device, rank: int = 8, targets=("q_proj", "v_proj"),
                       lr: float = 1e-4):
    """Inject LoRA into `model` as a training run does (fp32 adapters, whatever the base's dtype)
    and return `step(ids)`: one AdamW step (the trainer's optimizer and autocast) on token ids
    (B, T) that are their own labels, returning the loss."""
    dev = torch.device(device)
    add_lora(model, rank, targets)
    opt = optimizer(lora.trainable_parameters(model), lr, 0.0, dev)
    dtype = next(model.parameters()).dtype

    def step(ids):
        model.train()
        with autocast(dev, dtype):
            loss, _ = lm_loss(model, ids, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def batch_sweep(config: QwenConfig, device: str, dtype: torch.dtype, seq_len: int, batches: list[int],
                runs: int = 3, gain: float = 0.03) -> list[dict]:
    """A LoRA step's speed on random weights of `config` at each batch size of `batches` (x
    `seq_len` tokens), in order, until the FLOP/s rises by less than `gain` (a share) from one
    size to the next or memory runs out: per size, the median seconds, tokens/s, FLOP/s (exact
    convention), MFU against the chip's bf16 peak and the peak memory (CUDA)."""
    model = init_weights(QwenForCausalLM(config), seed=0).to(device=device, dtype=dtype)
    step = lora_training_step(model, device)
    _, peak = chip_peak(device)
    rows, gen = [], torch.Generator().manual_seed(0)
    for batch in batches:
        ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=gen).to(device)
        try:
            if torch.device(device).type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step(ids)
            seconds = sorted(timed(lambda: step(ids), device) for _ in range(runs))[runs // 2]
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "out_of_memory": True})
            break
        flops = batch * model.flops(seq_len, EXACT, head_positions=seq_len - 1).training
        rows.append({"batch": batch, "seq_len": seq_len, "seconds": seconds, "tokens_per_s": batch * seq_len / seconds,
                     "flops_per_s": flops / seconds, "mfu": flops / seconds / peak if peak else None,
                     "peak_memory": torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None})
        if len(rows) > 1 and rows[-1]["flops_per_s"] < (1 + gain) * rows[-2]["flops_per_s"]:
            break
    return rows
