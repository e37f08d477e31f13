"""A run's settings, written once: frozen dataclasses from which the command-line flags, config.json,
resume's "same run?" check, the sweep's grid and the plan's runs are all derived.

    TrainSettings   one training run (train.py)
    SweepSettings   the lr x rank grid (train.py sweep); each cell is a TrainSettings
    EvalSettings    one evaluation (eval.py)
    PlanSettings    the report's whole plan (reproduce.py, train.py plan)

Every field carries its help text and, where it is not plain, how the command line reads it
(`choices`, `nargs`, `flag`). A field marked `defining` decides what a training run computes: a
checkpoint is continued only by settings equal to it in every defining field.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import lora
from data.baselines import STATISTICAL
from data.encodings import ENCODINGS
from flops.ledger import DEFAULT_BUDGET
from qwen_min import LoadError
from qwen_min.continuous import VALUE_SPACES, ValueSpec
from qwen_min.presets import default_encoding

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_DATA = "data/lotka_volterra_data.h5"
SCRATCH_PREFIX = "scratch-"
TOKEN_CHUNK = 512  # default training window in tokens (the report's)
CONTINUOUS_CHUNK = 100  # default training window in time steps with --encoding continuous: a whole series
FRESH_SYSTEMS = 850  # new systems per epoch for the scratch-* presets: the file's training split's size


class UsageError(Exception):
    """A bad setting: printed as one line, exit status 2, before any work."""


class RunError(Exception):
    """A run that stopped on a problem of its own (a loss that is no longer finite): printed as one
    line, exit status 1; what it had saved is kept."""


def need(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def requested_spec(s) -> ValueSpec | None:
    """The continuous head that settings `s` ask for; None for a token encoding."""
    return ValueSpec(s.components, s.value_space) if s.encoding == "continuous" else None


def check_encoding(s) -> None:
    """What an encoding needs of the other settings (a run's, or an evaluation's with --encoding)."""
    encoding = getattr(s, "encoding", None)
    if encoding == "bins":
        need(s.decimals == 2, f"--encoding bins: the value vocabulary is 0.00 to 9.99, so --decimals must be 2, "
                              f"got {s.decimals}")
    if hasattr(s, "components"):
        need(s.components >= 1, f"--components must be at least 1, got {s.components}")


def check_lora(rank, alpha, dropout) -> None:
    """LoRA's own checks, in the flags' names."""
    try:
        lora.check_config(rank, alpha, dropout, name=lambda key: f"--{key}")
    except LoadError as e:
        raise UsageError(str(e)) from None


def check_shared(s) -> None:
    """The checks every kind of settings with these fields needs (seeds, decimals, device)."""
    for name in ("seed", "split_seed"):
        if hasattr(s, name):
            need(getattr(s, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(s, name)}")
    if hasattr(s, "decimals"):
        need(1 <= s.decimals <= 6, f"--decimals must be between 1 and 6, got {s.decimals}")
    if getattr(s, "budget", None) is not None:
        need(finite(s.budget) and s.budget > 0, f"--budget must be a positive number, got {s.budget}")


def opt(default, help: str, *, type=None, choices=None, nargs=None, metavar=None, flag=None, defining=False):
    """A settings field with what the command line needs to read it. `type` is the element type
    (taken from the default when not given); a list default reads `nargs` values ('+' unless told)."""
    meta = {"help": help, "type": type, "choices": choices, "nargs": nargs, "metavar": metavar, "flag": flag,
            "defining": defining}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Charged:
    """Where the work is charged: flags shared by training, the sweep and evaluation."""

    ledger: str = opt("runs/ledger.json", "FLOPs ledger shared by experiments")
    budget: float | None = opt(None, f"FLOPs budget of a new ledger (default {DEFAULT_BUDGET:.0e}; an existing "
                               "ledger keeps its own, and another value is refused)", type=float)
    convention: str | None = opt(None, "FLOPs convention of a new ledger (default exact; an existing ledger keeps its "
                                 "own)", type=str, choices=("exact", "coursework"))


# --- training --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CommonTrain(Charged):
    """Flags shared by a single run and the sweep (same names as eval.py where they mean the same)."""

    model: str = opt(DEFAULT_MODEL, "hub id, local directory, tiny-random or scratch-1m/5m/20m", defining=True)
    data: str = opt(DEFAULT_DATA, "HDF5 series file (simulated if the default is missing)", defining=True)
    split_seed: int = opt(0, "seed of the 850/150 train/validation split", defining=True)
    encoding: str | None = opt(None, "how a series enters the model: digits (LLMTIME text, a token per character), "
                               "bins (a token per value, 0.00-9.99) or continuous (a position per time step, a linear "
                               "input layer and a Gaussian-mixture head) (default: continuous for the scratch-* "
                               "presets, else digits)", type=str, choices=ENCODINGS, defining=True)
    components: int = opt(1, "Gaussians per species in the continuous head (1: a Gaussian)", defining=True)
    value_space: str = opt("log", "where the continuous head's Gaussians live: log (of log(value + 0.01), so "
                           "changes are relative) or linear (of the scaled value)", choices=VALUE_SPACES,
                           defining=True)
    chunk: int | None = opt(None, "positions per training window: tokens, or time steps with --encoding continuous "
                            "(default: 512 tokens, 100 steps)", type=int, defining=True)
    stride: int | None = opt(None, "positions between window starts (default: 268 per 512 of --chunk, so 268 at the "
                             "default chunk; --chunk with --encoding continuous)", type=int, defining=True)
    batch_size: int = opt(4, "windows per step (over all processes)", defining=True)
    eval_every: int = opt(200, "steps between validation passes")
    val_limit: int | None = opt(None, "validation systems used for the loss (default: all)", type=int)
    alpha: float | None = opt(None, "LoRA alpha (default: the rank)", type=float, defining=True)
    dropout: float = opt(0.0, "LoRA dropout", defining=True)
    targets: str = opt("q_proj,v_proj", "comma-separated projections to adapt", defining=True)
    weight_decay: float = opt(0.0, "AdamW weight decay", defining=True)
    schedule: str = opt("constant", "learning-rate schedule", choices=("constant", "cosine"), defining=True)
    warmup: int = opt(0, "linear warm-up steps", defining=True)
    clip: float = opt(0.0, "gradient-norm clipping (0: off)", defining=True)
    decimals: int = opt(2, "decimals per value in the text", defining=True)
    seed: int = opt(0, "seed of the LoRA initialisation, dropout and batch order", defining=True)
    device: str = opt("cpu", "cpu, cuda or cuda:N")
    dtype: str | None = opt(None, "fp32 or bf16 (default: fp32 on the CPU, bf16 autocast on CUDA)", type=str)
    checkpoint_every: int = opt(50, "steps between checkpoints")
    full: bool = opt(False, "train every parameter, no LoRA (default: off, on for the scratch-* presets)", defining=True)
    fresh_systems: int | None = opt(None, "simulate this many new training systems every epoch instead of the file's "
                                    "training split (default 850 for the scratch-* presets, else 0)", type=int,
                                    defining=True)
    log: str = opt("none", "extra logging", choices=("none", "tensorboard", "wandb"))
    quiet: bool = opt(False, "no progress bar (default: off)")

    def check(self) -> None:
        """Everything that can be refused before loading anything."""
        check_shared(self)
        check_encoding(self)
        need(self.chunk is None or self.chunk >= 2, f"--chunk must be at least 2, got {self.chunk}")
        if self.batch_size < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise UsageError("--batch-size, --max-steps, --eval-every and --checkpoint-every must be at least 1")
        if self.stride is not None and self.chunk is not None and not 1 <= self.stride <= self.chunk:
            raise UsageError(f"--stride must be between 1 and --chunk ({self.chunk}), got {self.stride}")
        need(finite(self.clip) and self.clip >= 0, f"--clip must be >= 0 (0: off), got {self.clip}")
        need(finite(self.weight_decay) and self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}")
        if self.fresh_systems is not None and self.fresh_systems < 0:
            raise UsageError(f"--fresh-systems must be >= 0, got {self.fresh_systems}")
        if self.val_limit is not None and self.val_limit < 1:
            raise UsageError(f"--val-limit must be at least 1, got {self.val_limit}")
        try:
            lora.parse_targets(self.targets)
        except LoadError as e:
            raise UsageError(f"--targets: {e}") from None
        check_lora(1, self.alpha, self.dropout)  # the rank: each run's own (a sweep has several)

    @property
    def scratch(self) -> bool:
        return str(self.model).startswith(SCRATCH_PREFIX)


@dataclass(frozen=True)
class TrainSettings(CommonTrain):
    """One training run: LoRA (or every weight with --full) on windows of the training systems."""

    rank: int = opt(8, "LoRA rank", defining=True)
    lr: float = opt(1e-4, "learning rate (AdamW on the trained parameters)", defining=True)
    train_fraction: float = opt(1.0, "share of the training systems used", defining=True)
    max_steps: int = opt(1000, "optimizer steps")
    flops: float | None = opt(None, "train for as many steps as this many FLOPs pay for, validation passes "
                              "included; sets --max-steps, so a --schedule cosine ends at the budget (default: none, "
                              "--max-steps decides)", type=float)
    out: str | None = opt(None, "run directory (default: runs/<name>)", type=str)
    name: str | None = opt(None, "experiment name in the ledger (default: lora-r<rank>-lr<lr>-c<chunk>)", type=str)

    def check(self) -> None:
        check_lora(self.rank, self.alpha, self.dropout)
        need(finite(self.lr) and self.lr > 0, f"--lr must be positive, got {self.lr}")
        if self.max_steps < 1:
            raise UsageError("--batch-size, --max-steps, --eval-every and --checkpoint-every must be at least 1")
        need(self.flops is None or (finite(self.flops) and self.flops > 0),
             f"--flops must be a positive number, got {self.flops}")
        if not 0 < self.train_fraction <= 1:
            raise UsageError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        super().check()

    def resolved(self) -> "TrainSettings":
        """With the preset defaults, the name and the run directory filled in, and checked."""
        s = self
        if s.encoding is None:
            s = dataclasses.replace(s, encoding=default_encoding(s.model))
        if s.scratch and not s.full:
            s = dataclasses.replace(s, full=True)
        if s.fresh_systems is None:
            s = dataclasses.replace(s, fresh_systems=FRESH_SYSTEMS if s.scratch else 0)
        if s.chunk is None:
            s = dataclasses.replace(s, chunk=CONTINUOUS_CHUNK if s.encoding == "continuous" else TOKEN_CHUNK)
        if s.stride is None:
            s = dataclasses.replace(s, stride=s.chunk if s.encoding == "continuous" else default_stride(s.chunk))
        s.check()
        name = s.name or s.default_name()
        return dataclasses.replace(s, name=name, out=absolute(s.out or Path("runs") / name), data=absolute(s.data),
                                   ledger=absolute(s.ledger), model=absolute(s.model) if Path(s.model).exists() else s.model)

    def default_name(self) -> str:
        frac = "" if self.train_fraction == 1 else f"-f{self.train_fraction:g}"
        enc = "" if self.encoding == "digits" else f"-{self.encoding}"
        if self.encoding == "continuous":  # a head other than the default's says so: runs of both don't share a folder
            enc += ("" if self.value_space == "log" else f"-{self.value_space}") + (
                "" if self.components == 1 else f"-k{self.components}")
        if self.full:
            return f"full-{Path(str(self.model)).name}{enc}-lr{self.lr:g}-c{self.chunk}{frac}"
        return f"lora-r{self.rank}{enc}-lr{self.lr:g}-c{self.chunk}{frac}"


@dataclass(frozen=True)
class SweepSettings(CommonTrain):
    """A learning-rate x rank grid of LoRA runs on one ledger, with its table."""

    lrs: list[float] = opt([1e-5, 5e-5, 1e-4], "learning rates", type=float)
    ranks: list[int] = opt([2, 4, 8], "LoRA ranks", type=int)
    train_fraction: float = opt(0.2, "share of the training systems used")
    max_steps: int = opt(200, "steps of every run")
    out: str = opt("runs/sweep", "folder for the runs and the table")
    prefix: str = opt("grid", "experiment names are PREFIX-r{rank}-lr{lr}")

    def run_name(self, rank: int, lr: float) -> str:
        return f"{self.prefix}-r{rank}-lr{lr:g}"

    def runs(self) -> list[TrainSettings]:
        """The grid's runs, rank-major, each in its own folder under `out`."""
        return [derive(TrainSettings, self, rank=rank, lr=lr, name=self.run_name(rank, lr),
                       out=str(Path(self.out) / self.run_name(rank, lr))).resolved()
                for rank in self.ranks for lr in self.lrs]


