"""Every write can fail: a full disk (ENOSPC) injected at each of a run's and an evaluation's files
ends in one line naming the file, leaves the folder resumable, and the ledger exact: the same run
resumed ends charged what an uninterrupted one is."""

from __future__ import annotations

import errno
import json
import os

import pytest

import data.files
import eval as evaluation
import train
from flops import Ledger

from .test_mistakes import eval_args, one_line, train_args

SERIES = (30, 2)


def full_disk_at(monkeypatch, name: str, after: int = 0):
    """Make the (after+1)-th atomic write of a file called `name`, and every later one, fail with ENOSPC."""
    replace, seen = os.replace, [0]

    def failing(src, dst, *args, **kw):
        if os.path.basename(dst) == name:
            seen[0] += 1
            if seen[0] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst, *args, **kw)
    monkeypatch.setattr(data.files.os, "replace", failing)


@pytest.fixture(scope="module")
def uninterrupted(series_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    assert train.main(train_args(series_file, folder, "--max-steps", "6", "--eval-every", "2")) == 0
    return Ledger.open(folder / "ledger.json").total


@pytest.mark.parametrize("name,after", [("checkpoint.pt", 2), ("ledger.json", 3), ("config.json", 0),
                                        ("summary.json", 0), ("loss.png", 0), ("adapter_model.safetensors", 1)])
def test_a_full_disk_at_any_file_of_a_run_is_one_line_and_the_run_resumes_exactly(series_file, tmp_path, capsys,
                                                                                  monkeypatch, uninterrupted, name,
                                                                                  after):
    argv = train_args(series_file, tmp_path, "--max-steps", "6", "--eval-every", "2", "--checkpoint-every", "1")
    with monkeypatch.context() as m:
        full_disk_at(m, name, after)
        err = one_line(capsys, train.main(argv), f"{name}: can't", status=2)
        assert "No space left on device" in err
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written file left behind
    again = ["--resume", str(tmp_path / "run"), "--quiet"] if (tmp_path / "run" / "config.json").exists() else argv
    assert train.main(again) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 6
    assert Ledger.open(tmp_path / "ledger.json").total == pytest.approx(uninterrupted, rel=1e-12)


@pytest.mark.parametrize("name", ["results.json", "forecasts.npz", "forecasts.png", "ledger.json"])
def test_a_full_disk_during_an_evaluation_is_one_line_and_the_same_command_finishes_it(series_file, tmp_path,
                                                                                       capsys, monkeypatch, name):
    argv = eval_args(series_file, tmp_path, "--batch-size", "1")
    assert evaluation.main(eval_args(series_file, tmp_path, "--batch-size", "1", "--ledger",
                                     str(tmp_path / "whole.json"), "--out", str(tmp_path / "whole"))) == 0
    whole = Ledger.open(tmp_path / "whole.json").total
    with monkeypatch.context() as m:
        full_disk_at(m, name, after=1 if name == "ledger.json" else 0)
        one_line(capsys, evaluation.main(argv), f"{name}: can't")
    assert evaluation.main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["flops"] == pytest.approx(whole)
    assert Ledger.open(tmp_path / "ledger.json").total == pytest.approx(whole)
