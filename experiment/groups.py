"""The groups of fields every kind of settings is made of, each field declared in exactly one:

    Machine      device, dtype, quiet
    Work         model, seed
    Series       data, split_seed, decimals
    Encoded      encoding (a Series read by an encoding, which checks what it needs of it)
    ValueHead    components, value_space, head_steps, value_inputs (a continuous model's head and inputs)
    LoRAShape    alpha, dropout, targets (the rank is each run's own: a sweep has several)
    Windows      batch_size, chunk, stride, eval_every, val_limit (training batches)
    Forecasting  ctx, horizon, plot_systems
    Charged      ledger, budget, convention

and what is derived from fields alone. A field (`opt`) carries its help text and, where it is not
plain, how the command line reads it (`choices`, `nargs`, `flag`); each group checks its own fields
and calls the next group's check; `derive` makes one kind of settings from another through the
groups they share; config.json and back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import lora
from data import DEFAULT_PATH
from flops.ledger import DEFAULT_BUDGET
from qwen_min import LoadError
from qwen_min.continuous import VALUE_INPUTS, VALUE_SPACES, ValueSpec

from .encodings import ENCODINGS, encoding_of
from .errors import UsageError, finite, need

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
SCRATCH_PREFIX = "scratch-"


def opt(default, help: str, *, type=None, choices=None, nargs=None, metavar=None, flag=None, defining=False):
    """A settings field with what the command line needs to read it. `type` is the element type
    (taken from the default when not given); a list default reads `nargs` values ('+' unless told)."""
    meta = {"help": help, "type": type, "choices": choices, "nargs": nargs, "metavar": metavar, "flag": flag,
            "defining": defining}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Group:
    """A group of settings fields; `check()` runs every group's own checks, each calling the next."""

    def check(self) -> None:
        pass


def at_least(value, least: int, flag: str) -> None:
    need(value >= least, f"{flag} must be at least {least}, got {value}")


# --- the groups ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Machine(Group):
    device: str = opt("cpu", "cpu, cuda or cuda:N")
    dtype: str | None = opt(None, "fp32 or bf16 (default: fp32 on the CPU, bf16 on CUDA)", type=str)
    quiet: bool = opt(False, "no progress bar (default: off)")


