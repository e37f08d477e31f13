"""The CUDA paths: a bf16 base with fp32 LoRA weights and optimizer state, the fused AdamW, flash
attention in the training step, batches through pinned memory, and a training run on CUDA charged
what the same run is charged on the CPU. Each skips on a machine without a CUDA device."""

from __future__ import annotations

import json

import pytest
import torch

import lora
import train
from experiment.models import optimizer, to_device
from experiment.speed import lora_training_step
from qwen_min import load_pretrained
from qwen_min.model import QwenForCausalLM, init_weights

from .conftest import tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@cuda
def test_the_forward_pass_on_cuda_equals_the_cpu_s():
    model = init_weights(QwenForCausalLM(tiny_config()), seed=0).eval()
    ids = torch.randint(0, 200, (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        on_cpu = model(ids)
        on_gpu = model.to(CUDA)(ids.to(CUDA)).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)


@cuda
def test_a_bf16_base_trains_fp32_adapters_with_fp32_state_and_the_fused_optimizer():
    model = load_pretrained("tiny-random", dtype=torch.bfloat16, device="cuda")
    step = lora_training_step(model, CUDA)
    ids = torch.randint(0, 200, (4, 64), generator=torch.Generator().manual_seed(0)).to(CUDA)
    first = step(ids).item()
    for _ in range(20):
        last = step(ids).item()
    assert last < first
    layers = lora.lora_layers(model)
    assert all(l.lora_A.weight.dtype == torch.float32 and l.lora_B.weight.dtype == torch.float32
               for l in layers.values())
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    opt = optimizer(lora.trainable_parameters(model), 1e-3, 0.0, CUDA)
    assert opt.defaults["fused"] is True


@cuda
def test_the_training_step_runs_on_flash_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = load_pretrained("tiny-random", dtype=torch.bfloat16, device="cuda")
    step = lora_training_step(model, CUDA)
    ids = torch.randint(0, 200, (2, 128), generator=torch.Generator().manual_seed(0)).to(CUDA)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises where the step's attention can't use flash
        assert torch.isfinite(step(ids))


@cuda
def test_batches_go_to_cuda_through_pinned_memory():
    batch = torch.arange(12).view(3, 4)
    moved = to_device(batch, CUDA)
    torch.cuda.synchronize()
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), batch)


@cuda
def test_a_training_run_on_cuda_is_charged_what_the_cpu_run_is(series_file, tmp_path):
    def run(device):
        out = tmp_path / device
        assert train.main(["--model", "tiny-random", "--data", str(series_file), "--chunk", "128", "--stride", "64",
                           "--val-limit", "3", "--max-steps", "4", "--eval-every", "2", "--device", device,
                           "--ledger", str(tmp_path / f"{device}.json"), "--out", str(out), "--quiet"]) == 0
        return json.loads((tmp_path / f"{device}.json").read_text()), json.loads((out / "summary.json").read_text())
    (cpu_ledger, cpu), (gpu_ledger, gpu) = run("cpu"), run("cuda")
    totals = [sum(e["flops"] for e in ledger["experiments"].values()) for ledger in (cpu_ledger, gpu_ledger)]
    assert totals[0] == totals[1] > 0  # FLOPs are the code's, not the device's
    assert gpu["steps"] == cpu["steps"] == 4
    assert abs(gpu["best_val_loss"] - cpu["best_val_loss"]) < 0.05  # bf16 on CUDA, fp32 here
