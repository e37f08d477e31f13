"""qwen_min against transformers (+ peft) on the same full-size random weights, side by side.

    python bench.py                          # all workloads, fp32 on the CPU (takes a while)
    python bench.py --quick                  # smaller batches and fewer runs: a few minutes on the CPU
    python bench.py --device cuda --dtype bf16 [--compile]
    python bench.py --only forward --runs 5

Workloads (ours, theirs; alternating A/B, median of --runs):
  forward  one forward pass, batch 1 x --seq-len tokens, full logits;
  train    one LoRA training step (rank 8 on q and v, AdamW): our model with our LoRA and loss
           against transformers + peft with `labels=`; batch 4 x 512 on CUDA, 1 x 512 on the CPU
           (--train-batch); peak memory of the step measured in a separate process per side;
  eval     the evaluation workload as eval.py runs it: simulated systems, each with 40 and 80 time
           steps of context, 20 steps (200 tokens) generated greedily with the output limited to the 13
           number tokens: ours with the number grammar, forced-token skipping, the restricted LM head
           and each system's prefill shared by its two contexts, theirs `generate()` with a logits
           processor applying the same 13-token mask.
Prints one row per workload and `ratios forward=X train=Y eval=Z memory=W` (ours / theirs; below 1
is better for us), and the achieved FLOP/s (exact convention) against a measured matmul peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from commandline import Parser, exit_status, prose
from data import prompt, scale_for, step_pattern
from data.simulate import simulate
from experiment.speed import lora_training_step, sync, timed
from flops import EXACT
from qwen_min import (NUMBER_SYMBOLS, LoadError, QwenConfig, QwenForCausalLM, generate, init_weights, load_pretrained,
                      load_tokenizer, parse_device, parse_dtype, save_pretrained)
from qwen_min.presets import TINY_RANDOM, preset_config
from qwen_min.tokenizer import tiny_tokenizer


def alternate(ours, theirs, runs: int, device: str) -> tuple[float, float]:
    """Warm both once, then alternate A/B `runs` times; medians in seconds."""
    ours(), theirs()
    a, b = [], []
    for _ in range(runs):
        a.append(timed(ours, device))
        b.append(timed(theirs, device))
    return statistics.median(a), statistics.median(b)


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a plain square matmul on this device: 2048 on the CPU, 8192 on a GPU."""
    n = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t = min(timed(lambda: a @ b, device) for _ in range(5))
    return 2 * n ** 3 / t


# --- models ----------------------------------------------------------------------------------------

def save_random(layers: int, directory: str, size: str = "full") -> None:
    """Random weights of Qwen2.5-0.5B's shape (`size` full), or its vocabulary with the tiny preset's
    width (`size` tiny: a rehearsal of the bench in seconds), `layers` blocks."""
    config = QwenConfig() if size == "full" else dataclasses.replace(preset_config(TINY_RANDOM),
                                                                     vocab_size=QwenConfig().vocab_size)
    config = dataclasses.replace(config, num_hidden_layers=layers)
    save_pretrained(init_weights(QwenForCausalLM(config), seed=0), directory)


def load_ours(directory, dtype, device, compile_blocks: bool = False):
    """Our model; with `compile_blocks` each decoder block is compiled with torch.compile (in place)."""
    model = load_pretrained(directory, dtype=dtype, device=device)
    if compile_blocks:
        for layer in model.model.layers:
            layer.compile()
    return model


def load_theirs(directory, dtype, device):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    model.generation_config.repetition_penalty = None  # forecasting decodes plainly
    return model


# --- training step ---------------------------------------------------------------------------------

