"""A training run's folder: what may be continued, who holds it, and the run's identity.

A folder is a run when it holds config.json and checkpoint.pt (a checkpoint of step 0 is written
before the first step, so a run killed at any point is one). It is continued only by the same
settings and the same data file (its SHA-256 is kept), and only by one process at a time: the run
holds an exclusive lock on `.lock` while it works. Anything else in the way (a file, a model
directory, a run whose checkpoint was deleted) is refused, never overwritten.

The run id, made when the run starts and kept in config.json, is the run's key in the ledger: a
second run with the same name (other --out, seed, data...) is charged for what it computes.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from pathlib import Path

import torch

from data.files import remove_leftovers

from .settings import TrainSettings, UsageError, as_config, first_difference, from_config

CONFIG, CHECKPOINT, LOCK = "config.json", "checkpoint.pt", ".lock"
OURS = {CONFIG, CHECKPOINT, LOCK}


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def read_config(out: Path) -> dict:
    path = out / CONFIG
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a run's config.json ({type(e).__name__}: {e})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{path}: not a run's config.json (expected a JSON object)")
    return {**BEFORE_ENCODINGS, **saved}


# what a run from before --encoding computed: digit text (a continuous run always says so); a
# continuous run from before --value-space modelled the values themselves
BEFORE_ENCODINGS = {"encoding": "digits", "components": 1, "value_space": "linear"}


def is_run(out: Path) -> bool:
    """Whether `out` is a run that can be continued; refuses a folder that is in the way.
    False for a folder that does not exist or is empty (a new run starts there)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a run folder")
    if not out.exists():
        return False
    present = {p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}
    if not present - {LOCK}:
        return False
    if {CONFIG, CHECKPOINT} <= present:
        return True
    missing = CHECKPOINT if CONFIG in present else CONFIG
    raise UsageError(f"--out {out}: holds files but no run to continue (no {missing}); choose another --out, "
                     f"or empty the folder to start there")


def check_writable(folder: Path, flag: str = "--out") -> None:
    """Refuse a folder that can't be written (or created) before any work is done in its name."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: {probe} is not writable")


class FolderLock:
    """An exclusive lock on the run folder for as long as the run works in it."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / LOCK, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise UsageError(f"--out {out}: another process is running in this folder; wait for it to end, "
                             f"or choose another --out") from None
        remove_leftovers(out, recursive=True)  # temporary files of writes a killed run left

    def release(self) -> None:
        self.file.close()


def same_run(s: TrainSettings, out: Path, saved: dict, data_sha256: str) -> None:
    """A checkpoint is only continued by the run that wrote it: refuse other settings or another data file."""
    k = first_difference(s, saved)
    if k is not None:
        raise UsageError(f"{out} holds a run with other settings ({k}: {saved[k]!r} there, {getattr(s, k)!r} now); "
                         f"choose another --out, or --resume {out} to continue it")
    if saved.get("data_sha256", data_sha256) != data_sha256:
        raise UsageError(f"{out}: the data file {s.data} changed since this run started (SHA-256 "
                         f"{saved['data_sha256'][:12]}... then, {data_sha256[:12]}... now); choose another --out")


def resume_settings(directory: str | Path, **given) -> TrainSettings:
    """The settings of the run in `directory`, with the flags the user gave (`given`) over them."""
    out = Path(directory)
    if not is_run(out):
        raise UsageError(f"--resume {directory}: no run there (expected {CONFIG} and {CHECKPOINT})")
    saved = from_config(TrainSettings, read_config(out))
    return TrainSettings(**{**as_config(saved), **given, "out": str(out.resolve())})


def finished(out: str | Path) -> dict | None:
    """The summary of the complete run in `out`, or None if there is none (not started, or stopped)."""
    path = Path(out) / "summary.json"
    if path.exists():
        summary = json.loads(path.read_text())
        if summary.get("complete"):
            return summary
    return None


CHECKPOINT_KEYS = {"trainable": dict, "optimizer": dict, "step": int, "best_val": float, "tokens": int,
                   "seconds": float, "flops": float, "rng": dict}


def read_checkpoint(path: Path, trainable: dict[str, torch.Tensor]) -> dict:
    """checkpoint.pt, read with weights_only=True (tensors and plain values: a file that would run
    code is refused), checked against the run's trainable parameters {name: tensor}."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors all mean the same to the user
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UsageError(f"{path}: not a readable checkpoint of this project ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or any(not isinstance(ckpt.get(k), (t, int) if t is float else t)
                                         for k, t in CHECKPOINT_KEYS.items()):
        raise UsageError(f"{path}: not a checkpoint of this project (expected {', '.join(CHECKPOINT_KEYS)})")
    stored = ckpt["trainable"]
    for name, param in trainable.items():
        value = stored.get(name)
        if not isinstance(value, torch.Tensor) or value.shape != param.shape:
            got = None if not isinstance(value, torch.Tensor) else tuple(value.shape)
            raise UsageError(f"{path}: {name} is {got} there, the run trains {tuple(param.shape)}: the checkpoint "
                             f"is of another model or LoRA rank")
    if set(stored) != set(trainable):
        raise UsageError(f"{path}: holds parameters this run does not train ({sorted(set(stored) - set(trainable))[0]})")
    return ckpt
