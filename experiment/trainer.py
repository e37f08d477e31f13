"""One training run: LoRA (or every weight) on training windows, charged to the FLOPs ledger,
checkpointed atomically, resumable exactly, and run by one or several processes (torchrun).

    summary = train(TrainSettings(model="tiny-random", max_steps=300, out="runs/tiny").resolved())

`Trainer` holds a run's state; `restore`, `step`, `validate` and `checkpoint` are its parts, and
`train` is the loop over them. A run directory holds config.json (settings, split, scale),
metrics.jsonl (a line per step), adapter_best/ and adapter_last/ (or model_best/ and model_last/ for
--full), loss.png, summary.json and checkpoint.pt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import lora
from data.files import atomic_write, file_digest, write_text
from flops import Ledger, get_convention
from flops.ledger import DEFAULT_BUDGET
from qwen_min import device_and_dtype, load_pretrained, load_tokenizer, save_pretrained
from qwen_min.continuous import QwenForValueForecasting, value_loss
from qwen_min.loss import IGNORE, lm_loss
from qwen_min.weights import model_encoding, value_spec

from .batches import prepare_data
from .costs import affordable_steps, full_step_cost, step_cost, val_cost
from .report import plot_losses
from .runfolder import CHECKPOINT, FolderLock, check_writable, is_run, new_run_id, read_checkpoint, read_config, same_run
from .settings import RunError, TrainSettings, UsageError, as_config, requested_spec


# --- pieces ----------------------------------------------------------------------------------------

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


def check_model_encoding(s: TrainSettings) -> None:
    """Refuse a model that can't be read in the run's encoding (a directory says its own)."""
    found = model_encoding(s.model, s.encoding)
    saved = value_spec(s.model) if found == s.encoding == "continuous" else None  # a preset's: built as asked
    if saved is not None and saved != requested_spec(s):
        raise UsageError(f"--model {s.model} is a continuous model of {saved.components} component(s) in "
                         f"{saved.space} space; give --components {saved.components} --value-space {saved.space}")
    if found == s.encoding or (s.encoding == "continuous" and found == "digits"):
        return  # a language model gets new value layers for continuous
    if s.encoding == "bins":
        raise UsageError(f"--encoding bins needs a preset (scratch-*, tiny-random) or a model trained with bins: "
                         f"{s.model} reads {found}, its vocabulary has no value tokens")
    raise UsageError(f"--model {s.model} reads {found}, not --encoding {s.encoding}")


def build_model(s: TrainSettings, device, dtype, seed: int):
    """The model of a run: every weight trainable with --full, else LoRA (fp32 adapters, seeded).
    With --encoding continuous on a language model, its decoder gets new value layers (seeded),
    which train fully beside the LoRA matrices."""
    model = load_pretrained(s.model, dtype=dtype, device=device, encoding=s.encoding, spec=requested_spec(s))
    gen = torch.Generator().manual_seed(seed)
    if s.encoding == "continuous" and not isinstance(model, QwenForValueForecasting):
        model = QwenForValueForecasting.from_decoder(model.model, model.config, requested_spec(s), gen)
    if s.full:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    lora.inject(model, rank=s.rank, alpha=s.alpha, dropout=s.dropout, targets=s.targets, verbose=False)
    for layer in lora.lora_layers(model).values():
        layer.lora_A.float()  # adapters train in fp32 even on a bf16 base
        layer.lora_B.float()
        layer.reset_lora(generator=gen)
    for name in lora.VALUE_LAYERS if s.encoding == "continuous" else ():
        getattr(model, name).float().requires_grad_(True)
    return model


def loss_of(model, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The training loss of either kind of model: next-token cross-entropy (nats/token) or the next
    step's negative log-likelihood (nats/step); and the positions it scored."""
    if isinstance(model, QwenForValueForecasting):
        return value_loss(model, inputs, labels)
    return lm_loss(model, inputs, labels)


