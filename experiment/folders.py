"""A training run's folder (`RunFolder`), the object that owns every file name of its layout (the
folders of evaluations, sweeps, comparisons and the plan are in `outputs`). Nothing else in the
library spells one of these names.

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
import shutil
import uuid
from pathlib import Path

import torch

import lora
from data.files import WriteFailed, atomic_write, read_json_object, remove_leftovers, write_text
from qwen_min import save_pretrained

from .errors import UsageError
from .groups import ValueHead
from .settings import TrainSettings, as_config, first_difference, from_config

# what a run from before a setting existed computed: digit text (a continuous run always says so);
# before --value-space, the values themselves; before --head-steps, the next step; before --world,
# the fitted world's systems; before --value-inputs, levels
BEFORE_SETTINGS = {"encoding": "digits", "components": 1, "value_space": "linear", "head_steps": 1, "world": "fitted",
                   "value_inputs": "level"}

CHECKPOINT_KEYS = {"trainable": dict, "optimizer": dict, "step": int, "best_val": float, "tokens": int,
                   "seconds": float, "flops": float, "rng": dict}


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def check_writable(folder: Path, flag: str = "--out") -> None:
    """Refuse a folder that can't be written (or created) before any work is done in its name."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: {probe} is not writable")


class RunFolder:
    """A training run's folder: config.json (settings, split, scale), checkpoint.pt, metrics.jsonl (a
    line per step), the weights (adapter_best/ and adapter_last/ in the PEFT layout, or model_best/
    and model_last/ for --full), loss.png, summary.json, and .lock while a process works there."""

    CONFIG, CHECKPOINT, METRICS, SUMMARY, LOSS_PLOT, LOCK = (
        "config.json", "checkpoint.pt", "metrics.jsonl", "summary.json", "loss.png", ".lock")
    WEIGHTS = ("adapter_best", "adapter_last", "model_best", "model_last")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def containing(cls, weights: Path) -> "RunFolder | None":
        """The run a weights folder (adapter_best/, ...) belongs to, or None if it is not a run's."""
        run = cls(Path(weights).parent)
        return run if Path(weights).name in cls.WEIGHTS and (run.path / cls.CONFIG).is_file() else None

    def refuse_as_model(self) -> None:
        """A run folder given as --model is not a model: say which of its folders is, or how its
        adapter is evaluated. Nothing for a folder that is not a run's."""
        if not (self.path / self.CONFIG).is_file() or not (self.path / self.CHECKPOINT).is_file():
            return
        if self.weights("best", full=True).is_dir():
            raise UsageError(f"--model {self.path}: a train.py run folder, not a model; its model is "
                             f"--model {self.weights('best', full=True)}")
        base = self.read_config().get("model")
        raise UsageError(f"--model {self.path}: a train.py run folder of a LoRA adapter, not a model; evaluate it "
                         f"with --model {base} --adapter {self.path}")

    def weights(self, kind: str, full: bool) -> Path:
        """The best or last weights: model_{kind}/ for a full run, else adapter_{kind}/."""
        return self.path / f"{'model' if full else 'adapter'}_{kind}"

    @property
    def loss_plot(self) -> Path:
        return self.path / self.LOSS_PLOT

    def files(self, full: bool) -> dict[str, Path]:
        """A run's outputs, by what they are."""
        kind = "model" if full else "adapter"
        return {f"best {kind}": self.weights("best", full), f"last {kind}": self.weights("last", full),
                "metrics": self.path / self.METRICS, "loss plot": self.loss_plot,
                "summary": self.path / self.SUMMARY, "settings": self.path / self.CONFIG,
                "checkpoint": self.path / self.CHECKPOINT}

    # --- what the folder holds ---------------------------------------------------------------------
    def is_run(self, flag: str = "--out") -> bool:
        """Whether the folder is a run that can be continued; refuses a folder that is in the way.
        False for a folder that does not exist or is empty (a new run starts there). `flag`: the
        option that named the folder, for the error."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise UsageError(f"{flag} {out}: is a file, not a run folder")
        if not out.exists():
            return False
        present = {p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}
        if not present - {self.LOCK}:
            return False
        if {self.CONFIG, self.CHECKPOINT} <= present:
            return True
        missing = self.CHECKPOINT if self.CONFIG in present else self.CONFIG
        if flag == "--resume":
            raise UsageError(f"--resume {out}: not a run folder (no {missing}); --resume takes a folder that "
                             f"train.py wrote, with {self.CONFIG} and {self.CHECKPOINT}")
        raise UsageError(f"--out {out}: holds files but no run to continue (no {missing}); choose another --out, "
                         f"or empty the folder to start there")

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self.checkpoint.exists()

    def read_config(self) -> dict:
        saved = read_json_object(self.path / self.CONFIG, UsageError, what="run's config.json")
        return {**BEFORE_SETTINGS, **saved}

    def encoding(self) -> str:
        """The encoding the run recorded (digits for a run from before there was a choice)."""
        return self.read_config()["encoding"]

    def same_run(self, s: TrainSettings, saved: dict, data_sha256: str) -> None:
        """A checkpoint is only continued by the run that wrote it: refuse other settings or another data file."""
        k = first_difference(s, saved)
        if k is not None:
            raise UsageError(f"{self.path} holds a run with other settings ({k}: {saved[k]!r} there, "
                             f"{getattr(s, k)!r} now); choose another --out, or --resume {self.path} to continue it")
        if saved.get("data_sha256", data_sha256) != data_sha256:
            raise UsageError(f"{self.path}: the data file {s.data} changed since this run started (SHA-256 "
                             f"{saved['data_sha256'][:12]}... then, {data_sha256[:12]}... now); choose another --out")

    def not_a_copy(self, run_id: str, charged_in: str | None) -> None:
        """Refuse a copy of another run folder (`cp -r` keeps the run id): the ledger charged run
        `run_id` in `charged_in`, which still holds that run. A moved folder (the old one gone) passes."""
        if charged_in is None or Path(charged_in) == self.path.resolve():
            return
        other = RunFolder(charged_in)
        if (other.path / self.CONFIG).is_file() and other.read_config().get("run_id") == run_id:
            raise UsageError(f"{self.path}: a copy of the run in {charged_in} (the same run id, whose steps the "
                             f"ledger charged there); continue that one, or start a new run with --out")

    def same_settings(self, ckpt: dict, now: dict) -> None:
        """Refuse a checkpoint written under other defining settings than config.json's now (an edited
        config.json): its weights were trained under those. A checkpoint from before it recorded them passes."""
        then = ckpt.get("settings")
        if not isinstance(then, dict):
            return
        for k, v in now.items():
            if k in then and then[k] != v:
                raise UsageError(f"{self.checkpoint}: was trained with {k} {then[k]!r}, but {self.path / self.CONFIG} "
                                 f"now says {v!r}; restore config.json, or start a new run with --out")

    def same_head(self, adapter: lora.Adapter) -> None:
        """Refuse an adapter of this run whose value head (its file's metadata and shape) is not the one
        the run's config.json says it trained."""
        if adapter.spec is None:
            return
        saved = self.read_config()
        for k, v in ValueHead.settings_of(adapter.spec).items():
            if k in saved and saved[k] is not None and saved[k] != v:
                raise UsageError(f"{adapter.directory}: its value head has {k} {v!r}, but the run's "
                                 f"{self.path / self.CONFIG} says {saved[k]!r}; one of them was changed by hand")

    def summary(self) -> dict | None:
        """summary.json's content, or None before the run has written one."""
        path = self.path / self.SUMMARY
        return read_json_object(path, UsageError) if path.exists() else None

    def finished(self) -> dict | None:
        """The summary of the complete run here, or None if there is none (not started, or stopped)."""
        summary = self.summary()
        return summary if summary and summary.get("complete") else None

    def read_checkpoint(self, trainable: dict[str, torch.Tensor]) -> dict:
        """checkpoint.pt, read with weights_only=True (tensors and plain values: a file that would run
        code is refused), checked against the run's trainable parameters {name: tensor}."""
        path = self.path / self.CHECKPOINT
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
                raise UsageError(f"{path}: {name} is {got} there, the run trains {tuple(param.shape)}: the "
                                 f"checkpoint is of another model or LoRA rank")
        if set(stored) != set(trainable):
            raise UsageError(f"{path}: holds parameters this run does not train ({sorted(set(stored) - set(trainable))[0]})")
        return ckpt

    def read_metrics(self, upto: int | None = None) -> list[dict]:
        path = self.path / self.METRICS
        if not path.exists():
            return []
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError:
                if number == len(lines):  # a line torn by a kill during its write: the step is in no checkpoint
                    break
                raise UsageError(f"{path}: line {number} is not JSON; the run's metrics are damaged") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise UsageError(f"{path}: line {number} is not a metrics row (an object with an integer step)")
            rows.append(row)
        return [r for r in rows if upto is None or r["step"] <= upto]

    # --- writing -----------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_text(self.path / self.CONFIG, json.dumps(config, indent=1) + "\n")

    def write_checkpoint(self, state: dict) -> None:
        atomic_write(self.path / self.CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def write_metrics(self, rows: list[dict]) -> None:
        write_text(self.path / self.METRICS, "".join(json.dumps(m) + "\n" for m in rows))

    def append_metrics(self, row: dict) -> None:
        """One row more; a row torn by a full disk is dropped when the run is resumed (`read_metrics`)."""
        path = self.path / self.METRICS
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise WriteFailed(path, e.strerror or str(e)) from None

    def abandon(self) -> None:
        """Remove what a new run wrote before its config.json (the step-0 checkpoint, its weights), so
        that the folder can start again."""
        self.checkpoint.unlink(missing_ok=True)
        for name in self.WEIGHTS:
            if (self.path / name).is_dir():
                shutil.rmtree(self.path / name)

    def write_summary(self, summary: dict) -> None:
        write_text(self.path / self.SUMMARY, json.dumps(summary, indent=1) + "\n")

    def save_weights(self, model, kind: str, full: bool, tokenizer, base_model: str) -> None:
        """A full run's whole model with its tokenizer (Hugging Face layout), else its adapter (PEFT layout)."""
        if full:
            save_pretrained(model, self.weights(kind, full), tokenizer=tokenizer)
        else:
            lora.save_adapter(model, self.weights(kind, full), base_model_name_or_path=base_model)


class FolderLock:
    """An exclusive lock on the run folder for as long as the run works in it."""

    def __init__(self, folder: RunFolder):
        out = folder.path
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / folder.LOCK, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise UsageError(f"--out {out}: another process is running in this folder; wait for it to end, "
                             f"or choose another --out") from None
        remove_leftovers(out, recursive=True)  # temporary files of writes a killed run left

    def release(self) -> None:
        self.file.close()


def resume_settings(directory: str | Path, **given) -> TrainSettings:
    """The settings of the run in `directory`, with the flags the user gave (`given`) over them."""
    run = RunFolder(directory)
    if not run.is_run("--resume"):
        raise UsageError(f"--resume {directory}: no run there (expected {run.CONFIG} and {run.CHECKPOINT})")
    saved = as_config(from_config(TrainSettings, run.read_config(), str(run.path / run.CONFIG)))
    resumed = TrainSettings(**{**saved, **given, "out": str(run.path.resolve())})
    k = first_difference(resumed, saved)
    if k is not None and k in given:
        flag = "--" + k.replace("_", "-")
        raise UsageError(f"--resume {directory}: the run was trained with {flag} {saved[k]}, and a resumed run "
                         f"keeps it; drop {flag} {given[k]} to continue it, or start a new run with --out")
    return resumed
