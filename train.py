"""LoRA fine-tuning of Qwen2.5 on Lotka-Volterra series written as text, charged to a FLOPs budget.

    python train.py --rank 8 --lr 1e-4                         # Qwen/Qwen2.5-0.5B-Instruct (hub or cache)
    python train.py --model tiny-random --max-steps 300 --eval-every 50 --out runs/tiny
    python train.py --resume runs/tiny                         # continue a stopped or killed run
    python train.py sweep --model tiny-random --max-steps 40   # lr x rank grid on 20% of the training systems
    python train.py plan --out runs/report                     # the report's whole plan (see reproduce.py)
    torchrun --nproc-per-node 2 train.py ...                   # data parallel; each process charges its share

Every run writes to --out: config.json (the resolved settings), metrics.jsonl (a line per step),
adapter_best/ and adapter_last/ (PEFT layout), loss.png, checkpoint.pt (atomic, for --resume).
Every training step and validation pass is charged to the ledger (--ledger, budget --budget) with the
FLOPs that `flops` computes for it; a run stops cleanly before a step the budget can't pay for.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import lora
from data import DataError, ensure_data, load_series, make_splits, make_windows, scale_for
from data.windows import IGNORE, tokenize_series
from flops import BudgetExceeded, Ledger, get_convention
from flops.ledger import DEFAULT_BUDGET, LedgerError
from qwen_min import LoadError, load_pretrained, load_tokenizer, parse_device, parse_dtype, save_pretrained
from qwen_min.loss import lm_loss
from qwen_min.weights import atomic_write

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_DATA = "data/lotka_volterra_data.h5"


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2, before any work."""


# --- arguments -------------------------------------------------------------------------------------