def theirs_train_step(model, device):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=model.dtype == torch.bfloat16 and device.startswith("cuda"))

    def step(ids):
        peft_model.train()
        with autocast:
            loss = peft_model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(side: str, directory: str, batch: int, seq_len: int, dtype: str, device: str,
                 compile_blocks: bool = False) -> dict:
    """Run in its own process: load one side, take two training steps, report the peak memory of the
    second (RSS sampled every millisecond on the CPU, max allocated on CUDA) and the memory before it."""
    dt = parse_dtype(dtype)
    model = load_ours(directory, dt, device, compile_blocks) if side == "ours" else load_theirs(directory, dt, device)
    step = (lora_training_step if side == "ours" else theirs_train_step)(model, device)
    ids = torch.randint(0, 151_000, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    step(ids)  # optimizer state exists from here on
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(ids)
        sync(device)
        return {"before": before, "peak": torch.cuda.max_memory_allocated()}
    before = rss_bytes()
    top, done = [before], threading.Event()

    def watch():
        while not done.is_set():
            top[0] = max(top[0], rss_bytes())
            time.sleep(0.001)
    watcher = threading.Thread(target=watch)
    watcher.start()
    step(ids)
    done.set()
    watcher.join()
    return {"before": before, "peak": top[0]}


def measure_memory(side: str, directory: str, a) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", side, "--weights", directory, "--train-batch", str(a.train_batch),
           "--seq-len", str(a.seq_len), "--dtype", a.dtype, "--device", a.device] + (["--compile"] if a.compile else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- evaluation workload ---------------------------------------------------------------------------

def eval_prompts(tok, n: int, ctxs=(40, 80)) -> list[list[int]]:
    """n prompts laid out as eval.py batches them: n / 2 simulated systems, each with 40 and then 80 time
    steps of context."""
    trajectories, _, _ = simulate(systems=-(-n // len(ctxs)), seed=1)
    alpha = scale_for(trajectories)
    prompts = [tok.encode(prompt(v, ctx, alpha)) for v in trajectories for ctx in ctxs]
    return prompts[:n]


def qwen_number_ids(tok) -> dict[str, int]:
    return {c: tok.token_id(c) for c in NUMBER_SYMBOLS}


# --- workloads: each returns its row (name, ours, theirs, our FLOP/s or None, note) ----------------

def bench_forward(ours, theirs, a, gen) -> tuple:
    ids = torch.randint(0, 151_000, (1, a.seq_len), generator=gen).to(a.device)
    with torch.inference_mode():
        diff = (ours(ids).float() - theirs(input_ids=ids).logits.float()).abs().max().item()
        t_ours, t_theirs = alternate(lambda: ours(ids), lambda: theirs(input_ids=ids), a.runs, a.device)
    flops = ours.flops(a.seq_len, EXACT).forward
    return f"forward 1x{a.seq_len}", t_ours, t_theirs, flops / t_ours, f"max |logit diff| {diff:.1e}"


def bench_eval(ours, theirs, a) -> tuple:
    tok = _qwen_tokenizer_or_none()
    if tok is None:  # no real vocabulary at hand: the same digit-per-token behaviour, Qwen's ids unknown
        tok = tiny_tokenizer()
    prompts = eval_prompts(tok, a.eval_prompts)
    pattern = [[tok.token_id(c) for c in chars] for chars in step_pattern(2)]
    allowed = sorted(qwen_number_ids(tok).values())
    new_tokens = 10 * a.eval_steps
    done = []  # every timed call's output, with what it computed
    ours_fn = lambda: done.append(generate(ours, prompts, new_tokens, pad_id=0, pattern=pattern))  # noqa: E731
    theirs_fn = lambda: hf_generate(theirs, prompts, new_tokens, allowed, a.device)  # noqa: E731
    same = generate(ours, prompts, new_tokens, pad_id=0, allowed_token_ids=allowed) == theirs_fn()
    t_ours, t_theirs = alternate(ours_fn, theirs_fn, a.runs, a.device)
    calls = sum(d.forward_calls for d in done) / len(done)
    return (f"eval {len(prompts)} prompts x {new_tokens} tok", t_ours, t_theirs, sum(d.flops for d in done) / len(done) / t_ours,
            f"mask-only tokens equal: {same}; {calls:.0f} forward calls vs {new_tokens}")


def bench_train(ours, theirs, a, gen) -> tuple:
    ids = torch.randint(0, 151_000, (a.train_batch, a.seq_len), generator=gen).to(a.device)
    ours_step, theirs_step = lora_training_step(ours, a.device), theirs_train_step(theirs, a.device)
    l1, l2 = ours_step(ids).item(), theirs_step(ids).item()
    t_ours, t_theirs = alternate(lambda: ours_step(ids), lambda: theirs_step(ids), a.runs, a.device)
    flops = a.train_batch * ours.flops(a.seq_len, EXACT, head_positions=a.seq_len - 1).training
    return f"train step {a.train_batch}x{a.seq_len}", t_ours, t_theirs, flops / t_ours, f"first loss {l1:.4f} vs {l2:.4f}"


def bench_memory(directory: str, a) -> tuple:
    m_ours, m_theirs = measure_memory("ours", directory, a), measure_memory("theirs", directory, a)
    gib = 2 ** 30
    return ("  peak memory GiB (step)", m_ours["peak"] / gib, m_theirs["peak"] / gib, None,
            f"before the step {m_ours['before'] / gib:.2f} vs {m_theirs['before'] / gib:.2f}; "
            f"added {(m_ours['peak'] - m_ours['before']) / gib:.2f} vs {(m_theirs['peak'] - m_theirs['before']) / gib:.2f}")


# --- main ------------------------------------------------------------------------------------------

def parser() -> Parser:
    p = Parser("python bench.py", prose(__doc__), examples=[
        "python bench.py --quick                  # a few minutes on a CPU",
        "python bench.py --device cuda --dtype bf16 --compile",
        "python bench.py --only forward --runs 5"])
    p.add_argument("--only", nargs="+", choices=("forward", "train", "eval"), default=["forward", "train", "eval"],
                   help="workloads to time")
    p.add_argument("--quick", action="store_true", help="fewer runs and smaller workloads, a few minutes on a CPU "
                                                        "(default: off)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence for forward and train "
                                                            "(default: 512; 256 at most with --quick on the CPU)")
    p.add_argument("--runs", type=int, default=None, help="timed runs of each side, median (default: 3, 1 with --quick)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default: 4 on CUDA, 1 on the CPU)")
    p.add_argument("--eval-prompts", type=int, default=None, help="prompts in the eval batch (default: 8, 4 with --quick)")
    p.add_argument("--eval-steps", type=int, default=None, help="time steps generated (default: 20, 5 with --quick)")
    p.add_argument("--layers", type=int, default=24, help="decoder blocks, 24 is Qwen2.5-0.5B")
    p.add_argument("--size", choices=("full", "tiny"), default="full",
                   help="full: Qwen2.5-0.5B's width; tiny: width 64, to rehearse the bench in seconds")
    p.add_argument("--json", metavar="FILE", help="also write the rows and ratios to FILE as JSON (default: none)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile each of our decoder blocks, meant for CUDA "
                                                          "(default: off)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--memory-child", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    for flag in ("layers", "seq_len", "runs", "train_batch", "eval_prompts", "eval_steps", "threads"):
        value = getattr(a, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    try:
        parse_device(a.device), parse_dtype(a.dtype)
    except LoadError as e:
        p.error(str(e))
    cuda = a.device.startswith("cuda")
    a.train_batch = a.train_batch or (4 if cuda else 1)
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child, a.weights, a.train_batch, a.seq_len, a.dtype, a.device, a.compile)))
        return 0
    a.runs = a.runs or (1 if a.quick else 3)
    a.eval_prompts = a.eval_prompts or (4 if a.quick else 8)
    a.eval_steps = a.eval_steps or (5 if a.quick else 20)
    if a.quick and not cuda:
        a.seq_len = min(a.seq_len, 256)
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = parse_dtype(a.dtype)
    print(f"# device={a.device} dtype={a.dtype} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"cpus={os.cpu_count()} layers={a.layers} runs={a.runs} compile={a.compile}"
          + (f" gpu={torch.cuda.get_device_name()}" if cuda else ""), flush=True)
    peak = matmul_peak(a.device, dtype)
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as directory:
        save_random(a.layers, directory, a.size)
        ours, theirs = load_ours(directory, dtype, a.device, a.compile), load_theirs(directory, dtype, a.device)
        gen = torch.Generator().manual_seed(0)

        if "forward" in a.only:
            rows.append(bench_forward(ours, theirs, a, gen))
            ratios["forward"] = rows[-1][1] / rows[-1][2]
        if "eval" in a.only:
            rows.append(bench_eval(ours, theirs, a))
            ratios["eval"] = rows[-1][1] / rows[-1][2]
        if "train" in a.only:
            rows.append(bench_train(ours, theirs, a, gen))
            ratios["train"] = rows[-1][1] / rows[-1][2]
            del ours, theirs  # the memory of each side is measured in a process of its own
            rows.append(bench_memory(directory, a))
            ratios["memory"] = rows[-1][1] / rows[-1][2]

    print(f"{'workload':<34}{'ours':>10}{'theirs':>10}{'ratio':>8}{'ours GFLOP/s':>14}{'MFU':>7}  notes")
    for name, o, t, fps, note in rows:
        rate = f"{fps / 1e9:>14.1f}{fps / peak:>7.1%}" if fps else f"{'':>21}"
        print(f"{name:<34}{o:>10.3f}{t:>10.3f}{o / t:>8.3f}{rate}  {note}")
    print(f"# matmul peak {peak / 1e9:.1f} GFLOP/s; times in seconds (medians), memory in GiB")
    print("ratios " + " ".join(f"{k}={ratios[k]:.3f}" for k in ("forward", "train", "eval", "memory") if k in ratios))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "device": a.device, "gpu": torch.cuda.get_device_name() if cuda else None, "dtype": a.dtype,
            "compile": a.compile, "size": a.size, "layers": a.layers, "matmul_peak": peak, "ratios": ratios,
            "rows": [{"workload": name, "ours": o, "theirs": t, "flops_per_s": fps, "tokens": tokens, "note": note}
                     for (name, o, t, fps, note), tokens in zip(rows, row_tokens(rows, a))]}, indent=1))
    return 0


