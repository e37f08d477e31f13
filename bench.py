"""Side-by-side timings of qwen_min against transformers on the same full-size random weights.

    python bench.py                  # forward, batch 1 x 512 tokens, fp32 on the CPU, median of 3
    python bench.py --runs 5 --seq-len 256
    python bench.py --device cuda --dtype bf16

Both models are built in one process from one safetensors directory of random weights (Qwen2.5-0.5B's
shape unless --layers says otherwise); runs alternate ours/theirs so drift in the machine hits both.
Prints seconds per workload, the ratio ours/theirs (below 1 means we are faster), and achieved
GFLOP/s from the exact FLOP count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from qwen_min import QwenConfig, QwenForCausalLM, init_weights, load_pretrained, parse_dtype, save_pretrained


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(ours, theirs, runs: int, device: str) -> tuple[float, float]:
    """Warm both once, then alternate A/B `runs` times; medians in seconds."""
    ours(), theirs()
    a, b = [], []
    for _ in range(runs):
        a.append(timed(ours, device))
        b.append(timed(theirs, device))
    return statistics.median(a), statistics.median(b)


def build_pair(layers: int, dtype: torch.dtype, device: str):
    from transformers import Qwen2ForCausalLM

    config = QwenConfig(num_hidden_layers=layers)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(init_weights(QwenForCausalLM(config), seed=0), d)
        ours = load_pretrained(d, dtype=dtype, device=device)
        theirs = Qwen2ForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    return ours, theirs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=512, help="tokens per forward pass (default 512)")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each model (median reported)")
    p.add_argument("--layers", type=int, default=24, help="decoder blocks (24 is Qwen2.5-0.5B)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = parse_dtype(args.dtype)
    print(f"# device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} cpus={os.cpu_count()}", flush=True)
    ours, theirs = build_pair(args.layers, dtype, args.device)
    ids = torch.randint(0, 151_000, (1, args.seq_len), generator=torch.Generator().manual_seed(0)).to(args.device)

    with torch.inference_mode():
        same = (ours(ids).float() - theirs(input_ids=ids).logits.float()).abs().max().item()
        t_ours, t_theirs = alternate(lambda: ours(ids), lambda: theirs(input_ids=ids), args.runs, args.device)
    flops = forward_flops(ours.config, args.seq_len)
    print(f"{'workload':<28}{'ours s':>10}{'theirs s':>10}{'ratio':>8}{'ours GFLOP/s':>14}")
    print(f"{f'forward 1x{args.seq_len}':<28}{t_ours:>10.3f}{t_theirs:>10.3f}{t_ours / t_theirs:>8.3f}"
          f"{flops / t_ours / 1e9:>14.1f}")
    print(f"# max |logits difference| = {same:.2e}")
    print(f"ratios forward={t_ours / t_theirs:.3f}")
    return 0


def forward_flops(config: QwenConfig, T: int) -> float:
    """2 FLOPs per multiply-add of every matmul in one forward pass (causal attention halved)."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    hq, hk, e = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    linear = d * (hq * e) + 2 * d * (hk * e) + (hq * e) * d + 3 * d * f
    attention = 2 * hq * e * T * (T + 1) / 2 * 2  # QK^T and AV over the causal triangle
    return L * (2 * linear * T + attention) + 2 * d * config.vocab_size * T


if __name__ == "__main__":
    sys.exit(main())