def add_common_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by a single run, the sweep and the plan (same names as eval.py where they mean the same)."""
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local directory, or tiny-random")
    p.add_argument("--data", default=DEFAULT_DATA, help="HDF5 series file (simulated if the default is missing)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 850/150 train/validation split")
    p.add_argument("--chunk", type=int, default=512, help="tokens per training window")
    p.add_argument("--stride", type=int, default=268, help="tokens between window starts")
    p.add_argument("--batch-size", type=int, default=4, help="windows per step (over all processes)")
    p.add_argument("--eval-every", type=int, default=200, help="steps between validation passes")
    p.add_argument("--val-limit", type=int, default=None, help="validation systems used for the loss (default all)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated projections to adapt")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="learning-rate schedule")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    p.add_argument("--clip", type=float, default=0.0, help="gradient-norm clipping (0: off)")
    p.add_argument("--decimals", type=int, default=2, help="decimals per value in the text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 (CPU default) or bf16 (CUDA default: bf16 autocast)")
    p.add_argument("--ledger", default="runs/ledger.json", help="FLOPs ledger shared by experiments")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="FLOPs budget of a new ledger")
    p.add_argument("--convention", choices=("exact", "coursework"), default="exact",
                   help="FLOPs convention of a new ledger")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--full", action="store_true",
                   help="train every parameter (no LoRA); default for the scratch-* presets")
    p.add_argument("--fresh-systems", type=int, default=None,
                   help="simulate this many new training systems every epoch instead of the file's training split "
                        "(default 850 for the scratch-* presets, else 0)")
    p.add_argument("--log", choices=("none", "tensorboard", "wandb"), default="none", help="extra logging")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python train.py", description=__doc__.split("\n")[0],
                                epilog="Subcommands: `python train.py sweep --help`, `python train.py plan --help`.")
    add_common_args(p)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (AdamW on the LoRA parameters)")
    p.add_argument("--train-fraction", type=float, default=1.0, help="share of the training systems used")
    p.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--out", default=None, help="run directory (default runs/<name>)")
    p.add_argument("--name", default=None, help="experiment name in the ledger (default from the settings)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its checkpoint")
    return p


def check_args(a) -> None:
    """Everything that can be refused before loading anything."""
    if a.rank <= 0:
        raise UsageError(f"--rank must be a positive integer, got {a.rank}")
    if not a.lr > 0:
        raise UsageError(f"--lr must be positive, got {a.lr}")
    if a.batch_size < 1 or a.max_steps < 1 or a.eval_every < 1 or a.checkpoint_every < 1:
        raise UsageError("--batch-size, --max-steps, --eval-every and --checkpoint-every must be at least 1")
    if a.stride < 1 or a.stride > a.chunk:
        raise UsageError(f"--stride must be between 1 and --chunk ({a.chunk}), got {a.stride}")
    if not 0 < a.train_fraction <= 1:
        raise UsageError(f"--train-fraction must be in (0, 1], got {a.train_fraction}")
    if not a.budget > 0:
        raise UsageError(f"--budget must be positive, got {a.budget}")
    if a.fresh_systems is not None and a.fresh_systems < 0:
        raise UsageError(f"--fresh-systems must be >= 0, got {a.fresh_systems}")
    if a.val_limit is not None and a.val_limit < 1:
        raise UsageError(f"--val-limit must be at least 1, got {a.val_limit}")
    try:
        lora.parse_targets(a.targets)
    except LoadError as e:
        raise UsageError(f"--targets: {e}") from None
    if a.alpha is not None and not a.alpha > 0:
        raise UsageError(f"--alpha must be positive, got {a.alpha}")
    if not 0 <= a.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {a.dropout}")


def default_name(a) -> str:
    frac = "" if a.train_fraction == 1 else f"-f{a.train_fraction:g}"
    if a.full:
        return f"full-{Path(str(a.model)).name}-lr{a.lr:g}-c{a.chunk}{frac}"
    return f"lora-r{a.rank}-lr{a.lr:g}-c{a.chunk}{frac}"


def apply_preset_defaults(a) -> None:
    """The scratch-* presets train every parameter on a stream of fresh systems unless told otherwise."""
    scratch = str(a.model).startswith("scratch-")
    a.full = a.full or scratch
    if a.fresh_systems is None:
        a.fresh_systems = 850 if scratch else 0


# --- data ------------------------------------------------------------------------------------------

FRESH_SEED = 1_000_003  # fresh systems are drawn from seeds far from any data file's


@dataclass
class Prepared:
    windows: dict[str, torch.Tensor]  # input_ids, labels, attention_mask: (N, chunk), epoch 0
    val_ids: list[list[int]]  # whole validation systems, not chunked
    train_systems: list[int]
    val_systems: list[int]
    alpha_train: float
    alpha_val: float
    stream: Callable[[int], dict[str, torch.Tensor]] | None = None  # epoch -> windows of fresh systems
    _epoch: tuple[int, dict] | None = None

    def windows_of(self, epoch: int) -> dict[str, torch.Tensor]:
        if self.stream is None or epoch == 0:
            return self.windows
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.stream(epoch))
        return self._epoch[1]

    def batch(self, step: int, batch: int, seed: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) of step `step` (this process's `rows` of it)."""
        picks = batch_positions(step, batch, len(self.windows["input_ids"]), seed)[rows]
        ids = torch.stack([self.windows_of(e)["input_ids"][i] for e, i in picks])
        labels = torch.stack([self.windows_of(e)["labels"][i] for e, i in picks])
        return ids, labels


