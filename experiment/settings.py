"""A run's settings, written once: frozen dataclasses from which the command-line flags, config.json,
resume's "same run?" check, the sweep's grid and the plan's runs are all derived. Each kind is
composed of the groups of `groups` (each field declared in exactly one group):

    TrainSettings   one training run (train.py)
    SweepSettings   the lr x rank grid (train.py sweep); each cell is a TrainSettings
    EvalSettings    one evaluation (eval.py)
    PlanSettings    the report's whole plan (reproduce.py)

`derive` makes one kind from another through the groups they share, and only those: the plan's
training batch size never becomes an evaluation's generation batch size. A field marked `defining`
decides what a training run computes: a checkpoint is continued only by settings equal to it in
every defining field. `check()` chains through all of a kind's groups.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path

from data.baselines import STATISTICAL
from data.simulate import WORLDS
from qwen_min.presets import default_encoding

from .encodings import ForecastTask, encoding_of
from .errors import RunError, UsageError, finite, need
from .groups import (SCRATCH_PREFIX, Charged, Encoded, Forecasting, LoRAShape, Machine, Series, ValueHead, Windows,
                     Work, absolute, as_config, at_least, check_lora, defining, defining_fields, derive,
                     first_difference, from_config, opt)

__all__ = ["RunError", "UsageError", "TrainSettings", "SweepSettings", "EvalSettings", "PlanSettings", "Series",
           "absolute", "as_config", "defining", "defining_fields", "derive", "first_difference", "from_config"]

FRESH_SYSTEMS = 850  # new systems per epoch for the scratch-* presets: the file's training split's size
# the scratch presets' forecaster (see docs/results.md): a head of 20 steps, a mixture of 3 Gaussians, the wide world
SCRATCH_HEAD_STEPS, SCRATCH_COMPONENTS, SCRATCH_WORLD, SCRATCH_INPUTS = 20, 3, "wide-half-clean", "level"


# --- training --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CommonTrain(Machine, LoRAShape, ValueHead, Encoded, Windows, Work, Charged):
    """Flags shared by a single run and the sweep (same names as eval.py where they mean the same)."""

    train_fraction: float = opt(1.0, "share of the training systems used", defining=True)
    max_steps: int = opt(1000, "optimizer steps")
    weight_decay: float = opt(0.0, "AdamW weight decay", defining=True)
    schedule: str = opt("constant", "learning-rate schedule", choices=("constant", "cosine"), defining=True)
    warmup: int = opt(0, "linear warm-up steps", defining=True)
    clip: float = opt(0.0, "gradient-norm clipping (0: off)", defining=True)
    checkpoint_every: int = opt(50, "steps between checkpoints")
    full: bool = opt(False, "train every parameter, no LoRA (default: off, on for the scratch-* presets)", defining=True)
    fresh_systems: int | None = opt(None, "simulate this many new training systems every epoch instead of the file's "
                                    "training split (default 850 for the scratch-* presets, else 0)", type=int,
                                    defining=True)
    world: str | None = opt(None, "where the fresh systems come from: fitted (the ranges fitted to the reference set), "
                            "wide (three predator-prey families, ranges 1.5 times as wide, observation noise and "
                            "amplitude jitter), wide-half-clean (the same, half the systems without noise) or wide-families "
                            "(wide-half-clean with two more families, Ivlev and Holling-Tanner) or wide-tempo "
                            "(wide-half-clean with each system's clock 0.74-1.35 times as fast); see "
                            "data.simulate.WORLDS (default: wide-half-clean for the scratch-* presets, else fitted)",
                            type=str, choices=tuple(WORLDS), defining=True)
    log: str = opt("none", "extra logging", choices=("none", "tensorboard", "wandb"))

    def check(self) -> None:
        """Everything that can be refused before loading anything."""
        at_least(self.max_steps, 1, "--max-steps")
        at_least(self.checkpoint_every, 1, "--checkpoint-every")
        need(finite(self.clip) and self.clip >= 0, f"--clip must be >= 0 (0: off), got {self.clip}")
        need(finite(self.weight_decay) and self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}")
        need(self.fresh_systems is None or self.fresh_systems >= 0,
             f"--fresh-systems must be >= 0, got {self.fresh_systems}")
        if not 0 < self.train_fraction <= 1:
            raise UsageError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        super().check()

    def check_head_flags(self, given: dict) -> None:
        """Refuse the value head's flags among those `given` when the resolved encoding has no value
        head, rather than record flags that change nothing."""
        if encoding_of(self.encoding).spec(self.components, self.value_space, 1) is not None:
            return
        head = [f"--{f.name.replace('_', '-')} {given[f.name]}" for f in fields(ValueHead) if f.name in given]
        need(not head, f"{' and '.join(head)}: settings of the continuous value head; this run reads "
                       f"{self.encoding} text (--encoding continuous has the head)")

    def resolved(self, encoding: str | None = None):
        """With the encoding (`encoding`: what the model reads when none was asked for), the preset
        defaults, the encoding's chunk and stride, and absolute paths filled in, and checked."""
        s = dataclasses.replace(self, encoding=self.encoding or encoding or default_encoding(self.model))
        if s.scratch and not s.full:
            s = dataclasses.replace(s, full=True)
        if s.fresh_systems is None:
            s = dataclasses.replace(s, fresh_systems=FRESH_SYSTEMS if s.scratch else 0)
        if s.head_steps is None:
            s = dataclasses.replace(s, head_steps=SCRATCH_HEAD_STEPS if s.scratch else 1)
        if s.components is None:
            s = dataclasses.replace(s, components=SCRATCH_COMPONENTS if s.scratch else 1)
        if s.value_inputs is None:
            s = dataclasses.replace(s, value_inputs=SCRATCH_INPUTS if s.scratch else "level")
        if s.world is None:
            s = dataclasses.replace(s, world=default_world(s.model))
        s = s.with_windows(s.encoding)
        s.check()
        return dataclasses.replace(s, data=absolute(s.data), ledger=absolute(s.ledger),
                                   model=absolute(s.model) if Path(s.model).exists() else s.model)

    @property
    def spec(self):
        """The continuous head these settings ask for; None for a token encoding."""
        return encoding_of(self.encoding).spec(self.components, self.value_space, self.head_steps, self.value_inputs)