class LossModule(torch.nn.Module):
    """The model and its loss as one forward, so DistributedDataParallel sees the whole computation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, labels):
        return loss_of(self.model, inputs, labels)


@torch.no_grad()
def validation_loss(model, val_ids: list, pad_id: int, device, autocast, batch: int = 8) -> float:
    """Position-mean loss (nats/token, or nats/step when continuous) over whole validation systems
    (padded on the right, batched by length)."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(val_ids)), key=lambda i: len(val_ids[i]))
    continuous = isinstance(model, QwenForValueForecasting)
    for s in range(0, len(order), batch):
        rows = [val_ids[i] for i in order[s:s + batch]]
        width = max(len(r) for r in rows)
        ids = (torch.zeros((len(rows), width, 2)) if continuous else
               torch.full((len(rows), width), pad_id, dtype=torch.long))
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, :len(r)] = torch.as_tensor(r)
            labels[j, :len(r)] = 0 if continuous else torch.tensor(r)
        with autocast():
            loss, n = loss_of(model, ids.to(device), labels.to(device))
        total += loss.item() * n
        count += n
    return total / max(count, 1)


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


def read_metrics(path: Path, upto: int | None = None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if upto is None or r["step"] <= upto]


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


# --- the run ---------------------------------------------------------------------------------------

