"""One identity per charge: a run's id, an evaluation's digest of what it computes. What is computed is
charged, once; the budget is never crossed; the run folder keeps what it needs and refuses the rest."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat

import pytest

import eval as evaluation
import train
import data.files
from data import write_series
from data.files import atomic_write
from experiment import encodings as encodings_module
from experiment import trainer as trainer_module
from experiment.folders import FolderLock, RunFolder
from flops import COURSEWORK, Ledger

from .test_full_disk import full_disk_at

SERIES = (30, 4)  # systems, seed of the simulated file (conftest.series_file)


def train_args(series_file, ledger, out, *extra):
    return ["--model", "tiny-random", "--data", str(series_file), "--chunk", "128", "--stride", "64", "--batch-size",
            "2", "--val-limit", "3", "--max-steps", "4", "--eval-every", "2", "--ledger", str(ledger), "--out", str(out),
            "--quiet", *extra]


def eval_args(series_file, ledger, out, *extra):
    return ["--model", "tiny-random", "--data", str(series_file), "--ctx", "40", "--limit", "2", "--no-ode-fit",
            "--horizon", "5", "--ledger", str(ledger), "--out", str(out), "--quiet", *extra]


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_two_runs_with_one_name_are_both_charged(series_file, tmp_path):
    ledger = tmp_path / "l.json"
    for out, seed in (("a", "0"), ("b", "1")):
        assert train.main(train_args(series_file, ledger, tmp_path / out, "--seed", seed)) == 0
    total = Ledger.open(ledger).total
    assert total == pytest.approx(summary(tmp_path / "a")["flops"] + summary(tmp_path / "b")["flops"], rel=1e-12)
    assert len(Ledger.open(ledger).named("lora-r8-lr0.0001-c128")) == 2


def test_a_run_folder_is_used_by_one_process_at_a_time(series_file, tmp_path, capsys):
    out = tmp_path / "run"
    lock = FolderLock(RunFolder(out))  # what a first process holds while it runs
    try:
        assert train.main(train_args(series_file, tmp_path / "l.json", out)) == 2
    finally:
        lock.release()
    assert "another process is running in this folder" in capsys.readouterr().err
    assert not (tmp_path / "l.json").exists()
    assert train.main(train_args(series_file, tmp_path / "l.json", out)) == 0  # free again


def test_training_charges_in_the_ledgers_convention(series_file, tmp_path):
    ledger = tmp_path / "l.json"
    Ledger.open(ledger, budget=1e15, convention="coursework")
    assert train.main(train_args(series_file, ledger, tmp_path / "run")) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    import torch

    from experiment.encodings import encoding_of
    from experiment.models import run_model
    from qwen_min import open_model

    settings = train.settings_from_argv(train_args(series_file, ledger, tmp_path / "other"))
    model = run_model(settings, open_model(settings.model), encoding_of(settings.encoding), "cpu", torch.float32)
    assert config["flops_per_full_step"] == 2 * model.flops(128, COURSEWORK, head_positions=127).training
    assert Ledger.open(ledger).total == pytest.approx(summary(tmp_path / "run")["flops"], rel=1e-12)


def test_resume_from_another_folder_uses_the_runs_own_files(series_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lv.h5").write_bytes(series_file.read_bytes())
    assert train.main(train_args("lv.h5", "ledger.json", "run", "--max-steps", "2")) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train.main(["--resume", str(tmp_path / "run"), "--max-steps", "4", "--quiet"]) == 0
    assert list(elsewhere.iterdir()) == []  # no second ledger, no data file looked for here
    assert Ledger.open(tmp_path / "ledger.json").total == pytest.approx(summary(tmp_path / "run")["flops"], rel=1e-12)


def test_resume_refuses_a_changed_data_file(series_file, tmp_path, capsys):
    data = tmp_path / "lv.h5"
    data.write_bytes(series_file.read_bytes())
    assert train.main(train_args(data, tmp_path / "l.json", tmp_path / "run", "--max-steps", "2")) == 0
    from data import load_series

    s = load_series(data)
    write_series(data, s.trajectories * 1.01, s.time)
    assert train.main(["--resume", str(tmp_path / "run"), "--max-steps", "4", "--quiet"]) == 2
    assert "changed since this run started" in capsys.readouterr().err


def test_evaluations_are_keyed_by_what_they_compute(series_file, tmp_path):
    ledger, out = tmp_path / "l.json", tmp_path / "eval"
    flops = []
    for extra in ([], ["--horizon", "8"], ["--samples", "2", "--temperature", "1"]):
        assert evaluation.main(eval_args(series_file, ledger, out, *extra)) == 0
        flops.append(json.loads((out / "results.json").read_text())["flops"])
    assert Ledger.open(ledger).total == pytest.approx(sum(flops), rel=1e-12)
    assert evaluation.main(eval_args(series_file, ledger, tmp_path / "again")) == 0  # the first one again
    assert Ledger.open(ledger).total == pytest.approx(sum(flops), rel=1e-12)


def test_two_adapters_with_one_label_keep_both_results(series_file, tmp_path):
    ledger = tmp_path / "l.json"
    for name in ("x/run", "y/run"):
        assert train.main(train_args(series_file, ledger, tmp_path / name, "--max-steps", "2", "--rank", "2")) == 0
    before = Ledger.open(ledger).total
    assert evaluation.main(eval_args(series_file, ledger, tmp_path / "eval", "--adapter", str(tmp_path / "x/run"),
                                     "--adapter", str(tmp_path / "y/run"), "--no-base")) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    models = [m for m in results["methods"] if m.startswith("model")]
    assert len(models) == 2
    assert Ledger.open(ledger).total - before == pytest.approx(results["flops"], rel=1e-12)


def test_a_tiny_budget_writes_nothing_and_another_budget_is_refused(series_file, tmp_path, capsys):
    ledger = tmp_path / "l.json"
    assert train.main(train_args(series_file, ledger, tmp_path / "run", "--budget", "1e6")) == 2
    assert "can't pay for one step" in capsys.readouterr().err and not ledger.exists()
    assert not (tmp_path / "run").exists()
    assert train.main(train_args(series_file, ledger, tmp_path / "run", "--budget", "1e12")) == 0
    assert train.main(train_args(series_file, ledger, tmp_path / "run2", "--budget", "2e12")) == 2
    assert "budget is 1e+12 FLOPs, not 2e+12" in capsys.readouterr().err


# --- the run folder --------------------------------------------------------------------------------

def test_a_folder_that_is_not_a_run_is_not_overwritten(series_file, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    assert train.main(train_args(series_file, tmp_path / "l.json", out)) == 2
    assert "holds files but no run to continue (no checkpoint.pt)" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"weights" and (out / "config.json").read_text() == "{}"

    run = tmp_path / "run"
    assert train.main(train_args(series_file, tmp_path / "l.json", run, "--max-steps", "2")) == 0
    (run / "checkpoint.pt").unlink()
    for argv, says in ((train_args(series_file, tmp_path / "l.json", run), "holds files but no run to continue"),
                       (["--resume", str(run), "--quiet"], "not a run folder (no checkpoint.pt)")):
        assert train.main(argv) == 2
        assert says in capsys.readouterr().err


def test_leftovers_of_killed_writes_are_cleaned_and_files_get_the_umasks_mode(series_file, tmp_path):
    run = tmp_path / "run"
    assert train.main(train_args(series_file, tmp_path / "l.json", run, "--max-steps", "2")) == 0
    for leftover in (run / ".checkpoint.pt.x1.tmp", run / "adapter_last" / ".adapter_model.safetensors.x2.tmp",
                     tmp_path / ".l.json.x3.tmp"):
        leftover.write_bytes(b"half")
    assert train.main(["--resume", str(run), "--max-steps", "4", "--quiet"]) == 0
    assert not list(run.rglob("*.tmp")) and not list(tmp_path.glob(".l.json.*.tmp"))
    mask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "summary.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~mask, name


def test_ctrl_c_in_a_validation_pass_keeps_the_steps_row(series_file, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = trainer_module.validation_loss
    calls = []

    def stop_in_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer_module, "validation_loss", stop_in_the_second)
    assert train.main(train_args(series_file, tmp_path / "l.json", run)) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["val_loss"] is None
    monkeypatch.setattr(trainer_module, "validation_loss", real)
    assert train.main(["--resume", str(run), "--max-steps", "6", "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_run_whose_loss_diverges_stops_and_keeps_its_last_good_checkpoint(series_file, tmp_path, capsys,
                                                                             monkeypatch):
    run = tmp_path / "run"
    real, calls = encodings_module.lm_loss, []

    def diverge_at_step_3(model, ids, labels):
        calls.append(1)
        loss, n = real(model, ids, labels)
        return (loss * float("nan") if len(calls) == 3 else loss), n
    monkeypatch.setattr(encodings_module, "lm_loss", diverge_at_step_3)
    argv = train_args(series_file, tmp_path / "l.json", run, "--max-steps", "50", "--checkpoint-every", "1",
                      "--eval-every", "100")
    assert train.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keeping the last good checkpoint" in err
    import torch

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["trainable"].values())
    ledger = Ledger.open(tmp_path / "l.json")
    assert ledger.total > summary_flops_of_checkpoint(ckpt)  # the diverged step was computed, so charged
    assert not (run / "summary.json").exists()


def summary_flops_of_checkpoint(ckpt) -> float:
    return ckpt["flops"]


# --- the property --------------------------------------------------------------------------------

BUDGET = 1.2e10  # about two thirds of what the operations below would spend: some stop at the budget


class Killed(BaseException):
    """A process that dies at once: nothing after this point runs (as with SIGKILL)."""


@pytest.mark.parametrize("seed", [0, 1])
def test_property_ledger_equals_what_was_computed_and_stays_within_budget(series_file, tmp_path, monkeypatch, seed):
    """Many runs and evaluations with random settings on one ledger: some into a folder another process
    holds, some killed and resumed, some stopped by a full disk and resumed, some copied and the copy
    resumed, some evaluations recomputed into the same folder with other settings. After each one the
    ledger never exceeds its budget; at the end it holds exactly what the runs computed (each run's own
    count) and what the distinct evaluations computed."""
    rng = random.Random(seed)
    ledger = tmp_path / "l.json"
    budget = BUDGET
    Ledger.open(ledger, budget=budget)
    evals, killed = {}, []
    real_record, real_replace = trainer_module.Trainer.record, os.replace
    work = {}  # (run id, step) and (run id, "validation", step) -> FLOPs, at their first computation
    real_step, real_validate = trainer_module.Trainer.step, trainer_module.Trainer.validate

    def step(self, nxt, batch, cost):
        work.setdefault((self.run_id, nxt), cost)
        return real_step(self, nxt, batch, cost)

    def validate(self, cost):
        work.setdefault((self.run_id, "validation", self.step_no), cost)
        return real_validate(self, cost)
    monkeypatch.setattr(trainer_module.Trainer, "step", step)
    monkeypatch.setattr(trainer_module.Trainer, "validate", validate)
    for op in range(16):
        kind = rng.choice(["train", "train", "eval", "busy", "disk", "copy"])
        out = tmp_path / f"{'eval' if kind == 'eval' else 'train'}-{rng.randrange(4)}"
        if kind == "copy":
            if (out / "config.json").exists():
                before = Ledger.open(ledger).total
                shutil.copytree(out, tmp_path / "copy")
                assert train.main(["--resume", str(tmp_path / "copy"), "--max-steps", "9", "--quiet"]) == 2
                shutil.rmtree(tmp_path / "copy")
                assert Ledger.open(ledger).total == before
            continue
        if kind == "eval":
            extra = ["--horizon", str(rng.choice([3, 5])), "--limit", str(rng.choice([1, 2]))]
            code = evaluation.main(eval_args(series_file, ledger, out, *extra))
            if code == 0:
                r = json.loads((out / "results.json").read_text())
                evals[r["ledger_key"]] = r["flops"]
        else:
            extra = ["--seed", str(rng.randrange(2)), "--rank", str(rng.choice([2, 4])), "--checkpoint-every", "2",
                     "--max-steps", str(rng.choice([3, 5]))]
            die_at = rng.choice([None, 2, 3]) if kind == "train" else None
            if die_at:
                def record(self, *args, die_at=die_at, **kwargs):
                    if self.step_no == die_at:
                        raise Killed
                    return real_record(self, *args, **kwargs)
                monkeypatch.setattr(trainer_module.Trainer, "record", record)
            lock = FolderLock(RunFolder(out)) if kind == "busy" else None
            if kind == "disk":  # the second checkpoint write finds the disk full
                full_disk_at(monkeypatch, "checkpoint.pt", after=1)
            try:
                if train.main(train_args(series_file, ledger, out, *extra)) != 0 and kind == "disk":
                    killed.append(out)
            except Killed:
                killed.append(out)
            finally:
                monkeypatch.setattr(trainer_module.Trainer, "record", real_record)
                monkeypatch.setattr(data.files.os, "replace", real_replace)
                if lock:
                    lock.release()
        assert Ledger.open(ledger).total <= budget
    for out in killed:  # the same command again continues each killed run to its end
        if (out / "config.json").exists():
            train.main(["--resume", str(out), "--quiet"])
    runs = [p for p in tmp_path.iterdir() if (p / "summary.json").exists()]
    computed = sum(work.values()) + sum(evals.values())
    assert Ledger.open(ledger).total == pytest.approx(computed, rel=1e-12)
    # each run's own count leaves out what a failure lost and its resume did not redo (a validation
    # pass at a last step that a longer --max-steps no longer validates): charged, it was computed
    assert Ledger.open(ledger).total >= sum(summary(p)["flops"] for p in runs) + sum(evals.values()) - 1
    assert Ledger.open(ledger).total <= budget


def test_resume_rewrites_metrics_and_config_atomically(series_file, tmp_path, monkeypatch):
    """A resume rewrites metrics.jsonl (cut to the checkpoint) and config.json; killed at that write,
    the old files stay whole (they were rewritten in place, so a kill lost every row)."""
    import data.files

    run = tmp_path / "run"
    assert train.main(train_args(series_file, tmp_path / "l.json", run, "--max-steps", "2")) == 0
    before = {name: (run / name).read_text() for name in ("metrics.jsonl", "config.json")}
    real = data.files.os.replace

    def die_on_rewrite(src, dst):
        if str(dst).endswith(("metrics.jsonl", "config.json")):
            raise Killed
        return real(src, dst)
    monkeypatch.setattr(data.files.os, "replace", die_on_rewrite)
    with pytest.raises(Killed):
        train.main(["--resume", str(run), "--max-steps", "4", "--quiet"])
    assert {name: (run / name).read_text() for name in before} == before