def prepare_data(a, tok) -> Prepared:
    series = ensure_data(a.data) if a.data == DEFAULT_DATA else load_series(a.data)
    splits = make_splits(series.systems, seed=a.split_seed)
    train = splits["train"]
    rng = np.random.default_rng(a.split_seed)
    keep = max(1, round(len(train) * a.train_fraction))
    train = sorted(rng.permutation(train)[:keep].tolist())
    val = splits["validation"][: a.val_limit] if a.val_limit else splits["validation"]
    alpha_train = scale_for(series.trajectories[splits["train"]])
    alpha_val = scale_for(series.trajectories[splits["validation"]])
    train_ids = tokenize_series(series.trajectories[train], alpha_train, tok.encode, a.decimals)
    value = "9." + "9" * a.decimals
    step_tokens = len(tok.encode(f"{value},{value};"))
    if a.chunk < step_tokens:
        raise UsageError(f"--chunk {a.chunk} is smaller than one time step of text ({step_tokens} tokens)")
    windows = make_windows(train_ids, a.chunk, a.stride, pad_id=tok.pad_id or 0)
    val_ids = tokenize_series(series.trajectories[val], alpha_val, tok.encode, a.decimals)
    stream, counts = None, set()
    if a.fresh_systems:
        def fresh(epoch: int) -> dict[str, torch.Tensor]:
            """Epoch `epoch`'s new systems, simulated (never the file's validation systems), clipped so
            every scaled value keeps one digit before the point."""
            from data.simulate import simulate

            traj, _, _ = simulate(a.fresh_systems, FRESH_SEED + 1000 * a.seed + epoch, series.points,
                                  float(series.time[-1]))
            traj = np.minimum(traj, alpha_train * (10 - 10.0 ** -a.decimals))
            ids = tokenize_series(traj, alpha_train, tok.encode, a.decimals)
            cut = make_windows(ids, a.chunk, a.stride, pad_id=tok.pad_id or 0)
            counts.add(len(cut["input_ids"]))
            if len(counts) > 1:  # every system is the same number of tokens, so this can't happen
                raise RuntimeError("fresh epochs must cut into the same number of windows")
            return cut

        stream = fresh
        windows = stream(0)
        train = []
    return Prepared(windows, val_ids, train, val, alpha_train, alpha_val, stream)