class Trainer:
    """Everything a run holds between steps. `Trainer(s)` refuses every mistake before it writes
    anything; `claim` takes the run folder (and writes the step-0 checkpoint of a new run); then
    `restore`, `step`, `validate` and `checkpoint` as the loop needs them."""

    def __init__(self, s: TrainSettings):
        self.s = s
        self.rank_id, self.world = distributed()
        self.main = self.rank_id == 0
        torch.manual_seed(s.seed + self.rank_id)  # dropout; torch seeds itself at random otherwise
        self.device, self.dtype = device_and_dtype(s.device, s.dtype)
        self.out = Path(s.out)
        self.continuing = is_run(self.out)
        check_writable(self.out)
        check_model_encoding(s)
        self.tok = load_tokenizer(s.model, s.encoding)
        self.prep = prepare_data(s, self.tok)
        self.data_sha256 = file_digest(s.data)
        self.model = build_model(s, self.device, self.dtype, s.seed)
        if s.encoding != "continuous" and self.tok.vocab_size > self.model.config.vocab_size:
            raise UsageError(f"--model {s.model}: its vocabulary ({self.model.config.vocab_size}) is smaller than its "
                             f"tokenizer's ({self.tok.vocab_size} tokens)")
        # an existing ledger, checked against --budget and --convention when given (a new one is made in claim)
        existing = Ledger.open(s.ledger, s.budget, s.convention) if Path(s.ledger).exists() else None
        self.convention = get_convention(existing.convention if existing else s.convention or "exact")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay)
        self.eval_flops = val_cost(self.model, self.convention, self.prep.val_ids)
        self.full_step = full_step_cost(self.model, self.convention, s.chunk, s.batch_size)
        if s.flops is not None:  # the steps the FLOPs pay for, fixed before anything is written
            steps = affordable_steps(s.flops, self.full_step, self.eval_flops, s.eval_every)
            if steps < 1:
                raise UsageError(f"--flops {s.flops:.3g} can't pay for one step of this run and its validation "
                                 f"({self.full_step + self.eval_flops:.3e} FLOPs)")
            self.s = s = dataclasses.replace(s, max_steps=steps)
        self.check_budget(existing)
        self.train_model = LossModule(self.model)
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.train_model)
        on_cuda_bf16 = self.device.type == "cuda" and self.dtype == torch.bfloat16
        self.autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda_bf16
                         else (lambda: torch.autocast("cpu", enabled=False)))
        self.step_no, self.best_val, self.tokens_seen, self.elapsed, self.flops_used = 0, math.inf, 0, 0.0, 0.0
        self.flops_at_start, self.last_val = 0.0, None  # the run's FLOPs when this process took it up
        self.metrics: list[dict] = []
        self.lock = self.ledger = self.run_id = None
        self.last_checkpoint = self.recorded = 0  # the last step checkpointed, and given a metrics row

    def check_budget(self, ledger: Ledger | None) -> None:
        """Refuse a run the existing ledger (or, with none, a new ledger's --budget) can't pay one step of."""
        s = self.s
        if ledger is None:
            budget = s.budget or DEFAULT_BUDGET
            if budget < self.full_step:
                raise UsageError(f"--budget {budget:.3g} can't pay for one step of this run ({self.full_step:.3e} "
                                 f"FLOPs); no ledger was made")
            return
        if ledger.remaining < self.full_step:
            raise UsageError(f"{s.ledger}: the budget is spent ({ledger.total:.3e} of {ledger.budget:.3e} FLOPs used; "
                             f"one step costs {self.full_step:.3e})")

    # --- state -------------------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the run folder (one process at a time), open or make the ledger, and fix the run id:
        the folder's own when continuing, a new one (with a step-0 checkpoint) when starting."""
        s = self.s
        if self.main:
            self.lock = FolderLock(self.out)
            if is_run(self.out):
                saved = read_config(self.out)
                same_run(s, self.out, saved, self.data_sha256)
                self.run_id = saved.get("run_id") or s.name  # a run from before run ids kept its name as key
            else:
                self.run_id = new_run_id()
        self.ledger = Ledger.open(s.ledger, s.budget, s.convention)
        if self.world > 1:
            shared = [self.run_id]
            torch.distributed.broadcast_object_list(shared, src=0)
            self.run_id = shared[0]
        if self.main and not (self.out / CHECKPOINT).exists():
            self.checkpoint()  # step 0, before config.json: a folder with a config always has a checkpoint
        if self.world > 1:
            torch.distributed.barrier()

    @property
    def key(self) -> str:
        """The run's key in the ledger (one per process under torchrun)."""
        return self.run_id if self.world == 1 else f"{self.run_id}/rank{self.rank_id}"

    def restore(self) -> None:
        """Load the checkpoint (step 0 for a new run); rewrite config.json and metrics.jsonl up to it."""
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        ckpt = read_checkpoint(self.out / CHECKPOINT, trainable)
        try:
            with torch.no_grad():
                for n, v in ckpt["trainable"].items():
                    trainable[n].copy_(v)
            self.opt.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise UsageError(f"{self.out / CHECKPOINT}: its optimizer state does not fit this run ({e})") from None
        self.step_no, self.best_val, self.tokens_seen = ckpt["step"], ckpt["best_val"], ckpt["tokens"]
        self.elapsed, self.flops_used = ckpt["seconds"], ckpt["flops"]
        self.flops_at_start = self.flops_used
        self.last_checkpoint = self.recorded = self.step_no
        set_rng_state(ckpt["rng"])
        if self.main and self.continuing:
            print(f"resuming {self.out} from step {self.step_no}", file=sys.stderr)
        metrics_path = self.out / "metrics.jsonl"
        self.metrics = read_metrics(metrics_path, upto=self.step_no)
        if self.main:
            write_text(self.out / "config.json", json.dumps(self.config(), indent=1) + "\n")
            write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in self.metrics))

    def config(self) -> dict:
        """config.json: the settings, then what they resolved to (split, scale, costs, sizes)."""
        p = self.prep
        return {**as_config(self.s), "run_id": self.run_id, "data_sha256": self.data_sha256,
                "dtype": str(self.dtype).removeprefix("torch."), "world_size": self.world,
                "train_systems": p.train_systems, "validation_systems": p.val_systems,
                "alpha_train": p.alpha_train, "alpha_validation": p.alpha_val, "windows": len(p.windows["labels"]),
                "flops_per_full_step": self.full_step, "flops_per_validation": self.eval_flops,
                "trainable_parameters": sum(q.numel() for q in self.params),
                "lora": None if self.s.full else lora.summary(self.model)}

    def checkpoint(self) -> None:
        """checkpoint.pt (trainable weights, optimizer, step, RNG, FLOPs) and the last weights, atomically."""
        if not self.main:
            return
        state = {"trainable": {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad},
                 "optimizer": self.opt.state_dict(), "step": self.step_no, "best_val": self.best_val,
                 "tokens": self.tokens_seen, "seconds": self.elapsed, "flops": self.flops_used, "rng": rng_state()}
        atomic_write(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        self.last_checkpoint = self.step_no
        self.save_weights("last")

    def save_weights(self, kind: str) -> None:
        """LoRA runs: the adapter (PEFT layout) in adapter_{kind}/; full runs: the whole model with its
        tokenizer (Hugging Face layout) in model_{kind}/."""
        if self.s.full:
            save_pretrained(self.model, self.out / f"model_{kind}", tokenizer=self.tok)
        else:
            lora.save_adapter(self.model, self.out / f"adapter_{kind}", base_model_name_or_path=self.s.model)

    # --- work --------------------------------------------------------------------------------------
    def batch(self, nxt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of step `nxt`: (input_ids, labels), each (rows, chunk)."""
        return self.prep.batch(nxt, self.s.batch_size, self.s.seed, slice(self.rank_id, None, self.world))

    def costs(self, nxt: int, labels: torch.Tensor) -> tuple[float, float, str | None]:
        """(FLOPs of step `nxt` on these labels, of its validation pass here (0 if none), and why the
        ledger can't pay for both: None when every process can)."""
        s = self.s
        cost = step_cost(self.model, self.convention, s.chunk, labels).training
        do_eval = nxt % s.eval_every == 0 or nxt == s.max_steps
        eval_share = self.eval_flops if do_eval and self.main else 0.0  # the main process validates
        need = cost + eval_share
        if all_agree(self.ledger.can_afford(need), self.world, self.device):
            return cost, eval_share, None
        return cost, eval_share, (f"budget: stopping before step {nxt}, which would cost {need:.3e} FLOPs "
                                  f"with {self.ledger.refresh().remaining:.3e} left of {self.ledger.budget:.3e}")

    def step(self, nxt: int, batch: tuple[torch.Tensor, torch.Tensor], cost: float) -> float:
        """One optimizer step on this step's batch, charged to the ledger; returns the training loss."""
        s = self.s
        input_ids, labels = batch
        self.train_model.train()
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(s, nxt)
        with self.autocast():
            loss, _ = self.train_model(input_ids.to(self.device), labels.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.clip:
            torch.nn.utils.clip_grad_norm_(self.params, s.clip)
        self.opt.step()
        tokens = len(labels) * s.chunk
        self.ledger.charge(self.key, "train", cost, name=s.name, tokens=tokens, step=nxt)  # computed, so charged
        value = loss.item()
        weights_finite = all(torch.isfinite(p).all() for p in self.params)
        if not (math.isfinite(value) and weights_finite):
            raise RunError(f"step {nxt}: the training loss is {value} and the weights are "
                           f"{'finite' if weights_finite else 'not finite'}; "
                           f"stopped, keeping the last good checkpoint (step {self.last_checkpoint}) in {self.out}: "
                           f"try a lower --lr or --clip")
        self.step_no = nxt
        self.tokens_seen += tokens * self.world
        self.flops_used += cost
        return value

    def validate(self, cost: float) -> float:
        """The validation loss now, charged; the best weights saved when it is the lowest so far."""
        val = validation_loss(self.model, self.prep.val_ids, self.tok.pad_id or 0, self.device, self.autocast)
        self.ledger.charge(self.key, "train", cost, name=self.s.name, key=f"validation-{self.step_no}", steps=0)
        self.flops_used += cost
        if not math.isfinite(val):
            raise RunError(f"step {self.step_no}: the validation loss is {val}; stopped, keeping the last good "
                           f"checkpoint (step {self.last_checkpoint}) in {self.out}")
        if val < self.best_val:
            self.best_val = val
            self.save_weights("best")
        return val

    def record(self, train_loss: float, val: float | None, bar, logger) -> None:
        """A metrics row for the step just taken, appended to metrics.jsonl (main process only)."""
        if not self.main:
            return
        self.recorded = self.step_no
        row = {"step": self.step_no, "train_loss": train_loss, "val_loss": val,
               "lr": learning_rate(self.s, self.step_no), "tokens": self.tokens_seen, "flops": self.flops_used,
               "seconds": round(self.elapsed, 3)}
        self.metrics.append(row)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if logger:
            logger(row)
        if val is not None:
            self.last_val = val
        if bar:
            bar.update(1)
            bar.set_postfix({"loss": f"{train_loss:.3f}", "val": "-" if self.last_val is None else f"{self.last_val:.3f}",
                             "FLOPs": f"{self.flops_used:.2e}"})  # this run's, not the ledger's

    def finish(self, stopped: str | None, interrupted: bool) -> dict:
        """The last checkpoint, loss.png and summary.json; returns the summary ({} off the main process)."""
        self.checkpoint()
        if not self.main:
            return {}
        s = self.s
        if self.metrics:
            plot_losses(self.metrics, self.out / "loss.png", f"{s.name} ({s.model})")
        if stopped:
            print(stopped, file=sys.stderr)
        validated = [m for m in self.metrics if m.get("val_loss") is not None]
        summary = {"name": s.name, "out": str(self.out), "model": s.model, "full": s.full, "steps": self.step_no,
                   "max_steps": s.max_steps, "complete": self.step_no >= s.max_steps,
                   "best_val_loss": None if self.best_val == math.inf else self.best_val,
                   "best_step": min(validated, key=lambda m: m["val_loss"])["step"] if validated else None,
                   "final_val_loss": next((m["val_loss"] for m in reversed(self.metrics)
                                           if m.get("val_loss") is not None), None),
                   "flops": self.flops_used, "flops_this_start": self.flops_used - self.flops_at_start,
                   "ledger": str(s.ledger), "seconds": self.elapsed, "stopped": stopped, "interrupted": interrupted}
        write_text(self.out / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary


def progress_bar(t: Trainer):
    if not t.main or t.s.quiet:
        return None
    return tqdm(total=t.s.max_steps, initial=t.step_no, desc=t.s.name, dynamic_ncols=True)


def train(s: TrainSettings) -> dict:
    """Run (or continue) one training run; returns its summary. Raises UsageError/LoadError/DataError
    for a user's mistake, before any work; RunError when the loss or weights stop being finite (the
    last good checkpoint kept). Ctrl-C checkpoints and returns with `interrupted` set."""
    t = Trainer(s)
    try:
        t.claim()
        return loop(t)
    finally:
        if t.lock is not None:
            t.lock.release()


def loop(t: Trainer) -> dict:
    """Steps until max_steps, the budget, Ctrl-C or a non-finite loss; returns the summary."""
    s = t.s
    t.restore()
    logger = make_logger(s, t.out) if t.main else None
    bar = progress_bar(t)
    stopped, interrupted, loss = None, False, math.nan
    try:
        while t.step_no < s.max_steps:
            nxt = t.step_no + 1
            batch = t.batch(nxt)
            cost, eval_share, stopped = t.costs(nxt, batch[1])
            if stopped:
                break
            t0 = time.perf_counter()
            loss = t.step(nxt, batch, cost)
            val = t.validate(eval_share) if eval_share else None
            t.elapsed += time.perf_counter() - t0
            t.record(loss, val, bar, logger)
            if nxt % s.checkpoint_every == 0:
                t.checkpoint()
    except KeyboardInterrupt:
        if t.recorded < t.step_no:  # stopped in the step's validation: keep the step's row all the same
            t.record(loss, None, bar, logger)
        stopped = f"interrupted at step {t.step_no}; resume with: python train.py --resume {t.out}"
        interrupted = True
    finally:
        if bar:
            bar.close()
    return t.finish(stopped, interrupted)
