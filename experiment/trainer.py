"""One training run: LoRA (or every weight) on training windows, charged to the FLOPs ledger,
checkpointed atomically, resumable exactly, and run by one or several processes (torchrun).

    summary = train(TrainSettings(model="tiny-random", max_steps=300, out="runs/tiny").resolved())

`Trainer` holds a run's state; `restore`, `step`, `validate` and `checkpoint` are its parts, and
`train` is the loop over them. What a run writes, and where, is its folder's (`folders.RunFolder`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import lora
from data.files import WriteFailed, file_digest
from flops import BudgetExceeded, Ledger, get_convention
from flops.ledger import DEFAULT_BUDGET
from qwen_min import ModelSource, device_and_dtype, open_model

from .batches import prepare_data
from .costs import affordable_steps, full_step_cost, step_cost, val_cost
from .encodings import Encoding, encoding_of
from .errors import RunError, UsageError
from .folders import FolderLock, RunFolder, check_writable, new_run_id
from .models import autocast, optimizer, run_model, to_device
from .process import all_agree, distributed, learning_rate, make_logger, rng_state, set_rng_state
from .report import plot_losses
from .groups import settings_digest
from .settings import TrainSettings, as_config, defining


# --- pieces ----------------------------------------------------------------------------------------

class LossModule(torch.nn.Module):
    """The model and its encoding's loss as one forward, so DistributedDataParallel sees the whole computation."""

    def __init__(self, model, encoding: Encoding):
        super().__init__()
        self.model, self.encoding = model, encoding

    def forward(self, inputs, labels):
        return self.encoding.loss(self.model, inputs, labels)