@dataclass(frozen=True)
class Work(Group):
    model: str = opt(DEFAULT_MODEL, "hub id, local directory (a scratch run's model_best too), or a preset: "
                     "tiny-random, scratch-1m, scratch-5m, scratch-20m", defining=True)
    seed: int = opt(0, "seed of the LoRA initialisation, dropout and batch order, and of an evaluation's sampling "
                    "and ODE-fit starting points", defining=True)

    def check(self) -> None:
        need(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        super().check()

    @property
    def scratch(self) -> bool:
        return str(self.model).startswith(SCRATCH_PREFIX)


@dataclass(frozen=True)
class Series(Group):
    data: str = opt(str(DEFAULT_PATH), "HDF5 series file (simulated if the default is missing)", defining=True)
    split_seed: int = opt(0, "seed of the 850/150 train/validation split", defining=True)
    decimals: int = opt(2, "decimals per value in the text", defining=True)

    def check(self) -> None:
        need(self.split_seed >= 0, f"--split-seed must be >= 0, got {self.split_seed}")
        need(1 <= self.decimals <= 6, f"--decimals must be between 1 and 6, got {self.decimals}")
        super().check()


@dataclass(frozen=True)
class Encoded(Series):
    encoding: str | None = opt(None, "how a series enters the model: digits (LLMTIME text, a token per character), "
                               "bins (a token per value, 0.00-9.99) or continuous (a position per time step, a linear "
                               "input layer and a Gaussian-mixture head) (default: what a model directory or an "
                               "adapter's run says; continuous for the scratch-* presets, else digits)", type=str,
                               choices=tuple(ENCODINGS), defining=True)

    def check(self) -> None:
        if self.encoding is not None:
            encoding_of(self.encoding).check(self.decimals)
        super().check()


MAX_COMPONENTS, MAX_HEAD_STEPS = 64, 100  # a head of k components x steps x 6 outputs: bounded before it is made


@dataclass(frozen=True)
class ValueHead(Group):
    components: int | None = opt(None, "Gaussians per species in the continuous head, a mixture (1: a Gaussian) "
                                 "(default: 3 for the scratch-* presets, else 1)", type=int, defining=True)
    value_space: str = opt("log", "where the continuous head's Gaussians live: log (of log(value + 0.01), so "
                           "changes are relative) or linear (of the scaled value)", choices=VALUE_SPACES,
                           defining=True)

    head_steps: int | None = opt(None, "time steps the continuous head gives at once from each position: 1 "
                                 "forecasts a step at a time, each fed back; 20 a whole forecast from one pass over "
                                 "the context (a patch, trained on every step of it) (default: 20 for the scratch-* "
                                 "presets, else 1)", type=int, defining=True)
    value_inputs: str | None = opt(None, "what the continuous model reads at each step: level (the value in the "
                                   "space) or centred (that minus the series' running mean so far: in log space "
                                   "each species' size divided out, so the model reads a series' shape) (default: "
                                   "level)", type=str, choices=VALUE_INPUTS, defining=True)

    @staticmethod
    def settings_of(spec: ValueSpec) -> dict:
        """These fields' values (config.json's keys) for the head `spec`: what `spec` reads back."""
        return {"components": spec.components, "value_space": spec.space, "head_steps": spec.steps,
                "value_inputs": spec.inputs}

    def check(self) -> None:
        if self.components is not None:  # None: the preset's default, filled in when resolved
            at_least(self.components, 1, "--components")
            need(self.components <= MAX_COMPONENTS, f"--components must be at most {MAX_COMPONENTS}, got {self.components}")
        need(self.head_steps is None or 1 <= self.head_steps <= MAX_HEAD_STEPS,
             f"--head-steps must be 1 to {MAX_HEAD_STEPS} (a series' length), got {self.head_steps}")
        super().check()


@dataclass(frozen=True)
class LoRAShape(Group):
    alpha: float | None = opt(None, "LoRA alpha (default: the rank)", type=float, defining=True)
    dropout: float = opt(0.0, "LoRA dropout", defining=True)
    targets: str = opt("q_proj,v_proj", "comma-separated projections to adapt", defining=True)

    def check(self) -> None:
        try:
            lora.parse_targets(self.targets)
        except LoadError as e:
            raise UsageError(f"--targets: {e}") from None
        check_lora(1, self.alpha, self.dropout)  # the rank: each run's own (a sweep has several)
        super().check()


@dataclass(frozen=True)
class Windows(Group):
    batch_size: int = opt(4, "windows per training step (over all processes)", defining=True)
    chunk: int | None = opt(None, "positions per training window: tokens, or time steps with --encoding continuous "
                            "(default: 512 tokens, 100 steps)", type=int, defining=True)
    stride: int | None = opt(None, "positions between window starts (default: 268 per 512 of --chunk, so 268 at the "
                             "default chunk; --chunk with --encoding continuous)", type=int, defining=True)
    eval_every: int = opt(200, "steps between validation passes")
    val_limit: int | None = opt(None, "validation systems used for a run's loss (default: all)", type=int)

    def check(self) -> None:
        at_least(self.batch_size, 1, "--batch-size")
        at_least(self.eval_every, 1, "--eval-every")
        need(self.chunk is None or self.chunk >= 2, f"--chunk must be at least 2, got {self.chunk}")
        if self.stride is not None and self.chunk is not None and not 1 <= self.stride <= self.chunk:
            raise UsageError(f"--stride must be between 1 and --chunk ({self.chunk}), got {self.stride}")
        need(self.val_limit is None or self.val_limit >= 1, f"--val-limit must be at least 1, got {self.val_limit}")
        super().check()

    def with_windows(self, encoding: str):
        """Chunk and stride filled in with the encoding's defaults where not given."""
        enc = encoding_of(encoding)
        chunk = self.chunk or enc.default_chunk
        return dataclasses.replace(self, chunk=chunk, stride=self.stride or enc.default_stride(chunk))


@dataclass(frozen=True)
class Forecasting(Group):
    ctx: list[int] = opt([40, 80], "context lengths in time steps", type=int)
    horizon: int = opt(20, "steps to forecast")
    plot_systems: list[int] | None = opt(None, "positions in the evaluated list to draw forecasts for (default: "
                                         "0 1 2, those there are)", type=int, nargs="*")

    def check(self) -> None:
        if any(c < 1 for c in self.ctx) or self.horizon < 1:
            raise UsageError("--ctx values and --horizon must be at least 1")
        super().check()

    @property
    def contexts(self) -> list[int]:
        """The context lengths, each once, shortest first."""
        return sorted(set(self.ctx))

    def check_plots(self, n_systems: int) -> None:
        """Refuse --plot-systems positions that are not among the `n_systems` evaluated."""
        outside = [p for p in self.plot_systems or [] if not 0 <= p < n_systems]
        if outside:
            raise UsageError(f"--plot-systems {' '.join(map(str, outside))}: outside the {n_systems} systems "
                             f"evaluated (positions 0 to {n_systems - 1})")

    def plots(self, n_systems: int) -> list[int]:
        """The positions drawn: --plot-systems, else the first three of the `n_systems` there are."""
        return self.plot_systems if self.plot_systems is not None else list(range(min(3, n_systems)))


@dataclass(frozen=True)
class Charged(Group):
    """Where the work is charged: flags shared by training, the sweep and evaluation."""

    ledger: str = opt("runs/ledger.json", "FLOPs ledger shared by experiments")
    budget: float | None = opt(None, f"FLOPs budget of a new ledger (default {DEFAULT_BUDGET:.0e}; an existing "
                               "ledger keeps its own, and another value is refused)", type=float)
    convention: str | None = opt(None, "FLOPs convention of a new ledger (default exact; an existing ledger keeps its "
                                 "own)", type=str, choices=("exact", "coursework"))

    def check(self) -> None:
        need(self.budget is None or (finite(self.budget) and self.budget > 0),
             f"--budget must be a positive number, got {self.budget}")
        super().check()


def check_lora(rank, alpha, dropout) -> None:
    """LoRA's own checks, in the flags' names."""
    try:
        lora.check_config(rank, alpha, dropout, name=lambda key: f"--{key}")
    except LoadError as e:
        raise UsageError(str(e)) from None


def absolute(path) -> str:
    """A path as config.json keeps it: absolute, so a run resumed from another folder finds its files."""
    return str(Path(path).expanduser().resolve())


def owner(cls, name: str) -> type:
    """The group that declares field `name` first (a kind may change its default, not its owner)."""
    return next(c for c in reversed(cls.__mro__) if name in c.__dict__.get("__annotations__", {}))


def derive(cls, source, **changes):
    """Settings of kind `cls` taking every field of the groups it shares with `source`, then `changes`."""
    shared = set(cls.__mro__) & set(type(source).__mro__)
    taken = {f.name: getattr(source, f.name) for f in fields(source) if owner(type(source), f.name) in shared}
    return cls(**{**taken, **changes})


def as_config(settings) -> dict:
    """The settings as written to config.json."""
    return dataclasses.asdict(settings)


def from_config(cls, saved: dict, source: str = "config.json"):
    """Settings of kind `cls` from a saved config.json (`source`, for the error; keys that are not
    fields are ignored), each value checked for its field's type."""
    known = {f.name: f for f in fields(cls)}
    for k, v in saved.items():
        if k in known and not of_field_type(known[k], v):
            raise UsageError(f"{source}: {k} is {v!r}, expected {type_name(known[k])}")
    return cls(**{k: v for k, v in saved.items() if k in known})


def field_type(f) -> type:
    default = f.default if f.default is not MISSING else f.default_factory()
    return list if isinstance(default, list) else f.metadata.get("type") or type(default)


def type_name(f) -> str:
    optional = " or null" if f.default is None else ""
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list"}.get(field_type(f), field_type(f).__name__) + optional


def of_field_type(f, value) -> bool:
    """Whether a saved `value` fits field `f` (an int is a float; a bool is no number)."""
    if value is None:
        return f.default is None
    kind = field_type(f)
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def defining_fields(cls) -> list[str]:
    return [f.name for f in fields(cls) if f.metadata.get("defining")]


def defining(settings) -> dict:
    """The defining settings a checkpoint records, to be checked on resume against config.json's
    (the data file and the model are checked by their digests and shapes instead)."""
    return {name: getattr(settings, name) for name in defining_fields(type(settings)) if name not in ("data", "model")}


def settings_digest(settings) -> str:
    """What decides a unit of work's cost, as a short digest (its defining settings)."""
    return hashlib.sha256(json.dumps(defining(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


def first_difference(settings, saved: dict) -> str | None:
    """The first defining field in which `settings` differ from a saved config, or None."""
    for name in defining_fields(type(settings)):
        if name in saved and saved[name] != getattr(settings, name):
            return name
    return None