def batch_positions(step: int, batch: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, window index) of each row of step `step` (1-based): every epoch is a seeded permutation
    of its n windows, read in order. The position in the data follows from the step alone, so a
    resumed run reads the same batches."""
    out = []
    for pos in range((step - 1) * batch, step * batch):
        epoch, i = divmod(pos, n)
        out.append((epoch, epoch_order(n, seed, epoch)[i]))
    return out


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded permutation of an epoch's n windows (a step's rows come from one or two epochs)."""
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def batch_indices(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Window indices of step `step` when every epoch reads the same windows."""
    return [i for _, i in batch_positions(step, batch, n, seed)]


# --- loss and FLOPs --------------------------------------------------------------------------------

def step_cost(model, convention, chunk: int, labels: torch.Tensor):
    """FLOPs of one training step on these windows: every window's tokens (padding included) through
    the body, the LM head and softmax on its labelled positions only."""
    positions = (labels[:, 1:] != IGNORE).sum(1).tolist()
    return sum(model.flops(chunk, convention, head_positions=k) for k in positions)


def val_cost(model, convention, val_ids: list[list[int]]) -> float:
    return sum(model.flops(len(ids), convention, head_positions=len(ids) - 1).forward for ids in val_ids)


@torch.no_grad()
def validation_loss(model, val_ids: list[list[int]], pad_id: int, device, autocast, batch: int = 8) -> float:
    """Token-mean loss over whole validation systems (padded on the right, batched by length)."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(val_ids)), key=lambda i: len(val_ids[i]))
    for s in range(0, len(order), batch):
        rows = [val_ids[i] for i in order[s:s + batch]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, :len(r)] = torch.tensor(r)
            labels[j, :len(r)] = torch.tensor(r)
        with autocast():
            loss, n = lm_loss(model, ids.to(device), labels.to(device))
        total += loss.item() * n
        count += n
    return total / max(count, 1)


def learning_rate(a, step: int) -> float:
    if a.warmup and step <= a.warmup:
        return a.lr * step / a.warmup
    if a.schedule == "cosine":
        progress = (step - a.warmup) / max(1, a.max_steps - a.warmup)
        return a.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return a.lr


# --- checkpoints and outputs -----------------------------------------------------------------------

def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def read_metrics(path: Path, upto: int | None = None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if upto is None or r["step"] <= upto]


def plot_losses(metrics: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [m["step"] for m in metrics]
    ax.plot(steps, [m["train_loss"] for m in metrics], lw=0.8, alpha=0.7, label="train (per step)")
    val = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


# --- distributed -----------------------------------------------------------------------------------

def distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world


def save_weights(model, path: Path, a, tok) -> None:
    """LoRA runs: the adapter (PEFT layout) in adapter_best/ or adapter_last/; full runs: the whole
    model with its tokenizer (Hugging Face layout) in model_best/ or model_last/."""
    kind = path.name
    if a.full:
        save_pretrained(model, path.with_name(f"model_{kind}"), tokenizer=tok)
    else:
        lora.save_adapter(model, path.with_name(f"adapter_{kind}"), base_model_name_or_path=a.model)


def all_agree(ok: bool, world: int, device) -> bool:
    """True only if every process says so: all stop together at the budget."""
    if world == 1:
        return ok
    flag = torch.tensor([int(ok)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


# --- one run ---------------------------------------------------------------------------------------

def build_model(a, device, dtype, seed: int):
    model = load_pretrained(a.model, dtype=dtype, device=device)
    if a.full:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    lora.inject(model, rank=a.rank, alpha=a.alpha, dropout=a.dropout, targets=a.targets, verbose=False)
    gen = torch.Generator().manual_seed(seed)
    for layer in lora.lora_layers(model).values():
        layer.lora_A.float()  # adapters train in fp32 even on a bf16 base
        layer.lora_B.float()
        layer.reset_lora(generator=gen)
    return model


class LossModule(torch.nn.Module):
    """The model and its loss as one forward, so DistributedDataParallel sees the whole computation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels):
        return lm_loss(self.model, input_ids, labels)


def resolve(a) -> dict:
    """The settings a run is defined by, as written to config.json (and read back by --resume)."""
    keys = ["model", "data", "split_seed", "chunk", "stride", "batch_size", "eval_every", "val_limit", "alpha",
            "dropout", "targets", "weight_decay", "schedule", "warmup", "clip", "decimals", "seed", "device",
            "dtype", "ledger", "budget", "convention", "checkpoint_every", "log", "rank", "lr", "train_fraction",
            "max_steps", "out", "name", "full", "fresh_systems"]
    return {k: getattr(a, k) for k in keys}


DEFINING = ("model", "data", "split_seed", "chunk", "stride", "batch_size", "alpha", "dropout", "targets", "seed",
            "rank", "lr", "train_fraction", "full", "fresh_systems", "decimals", "schedule", "warmup", "weight_decay")


def same_run(a, out: Path) -> None:
    """A checkpoint is only continued by the run that wrote it: refuse other settings in the same folder."""
    path = out / "config.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    differ = [k for k in DEFINING if k in saved and saved[k] != getattr(a, k)]
    if differ:
        k = differ[0]
        raise UsageError(f"{out} holds a run with other settings ({k}: {saved[k]!r} there, {getattr(a, k)!r} now); "
                         f"choose another --out, or --resume {out} to continue it")


def train(a) -> dict:
    """Run (or continue) one training run; returns its summary. Raises UsageError/LoadError/DataError
    for a user's mistake, before any work."""
    rank_id, world = distributed()
    main_process = rank_id == 0
    torch.manual_seed(a.seed + rank_id)  # dropout; torch seeds itself at random otherwise
    device = parse_device(a.device)
    dtype = parse_dtype(a.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    out = Path(a.out)
    ckpt_path = out / "checkpoint.pt"
    convention = get_convention(a.convention)
    tok = load_tokenizer(a.model)
    prep = prepare_data(a, tok)
    model = build_model(a, device, dtype, a.seed)
    ledger = Ledger.use(a.ledger, a.budget, a.convention)  # after every check, so a mistake writes nothing
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    n_windows = len(prep.windows["input_ids"])
    eval_flops = val_cost(model, convention, prep.val_ids)
    full_step = step_cost(model, convention, a.chunk, torch.zeros(a.batch_size, a.chunk, dtype=torch.long)).training
    if ledger.remaining < full_step:
        raise UsageError(f"{a.ledger}: the budget is spent ({ledger.total:.3e} of {ledger.budget:.3e} FLOPs used; "
                         f"one step costs {full_step:.3e})")
    train_model = LossModule(model)
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)

    # state: fresh or from the checkpoint
    step, best_val, tokens_seen, elapsed, flops_used = 0, float("inf"), 0, 0.0, 0.0
    if ckpt_path.exists():
        same_run(a, out)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in ckpt["trainable"].items():
                named[n].copy_(v)
        opt.load_state_dict(ckpt["optimizer"])
        step, best_val, tokens_seen, elapsed = ckpt["step"], ckpt["best_val"], ckpt["tokens"], ckpt["seconds"]
        flops_used = ckpt["flops"]
        set_rng_state(ckpt["rng"])
        if main_process:
            print(f"resuming {out} from step {step}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    metrics = read_metrics(metrics_path, upto=step)
    if main_process:
        config = {**resolve(a), "dtype": str(dtype).removeprefix("torch."), "world_size": world,
                  "train_systems": prep.train_systems, "validation_systems": prep.val_systems,
                  "alpha_train": prep.alpha_train, "alpha_validation": prep.alpha_val, "windows": n_windows,
                  "flops_per_full_step": full_step, "flops_per_validation": eval_flops,
                  "trainable_parameters": sum(p.numel() for p in params),
                  "lora": None if a.full else lora.summary(model)}
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        metrics_path.write_text("".join(json.dumps(m) + "\n" for m in metrics))
    logger = make_logger(a, out) if main_process else None
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (device.type == "cuda" and dtype == torch.bfloat16) \
        else (lambda: torch.autocast("cpu", enabled=False))
    name = a.name if world == 1 else f"{a.name}/rank{rank_id}"
    stopped, interrupted = None, False
    bar = None
    if main_process and not a.quiet:
        from tqdm import tqdm

        bar = tqdm(total=a.max_steps, initial=step, desc=a.name, dynamic_ncols=True)

    def checkpoint():
        if main_process:
            atomic_torch_save({"trainable": trainable_state(model), "optimizer": opt.state_dict(), "step": step,
                               "best_val": best_val, "tokens": tokens_seen, "seconds": elapsed, "flops": flops_used,
                               "rng": rng_state()},
                              ckpt_path)
            save_weights(model, out / "last", a, tok)

    try:
        while step < a.max_steps:
            nxt = step + 1
            input_ids, labels = prep.batch(nxt, a.batch_size, a.seed, slice(rank_id, None, world))
            cost = step_cost(model, convention, a.chunk, labels).training
            do_eval = nxt % a.eval_every == 0 or nxt == a.max_steps
            eval_share = eval_flops if do_eval and main_process else 0.0  # the main process validates
            need = cost + eval_share
            if not all_agree(ledger.can_afford(need), world, device):
                stopped = (f"budget: stopping before step {nxt}, which would cost {need:.3e} FLOPs with "
                           f"{ledger.refresh().remaining:.3e} left of {ledger.budget:.3e}")
                break
            t0 = time.perf_counter()
            train_model.train()
            for g in opt.param_groups:
                g["lr"] = learning_rate(a, nxt)
            with autocast():
                loss, _ = train_model(input_ids.to(device), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.clip:
                torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            step = nxt
            tokens = len(labels) * a.chunk
            tokens_seen += tokens * world
            ledger.charge(name, "train", cost, tokens=tokens, step=step)
            flops_used += cost
            val = None
            if eval_share:
                val = validation_loss(model, prep.val_ids, tok.pad_id or 0, device, autocast)
                ledger.charge(name, "train", eval_share, key=f"validation-{step}", steps=0)
                flops_used += eval_share
                if val < best_val:
                    best_val = val
                    save_weights(model, out / "best", a, tok)
            elapsed += time.perf_counter() - t0
            if main_process:
                row = {"step": step, "train_loss": loss.item(), "val_loss": val, "lr": learning_rate(a, step),
                       "tokens": tokens_seen, "flops": flops_used, "seconds": round(elapsed, 3)}
                metrics.append(row)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if logger:
                    logger(row)
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}", flops=f"{ledger.total:.2e}")
            if step % a.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        stopped = f"interrupted at step {step}; resume with: python train.py --resume {out}"
        interrupted = True
    finally:
        if bar:
            bar.close()
    checkpoint()
    if main_process:
        if metrics:
            plot_losses(metrics, out / "loss.png", f"{a.name} ({a.model})")
        if stopped:
            print(stopped, file=sys.stderr)
        summary = {"name": a.name, "out": str(out), "steps": step, "max_steps": a.max_steps,
                   "complete": step >= a.max_steps, "best_val_loss": None if best_val == float("inf") else best_val,
                   "final_val_loss": next((m["val_loss"] for m in reversed(metrics) if m.get("val_loss") is not None), None),
                   "flops": flops_used, "seconds": elapsed, "stopped": stopped, "interrupted": interrupted}
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary
    return {}


def make_logger(a, out: Path):
    """Optional TensorBoard or Weights & Biases logging; a clear error if asked for and not installed."""
    if a.log == "none":
        return None
    try:
        if a.log == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
            return lambda row: [writer.add_scalar(k, v, row["step"]) for k, v in row.items()
                                if k != "step" and v is not None] and writer.flush()
        import wandb

        run = wandb.init(project="qwen-min", name=a.name, config=resolve(a), dir=str(out))
        return lambda row: run.log({k: v for k, v in row.items() if v is not None}, step=row["step"])
    except ImportError:
        raise UsageError(f"--log {a.log}: the package is not installed (pip install "
                         f"{'tensorboard' if a.log == 'tensorboard' else 'wandb'})") from None


def args_for_run(argv) -> argparse.Namespace:
    p = run_parser()
    a = p.parse_args(argv)
    if a.resume:
        config_path = Path(a.resume) / "config.json"
        if not config_path.is_file():
            raise UsageError(f"--resume {a.resume}: no config.json there (not a run directory)")
        saved = json.loads(config_path.read_text())
        given = {k for k in vars(a) if any(arg.startswith("--" + k.replace("_", "-")) for arg in argv)}
        for k, v in saved.items():
            if hasattr(a, k) and k not in given | {"resume"}:
                setattr(a, k, v)
        if a.dtype in ("float32",):
            a.dtype = "fp32"
        if a.dtype in ("bfloat16",):
            a.dtype = "bf16"
        a.out = a.resume
    apply_preset_defaults(a)
    check_args(a)
    a.name = a.name or default_name(a)
    a.out = a.out or str(Path("runs") / a.name)
    return a


# --- the sweep -------------------------------------------------------------------------------------

def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python train.py sweep",
                                description="A learning-rate x rank grid of LoRA runs on one ledger, with its table.")
    add_common_args(p)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 5e-5, 1e-4], help="learning rates")
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8], help="LoRA ranks")
    p.add_argument("--train-fraction", type=float, default=0.2, help="share of the training systems used")
    p.add_argument("--max-steps", type=int, default=200, help="steps of every run")
    p.add_argument("--out", default="runs/sweep", help="folder for the runs and the table")
    p.add_argument("--prefix", default="grid", help="experiment names are PREFIX-r{rank}-lr{lr}")
    return p