# --- evaluation ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSettings(Charged):
    """Forecasts of a split's systems by a model (and adapters), scored against the baselines."""

    model: str = opt(DEFAULT_MODEL, "hub id, local directory, tiny-random, or a scratch run's model_best")
    adapter: list[str] = opt([], "LoRA adapter (PEFT layout, or a train.py run directory); repeat to compare several (default: none, the model alone)",
                             type=str, flag="append")
    no_base: bool = opt(False, "with --adapter, skip the untuned model (default: off)")
    encoding: str | None = opt(None, "how the model reads a series (default: what the model or the --adapter's run "
                               "says; for a preset, continuous for scratch-* and digits for tiny-random)", type=str,
                               choices=ENCODINGS)
    data: str = opt(DEFAULT_DATA, "HDF5 series file (simulated if the default is missing)")
    split: str = opt("validation", "which split's systems (all: every system of the file, e.g. one simulated with a "
                     "seed no training run used)", choices=("validation", "train", "all"))
    split_seed: int = opt(0, "seed of the 850/150 train/validation split")
    ctx: list[int] = opt([40, 80], "context lengths in time steps", type=int)
    horizon: int = opt(20, "steps to forecast")
    limit: int | None = opt(None, "evaluate the first N systems of the split (default: all)", type=int)
    batch_size: int = opt(8, "systems per generation batch, each with every context and sample")
    samples: int = opt(1, "samples per prompt (median); 1 with temperature 0 is greedy")
    temperature: float = opt(0.0, "sampling temperature (0: greedy)")
    decimals: int = opt(2, "decimals per value in the text")
    seed: int = opt(0, "seed of the sampling and the ODE fit's starting points")
    device: str = opt("cpu", "cpu, cuda or cuda:N")
    dtype: str | None = opt(None, "fp32 or bf16 (default: fp32 on the CPU, bf16 on CUDA)", type=str)
    out: str = opt("runs/eval", "output folder")
    name: str | None = opt(None, "experiment name in the ledger (default: eval-<out folder>)", type=str)
    baselines: list[str] = opt(["persistence", "parroting", "ode_fit"], "baselines scored on the same systems "
                               "(arima, ets, theta need `pip install -e \".[baselines]\"`)", type=str, nargs="*",
                               choices=("persistence", "parroting", "ode_fit", *STATISTICAL))
    no_ode_fit: bool = opt(False, "skip the ODE-fit baseline, the same as leaving ode_fit out of --baselines (default: off)")
    ode_model: str = opt("rosenzweig-macarthur", "model family the ODE fit uses",
                         choices=("rosenzweig-macarthur", "classical"))
    ode_evaluations: int = opt(400_000, "calls of the ODE's right-hand side the fit may spend per system and context "
                               "(about 13 s here; the forecast's integration may spend as many again); a fit that "
                               "finds nothing within them forecasts persistence")
    workers: int | None = opt(None, "processes for the ODE fits (default: one per CPU)", type=int)
    plot_systems: list[int] = opt([0, 1, 2], "positions in the evaluated list to draw forecasts for", type=int,
                                  nargs="*")
    quiet: bool = opt(False, "no progress bar (default: off)")

    def check(self, n_points: int | None = None) -> None:
        """Refuse what can't be evaluated (on a series of `n_points` time points, when given)."""
        check_shared(self)
        check_encoding(self)
        need(finite(self.temperature) and self.temperature >= 0,
             f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        need(self.workers is None or self.workers >= 1, f"--workers must be at least 1, got {self.workers}")
        need(self.ode_evaluations >= 1, f"--ode-evaluations must be at least 1, got {self.ode_evaluations}")
        if any(c < 1 for c in self.ctx) or self.horizon < 1:
            raise UsageError("--ctx values and --horizon must be at least 1")
        if n_points is not None and max(self.ctx) + self.horizon > n_points:
            raise UsageError(f"--ctx {max(self.ctx)} + --horizon {self.horizon} needs {max(self.ctx) + self.horizon} "
                             f"time points; {self.data} has {n_points}")
        if self.samples < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise UsageError("--samples, --batch-size and --limit must be at least 1")
        statistical = [b for b in self.baselines if b in STATISTICAL]
        need(not statistical or importlib.util.find_spec("statsforecast") is not None,
             f"--baselines {' '.join(statistical)} needs statsforecast, which is not installed: "
             f"pip install -e \".[baselines]\"")
        if self.samples > 1 and self.temperature <= 0:
            raise UsageError("--samples > 1 needs --temperature > 0 (greedy samples would all be equal)")

    @property
    def methods(self) -> list[str]:
        """The baselines to score, each once, --no-ode-fit applied."""
        return [b for b in dict.fromkeys(self.baselines) if not (b == "ode_fit" and self.no_ode_fit)]

    @property
    def contexts(self) -> list[int]:
        """The context lengths, each once, shortest first."""
        return sorted(set(self.ctx))

    @property
    def ledger_name(self) -> str:
        return self.name or f"eval-{Path(self.out).name}"


# --- the plan --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanSettings:
    """The reference report's whole experiment plan on one ledger and one FLOPs budget."""

    model: str = opt(DEFAULT_MODEL, "hub id, local directory, or tiny-random")
    data: str = opt(DEFAULT_DATA, "HDF5 series file (simulated if the default is missing)")
    out: str = opt("runs/report", "folder for every run, the ledger and report.md")
    budget: float = opt(1e17, "FLOPs for the whole plan")
    convention: str = opt("exact", "FLOPs convention of the plan's ledger", choices=("exact", "coursework"))
    shares: list[float] = opt([0.1, 0.7, 0.2], "budget shares: untuned + default run, grid + chunks, final run",
                              type=float, nargs=3, metavar=("BASE", "SEARCH", "FINAL"))
    lrs: list[float] = opt([1e-5, 5e-5, 1e-4], "learning rates of the grid", type=float)
    ranks: list[int] = opt([2, 4, 8], "LoRA ranks of the grid", type=int)
    chunks: list[int] = opt([128, 768], "chunk sizes tried at the best setting", type=int)
    grid_fraction: float = opt(0.2, "share of the training systems in the grid")
    default_rank: int = opt(4, "LoRA rank of the default run")
    default_lr: float = opt(1e-5, "learning rate of the default run")
    batch_size: int = opt(4, "windows per training step")
    chunk: int = opt(512, "tokens per training window")
    stride: int = opt(268, "stride at --chunk; other chunks scale it")
    eval_every: int = opt(200, "steps between validation passes of a run")
    val_limit: int | None = opt(None, "validation systems in the training runs' loss (default: all)", type=int)
    eval_limit: int | None = opt(None, "validation systems in the forecast evaluations (default: all)", type=int)
    ctx: list[int] = opt([40, 80], "context lengths of the evaluations", type=int)
    horizon: int = opt(20, "steps forecast in the evaluations")
    plot_systems: list[int] = opt([0, 1, 2], "positions in the evaluated list to draw forecasts for", type=int,
                                  nargs="*")
    seed: int = opt(0, "seed of every run and evaluation")
    device: str = opt("cpu", "cpu, cuda or cuda:N")
    dtype: str | None = opt(None, "fp32 or bf16 (default: fp32 on the CPU, bf16 on CUDA)", type=str)
    quiet: bool = opt(False, "no progress bars (default: off)")

    def check(self) -> None:
        check_shared(self)
        for flag, value in (("--batch-size", self.batch_size), ("--eval-every", self.eval_every),
                            ("--chunk", self.chunk)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        if any(s < 0 for s in self.shares) or abs(sum(self.shares) - 1) > 1e-6:
            raise UsageError(f"--shares must be three non-negative numbers summing to 1, got {self.shares}")

    def stride_for(self, chunk: int) -> int:
        """The stride at another chunk size: --stride scaled with the chunk."""
        return max(1, round(chunk * self.stride / self.chunk))


# --- between kinds ---------------------------------------------------------------------------------

def default_stride(chunk: int) -> int:
    """The reference report's window overlap (stride 268 at chunk 512) at another chunk size."""
    return max(1, round(chunk * 268 / 512))


def absolute(path) -> str:
    """A path as config.json keeps it: absolute, so a run resumed from another folder finds its files."""
    return str(Path(path).expanduser().resolve())


def derive(cls, source, **changes):
    """Settings of kind `cls` taking every field it shares with `source`, then `changes`."""
    names = {f.name for f in fields(cls)}
    shared = {f.name: getattr(source, f.name) for f in fields(source) if f.name in names}
    return cls(**{**shared, **changes})


def as_config(settings) -> dict:
    """The settings as written to config.json."""
    return dataclasses.asdict(settings)


def from_config(cls, saved: dict):
    """Settings of kind `cls` from a saved config.json (keys that are not fields are ignored)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in saved.items() if k in names})


def defining_fields(cls) -> list[str]:
    return [f.name for f in fields(cls) if f.metadata.get("defining")]


def first_difference(settings, saved: dict) -> str | None:
    """The first defining field in which `settings` differ from a saved config, or None."""
    for name in defining_fields(type(settings)):
        if name in saved and saved[name] != getattr(settings, name):
            return name
    return None