@torch.no_grad()
def validation_loss(model, encoding: Encoding, val_ids: list, pad_id: int, device, autocast, batch: int = 8) -> float:
    """Position-mean loss (nats/token, or nats/step when continuous) over whole validation systems
    (padded on the right, batched by length)."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(val_ids)), key=lambda i: len(val_ids[i]))
    for s in range(0, len(order), batch):
        inputs, labels = encoding.pad([val_ids[i] for i in order[s:s + batch]], pad_id)
        with autocast():
            loss, n = encoding.loss(model, inputs.to(device), labels.to(device))
        total += loss.item() * n
        count += n
    return total / max(count, 1)


# --- the run ---------------------------------------------------------------------------------------

class Trainer:
    """Everything a run holds between steps. `Trainer(s)` refuses every mistake before it writes
    anything; `claim` takes the run folder (and writes the step-0 checkpoint of a new run); then
    `restore`, `step`, `validate` and `checkpoint` as the loop needs them."""

    def __init__(self, s: TrainSettings, source: ModelSource | None = None):
        self.s = s
        self.rank_id, self.world = distributed()
        self.main = self.rank_id == 0
        torch.manual_seed(s.seed + self.rank_id)  # dropout; torch seeds itself at random otherwise
        self.device, self.dtype = device_and_dtype(s.device, s.dtype)
        self.folder = RunFolder(s.out)
        self.out = self.folder.path
        self.continuing = self.folder.is_run()
        check_writable(self.out)
        RunFolder(s.model).refuse_as_model()
        self.source = source or open_model(s.model)
        self.encoding = encoding_of(s.encoding)
        self.encoding.check_model(self.source, s.spec)
        self.tok = self.source.tokenizer(s.encoding)
        self.prep = prepare_data(s, self.tok, self.encoding)
        self.data_sha256 = file_digest(s.data)
        self.model = run_model(s, self.source, self.encoding, self.device, self.dtype)
        # an existing ledger, checked against --budget and --convention when given (a new one is made in claim)
        existing = Ledger.open(s.ledger, s.budget, s.convention) if Path(s.ledger).exists() else None
        self.convention = get_convention(existing.convention if existing else s.convention or "exact")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = optimizer(self.params, s.lr, s.weight_decay, self.device)
        self.eval_flops = val_cost(self.model, self.convention, self.prep.val_ids)
        self.full_step = full_step_cost(self.model, self.convention, s.chunk, s.batch_size)
        if s.flops is not None:  # the steps the FLOPs pay for, fixed before anything is written
            steps = affordable_steps(s.flops, self.full_step, self.eval_flops, s.eval_every)
            if steps < 1:
                raise UsageError(f"--flops {s.flops:.3g} can't pay for one step of this run and its validation "
                                 f"({self.full_step + self.eval_flops:.3e} FLOPs)")
            self.s = s = dataclasses.replace(s, max_steps=steps)
        self.check_budget(existing)
        self.settings_digest = settings_digest(s)  # recorded with every claim, for the audit
        self.train_model = LossModule(self.model, self.encoding)
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.train_model)
        self.autocast = lambda: autocast(self.device, self.dtype)
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
            self.lock = FolderLock(self.folder)
            if self.folder.is_run():
                saved = self.folder.read_config()
                self.folder.same_run(s, saved, self.data_sha256)
                self.run_id = saved.get("run_id") or s.name  # a run from before run ids kept its name as key
            else:
                self.run_id = new_run_id()
        self.ledger = Ledger.open(s.ledger, s.budget, s.convention)
        if self.main:
            self.folder.not_a_copy(self.run_id, self.ledger.experiments.get(self.run_id, {}).get("folder"))
        if self.world > 1:
            shared = [self.run_id]
            torch.distributed.broadcast_object_list(shared, src=0)
            self.run_id = shared[0]
        if self.main and not self.folder.has_checkpoint():
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
        ckpt = self.folder.read_checkpoint(trainable)
        self.folder.same_settings(ckpt, defining(self.s))
        try:
            with torch.no_grad():
                for n, v in ckpt["trainable"].items():
                    trainable[n].copy_(v)
            self.opt.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise UsageError(f"{self.folder.checkpoint}: its optimizer state does not fit this run ({e})") from None
        self.step_no, self.best_val, self.tokens_seen = ckpt["step"], ckpt["best_val"], ckpt["tokens"]
        self.elapsed, self.flops_used = ckpt["seconds"], ckpt["flops"]
        self.flops_at_start = self.flops_used
        self.last_checkpoint = self.recorded = self.step_no
        set_rng_state(ckpt["rng"])
        self.metrics = self.folder.read_metrics(upto=self.step_no)
        if self.main and self.continuing:
            print(f"resuming {self.out} from step {self.step_no}", file=sys.stderr)
        if self.main:
            try:
                self.folder.write_config(self.config())
            except WriteFailed:
                if not self.continuing:  # no config.json: leave no step-0 checkpoint that would block the folder
                    self.folder.abandon()
                raise
            self.folder.write_metrics(self.metrics)

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
                 "tokens": self.tokens_seen, "seconds": self.elapsed, "flops": self.flops_used, "rng": rng_state(),
                 "settings": defining(self.s)}
        self.folder.write_checkpoint(state)
        self.last_checkpoint = self.step_no
        self.save_weights("last")

    def save_weights(self, kind: str) -> None:
        """LoRA runs: the adapter (PEFT layout) in adapter_{kind}/; full runs: the whole model with its
        tokenizer (Hugging Face layout) in model_{kind}/."""
        self.folder.save_weights(self.model, kind, self.s.full, self.tok, self.s.model)

    # --- work --------------------------------------------------------------------------------------
    def batch(self, nxt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of step `nxt`: (input_ids, labels), each (rows, chunk)."""
        return self.prep.batch(nxt, self.s.batch_size, self.s.seed, slice(self.rank_id, None, self.world))

    def claim_step(self, nxt: int, labels: torch.Tensor) -> tuple[float, float, str | None]:
        """Claim step `nxt` in the ledger before computing it: its FLOPs on these labels and those of
        its validation pass here (0 if none) are charged at once, under the ledger's lock, so no
        other process can spend them and no failure after the compute leaves them uncharged (a
        claim stays charged: the step may have been computed). A step claimed before (a resumed
        run repeating it) is not charged again. Returns (step FLOPs, validation FLOPs, why the
        ledger can't pay for both: None when every process could)."""
        s = self.s
        cost = step_cost(self.model, self.convention, s.chunk, labels).training
        do_eval = nxt % s.eval_every == 0 or nxt == s.max_steps
        eval_share = self.eval_flops if do_eval and self.main else 0.0  # the main process validates
        need = cost + eval_share
        try:
            self.ledger.charge(self.key, "train", need, name=s.name, tokens=len(labels) * s.chunk, step=nxt,
                               folder=str(self.out), settings=self.settings_digest)
            paid = True
        except BudgetExceeded:
            paid = False
        if all_agree(paid, self.world, self.device):
            return cost, eval_share, None
        return cost, eval_share, (f"budget: stopping before step {nxt}, which would cost {need:.3e} FLOPs "
                                  f"with {self.ledger.refresh().remaining:.3e} left of {self.ledger.budget:.3e}")

    def step(self, nxt: int, batch: tuple[torch.Tensor, torch.Tensor], cost: float) -> float:
        """One optimizer step on this step's batch (claimed in the ledger already); returns the training loss."""
        s = self.s
        input_ids, labels = batch
        self.train_model.train()
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(s, nxt)
        with self.autocast():
            loss, _ = self.train_model(to_device(input_ids, self.device), to_device(labels, self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.clip:
            torch.nn.utils.clip_grad_norm_(self.params, s.clip)
        self.opt.step()
        tokens = len(labels) * s.chunk
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
        """The validation loss now (claimed with its step); the best weights saved when it is the lowest so far."""
        val = validation_loss(self.model, self.encoding, self.prep.val_ids, self.tok.pad_id or 0, self.device,
                              self.autocast)
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
        self.folder.append_metrics(row)
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
            plot_losses(self.metrics, self.folder.loss_plot, f"{s.name} ({s.model})", self.encoding.loss_label)
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
        self.folder.write_summary(summary)
        return summary


def progress_bar(t: Trainer):
    if not t.main or t.s.quiet:
        return None
    return tqdm(total=t.s.max_steps, initial=t.step_no, desc=t.s.name, dynamic_ncols=True)


def train(s: TrainSettings, source: ModelSource | None = None) -> dict:
    """Run (or continue) one training run; returns its summary. Raises UsageError/LoadError/DataError
    for a user's mistake, before any work; RunError when the loss or weights stop being finite (the
    last good checkpoint kept). Ctrl-C checkpoints and returns with `interrupted` set."""
    t = Trainer(s, source)
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
            cost, eval_share, stopped = t.claim_step(nxt, batch[1])
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