@dataclass(frozen=True)
class TrainSettings(CommonTrain):
    """One training run: LoRA (or every weight with --full) on windows of the training systems."""

    rank: int = opt(8, "LoRA rank", defining=True)
    lr: float = opt(1e-4, "learning rate (AdamW on the trained parameters)", defining=True)
    flops: float | None = opt(None, "train for as many steps as this many FLOPs pay for, validation passes "
                              "included; sets --max-steps, so a --schedule cosine ends at the budget (default: none, "
                              "--max-steps decides)", type=float)
    out: str | None = opt(None, "run directory (default: runs/<name>)", type=str)
    name: str | None = opt(None, "experiment name in the ledger (default: lora-r<rank>-lr<lr>-c<chunk>)", type=str)

    def check(self) -> None:
        check_lora(self.rank, self.alpha, self.dropout)
        need(finite(self.lr) and self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(self.flops is None or (finite(self.flops) and self.flops > 0),
             f"--flops must be a positive number, got {self.flops}")
        super().check()

    def resolved(self, encoding: str | None = None) -> "TrainSettings":
        """With the preset defaults, the name and the run directory filled in, and checked."""
        s = super().resolved(encoding)
        name = s.name or s.default_name()
        return dataclasses.replace(s, name=name, out=absolute(s.out or Path("runs") / name))

    def default_name(self) -> str:
        frac = "" if self.train_fraction == 1 else f"-f{self.train_fraction:g}"
        enc = encoding_of(self.encoding).run_suffix(self.spec)
        enc += "" if self.world == default_world(self.model) else f"-{self.world}"  # runs of two worlds: two folders
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
        return grid_name(self.prefix, rank, lr)

    def runs(self, encoding: str | None = None) -> list[TrainSettings]:
        """The grid's runs, rank-major, each in its own folder under `out`."""
        return [derive(TrainSettings, self, rank=rank, lr=lr, name=self.run_name(rank, lr),
                       out=str(Path(self.out) / self.run_name(rank, lr))).resolved(encoding)
                for rank in self.ranks for lr in self.lrs]


def default_world(model: str) -> str:
    """Where a model's fresh training systems come from when no --world is given."""
    return SCRATCH_WORLD if str(model).startswith(SCRATCH_PREFIX) else "fitted"


def grid_name(prefix: str, rank: int, lr: float) -> str:
    """The name of a grid cell's run (the sweep's and the plan's): PREFIX-r{rank}-lr{lr}."""
    return f"{prefix}-r{rank}-lr{lr:g}"


# --- evaluation ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSettings(Machine, Encoded, Forecasting, Work, Charged):
    """Forecasts of a split's systems by a model (and adapters), scored against the baselines."""

    adapter: list[str] = opt([], "LoRA adapter (PEFT layout, or a train.py run directory); repeat to compare several "
                             "(default: none, the model alone)", type=str, flag="append")
    no_base: bool = opt(False, "with --adapter, skip the untuned model (default: off)")
    split: str = opt("validation", "which split's systems (all: every system of the file, e.g. one simulated with a "
                     "seed no training run used)", choices=("validation", "train", "all"))
    scale_from: str | None = opt(None, "a series file whose validation split's scale (alpha) scales the values and "
                                 "every figure, so that evaluations of several files compare (default: the "
                                 "evaluated split's own scale)", type=str)
    limit: int | None = opt(None, "evaluate the first N systems of the split (default: all)", type=int)
    batch_size: int = opt(8, "systems per generation batch, each with every context and sample")
    samples: int = opt(1, "samples per prompt (median); 1 with temperature 0 is greedy")
    temperature: float = opt(0.0, "sampling temperature (0: greedy)")
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

    def check(self) -> None:
        """Refuse what can't be evaluated, before anything is read."""
        need(finite(self.temperature) and self.temperature >= 0,
             f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        need(self.workers is None or self.workers >= 1, f"--workers must be at least 1, got {self.workers}")
        need(self.ode_evaluations >= 1, f"--ode-evaluations must be at least 1, got {self.ode_evaluations}")
        if self.samples < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise UsageError("--samples, --batch-size and --limit must be at least 1")
        statistical = [b for b in self.baselines if b in STATISTICAL]
        need(not statistical or importlib.util.find_spec("statsforecast") is not None,
             f"--baselines {' '.join(statistical)} needs statsforecast, which is not installed: "
             f"pip install -e \".[baselines]\"")
        if self.samples > 1 and self.temperature <= 0:
            raise UsageError("--samples > 1 needs --temperature > 0 (greedy samples would all be equal)")
        super().check()

    def check_points(self, n_points: int) -> None:
        """Refuse contexts and a horizon longer than the file's series of `n_points` time points."""
        if max(self.ctx) + self.horizon > n_points:
            raise UsageError(f"--ctx {max(self.ctx)} + --horizon {self.horizon} needs {max(self.ctx) + self.horizon} "
                             f"time points; {self.data} has {n_points}")

    def resolved(self, encoding: str) -> "EvalSettings":
        """With the encoding that the model and adapters read (see forecast.resolve_encoding), checked
        for what that encoding needs of the rest (the other settings were checked before)."""
        encoding_of(encoding).check(self.decimals)
        return dataclasses.replace(self, encoding=encoding)

    @property
    def task(self) -> ForecastTask:
        """What each forecast is asked to do, as the encodings take it."""
        return ForecastTask(self.contexts, self.horizon, self.samples, self.temperature, self.decimals)

    @property
    def methods(self) -> list[str]:
        """The baselines to score, each once, --no-ode-fit applied."""
        return [b for b in dict.fromkeys(self.baselines) if not (b == "ode_fit" and self.no_ode_fit)]

    @property
    def ledger_name(self) -> str:
        return self.name or f"eval-{Path(self.out).name}"


# --- the plan --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanSettings(Machine, LoRAShape, Encoded, Windows, Forecasting, Work):
    """The reference report's whole experiment plan on one ledger and one FLOPs budget."""

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
    eval_limit: int | None = opt(None, "validation systems in the forecast evaluations (default: all)", type=int)

    def check(self) -> None:
        need(finite(self.budget) and self.budget > 0, f"--budget must be a positive number, got {self.budget}")
        if any(s < 0 for s in self.shares) or abs(sum(self.shares) - 1) > 1e-6:
            raise UsageError(f"--shares must be three non-negative numbers summing to 1, got {self.shares}")
        super().check()

    def resolved(self, encoding: str) -> "PlanSettings":
        """With the encoding (the model's own when none was asked for), its chunk and stride, checked."""
        s = dataclasses.replace(self, encoding=self.encoding or encoding)
        s = dataclasses.replace(s.with_windows(s.encoding), stride=self.stride)  # --stride: given at --chunk, scaled
        s.check()
        return s

    def stride_for(self, chunk: int) -> int:
        """The stride at another chunk size: --stride scaled with the chunk (the encoding's default
        overlap when no --stride was given)."""
        if self.stride is None:
            return encoding_of(self.encoding).default_stride(chunk)
        return max(1, round(chunk * self.stride / self.chunk))