def row_tokens(rows: list, a) -> list[int | None]:
    """Tokens each row's timed call handles (the memory row: none)."""
    per = {"forward": a.seq_len, "eval": a.eval_prompts * 10 * a.eval_steps, "train": a.train_batch * a.seq_len}
    return [next((n for k, n in per.items() if name.startswith(k)), None) for name, *_ in rows]


def _qwen_tokenizer_or_none():
    """The real Qwen vocabulary from ../shared/ when present (its digit ids matter to the mask)."""
    shared = Path(__file__).resolve().parent.parent / "shared" / "qwen2.5-tokenizer"
    return load_tokenizer(shared) if (shared / "tokenizer.json").is_file() else None


def hf_generate(model, prompts, new_tokens: int, allowed: list[int], device: str) -> list[list[int]]:
    """transformers' generate(), greedy, with a logits processor that keeps only `allowed` tokens."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Mask(LogitsProcessor):
        def __init__(self):
            self.keep = None

        def __call__(self, input_ids, scores):
            if self.keep is None:
                self.keep = torch.full_like(scores, float("-inf"))
                self.keep[:, allowed] = 0
            return scores + self.keep

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, logits_processor=LogitsProcessorList([Mask()]), pad_token_id=0,
                             eos_token_id=None)
    return out[:, width:].tolist()


if __name__ == "__main__":
    sys.exit(exit_status(main))