def evaluations(max_steps: int, eval_every: int) -> int:
    """Validation passes a run of max_steps makes (every eval_every steps and at the end)."""
    return max_steps // eval_every + (max_steps % eval_every != 0)


def affordable_steps(budget: float, step: float, val: float, eval_every: int) -> int:
    """Most steps a run can take within `budget` FLOPs, its validation passes included."""
    k = max(0, int((budget - val) // (step + val / eval_every)))
    while k > 0 and k * step + evaluations(k, eval_every) * val > budget:
        k -= 1
    return k


def planned_cost(a, config, val_ids) -> tuple[float, float]:
    """(FLOPs of one full step, FLOPs of one validation pass) for a run of these settings, from `flops`."""
    from flops.report import meta_model

    model = meta_model(config, rank=a.rank, targets=lora.parse_targets(a.targets))
    convention = get_convention(a.convention)
    step = step_cost(model, convention, a.chunk, torch.zeros(a.batch_size, a.chunk, dtype=torch.long)).training
    return step, val_cost(model, convention, val_ids)


def grid_runs(a) -> list[argparse.Namespace]:
    runs = []
    for rank in a.ranks:
        for lr in a.lrs:
            name = f"{a.prefix}-r{rank}-lr{lr:g}"
            runs.append(argparse.Namespace(**{**vars(a), "rank": rank, "lr": lr, "name": name,
                                              "out": str(Path(a.out) / name), "resume": None}))
    return runs


def sweep(a) -> dict:
    from qwen_min import load_config

    runs = grid_runs(a)
    for r in runs:
        check_args(r)
    ledger = Ledger.use(a.ledger, a.budget, a.convention)
    if ledger.convention != a.convention:
        a.convention = ledger.convention
        runs = grid_runs(a)
    config = load_config(a.model)
    val_ids = prepare_data(runs[0], load_tokenizer(a.model)).val_ids
    n_eval = evaluations(a.max_steps, a.eval_every)
    todo, need, dearest = [], 0.0, (0.0, 0.0)
    for r in runs:
        done = Path(r.out) / "summary.json"
        if done.exists() and json.loads(done.read_text()).get("complete"):
            continue
        step, val = planned_cost(r, config, val_ids)
        spent = (ledger.entry(r.name) or {}).get("flops", 0.0)
        need += max(0.0, a.max_steps * step + n_eval * val - spent)
        dearest = max(dearest, (step, val))
        todo.append(r)
    if need > ledger.remaining:
        afford = affordable_steps(ledger.remaining / max(1, len(todo)), *dearest, a.eval_every)
        raise UsageError(f"{a.ledger}: the grid's {len(todo)} remaining runs need {need:.3e} FLOPs but "
                         f"{ledger.remaining:.3e} remain; it could afford about {afford} steps per run "
                         f"(--max-steps {afford})")
    print(f"sweep: {len(runs)} runs ({len(runs) - len(todo)} done), {a.max_steps} steps each, "
          f"planned {need:.3e} FLOPs of {ledger.remaining:.3e} remaining", file=sys.stderr)
    for r in todo:
        train(r)
    return write_sweep_table(a, runs)


def write_sweep_table(a, runs) -> dict:
    """Validation loss per lr x rank (the report's Table 4), as Markdown and JSON."""
    results = {}
    for r in runs:
        path = Path(r.out) / "summary.json"
        results[r.name] = {"rank": r.rank, "lr": r.lr, **(json.loads(path.read_text()) if path.exists() else {})}
    lines = ["| learning rate | " + " | ".join(f"rank {k}" for k in a.ranks) + " |",
             "| --- |" + " ---: |" * len(a.ranks)]
    for lr in a.lrs:
        cells = []
        for k in a.ranks:
            res = results[f"{a.prefix}-r{k}-lr{lr:g}"]
            cells.append("-" if res.get("best_val_loss") is None else f"{res['best_val_loss']:.4f}")
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    scored = [v for v in results.values() if v.get("best_val_loss") is not None]
    best = min(scored, key=lambda v: v["best_val_loss"]) if scored else None
    table = ("Validation loss (best over the run, nats/token) per learning rate x LoRA rank, "
             f"{a.max_steps} steps on {a.train_fraction:.0%} of the training systems.\n\n" + "\n".join(lines) + "\n")
    if best:
        table += f"\nBest: rank {best['rank']}, learning rate {best['lr']:g} (validation loss {best['best_val_loss']:.4f}).\n"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(table)
    summary = {"runs": results, "best": best and {"rank": best["rank"], "lr": best["lr"],
                                                  "val_loss": best["best_val_loss"]}}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table)
    return summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "sweep":
            sweep(sweep_parser().parse_args(argv[1:]))
            return 0
        if argv and argv[0] == "plan":
            import reproduce

            return reproduce.main(argv[1:])
        a = args_for_run(argv)
        summary = train(a)
    except (UsageError, LoadError, DataError, LedgerError, BudgetExceeded) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
