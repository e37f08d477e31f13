"""Hints that point the right way: a mistaken command names the flag or the folder the user meant,
and a flag is honoured or refused, never silently dropped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import eval as evaluation
import train

from .conftest import ROOT
from .test_mistakes import eval_args, one_line, train_args


def usage_error(capsys, code: int) -> str:
    """The error line of an argparse mistake (exit status 2, three lines on stderr)."""
    err = capsys.readouterr().err
    assert code == 2, err
    return next(line for line in err.splitlines() if ": error: " in line)


@pytest.fixture
def lora_run(series_file, tmp_path):
    assert train.main(train_args(series_file, tmp_path)) == 0
    return tmp_path / "run"


# --- options of the other command, and names close to the right one --------------------------------

def test_an_option_of_the_other_command_names_that_command(capsys):
    assert "--ctx is an option of python eval.py" in usage_error(capsys, run_main(train.main, ["--ctx", "40"]))
    assert "--lr is an option of python train.py" in usage_error(capsys, run_main(evaluation.main, ["--lr", "1"]))
    assert "did you mean --rank?" in usage_error(capsys, run_main(train.main, ["--rnak", "8"]))


def run_main(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_a_mistyped_preset_gets_the_preset(capsys, tmp_path):
    one_line(capsys, train.main(["--model", "tiny-rnadom", "--out", str(tmp_path / "r"), "--quiet"]),
             "tiny-rnadom: no such directory or preset; did you mean tiny-random?")


def test_flops_tables_take_a_preset_for_the_config():
    def table(*argv):
        return subprocess.run([sys.executable, "-m", "flops", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    done = table("--config", "scratch-1m", "--seq-len", "100", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["forward"] > 0
    typo = table("--config", "scratch-1n")
    assert typo.returncode == 2 and typo.stderr.strip() == ("error: scratch-1n: no such directory or preset; "
                                                            "did you mean scratch-1m?")


def test_train_help_describes_every_kind_of_run(capsys):
    assert run_main(train.main, ["--help"]) == 0
    text = capsys.readouterr().out
    for kind in ("LoRA fine-tuning", "from scratch", "--encoding", "continuous", "bins", "model_best/"):
        assert kind in text


# --- a run folder where a model or an adapter was meant, and the other way round --------------------

def test_eval_of_a_run_s_adapter_takes_the_run_s_base_model(series_file, tmp_path, lora_run, capsys):
    """--adapter RUN without --model: the run's base model (tiny-random here), not the hub's Qwen."""
    argv = eval_args(series_file, tmp_path, "--adapter", str(lora_run))[2:]  # no --model
    assert evaluation.main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["model"] == "tiny-random"


def test_a_lora_run_folder_as_the_model_points_to_adapter(series_file, tmp_path, lora_run, capsys):
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path)[2:] + ["--model", str(lora_run)]),
             f"--model {lora_run}: a train.py run folder of a LoRA adapter, not a model; evaluate it with "
             f"--model tiny-random --adapter {lora_run}")


def test_a_scratch_run_folder_is_its_model_best_and_not_an_adapter(series_file, tmp_path, scratch_run, capsys):
    base = eval_args(series_file, tmp_path)[2:]
    one_line(capsys, evaluation.main(base + ["--model", str(scratch_run)]),
             f"--model {scratch_run}: a train.py run folder, not a model; its model is --model {scratch_run}/model_best")
    one_line(capsys, train.main(["--model", str(scratch_run), "--out", str(tmp_path / "again"), "--quiet"]),
             f"its model is --model {scratch_run}/model_best")
    for given in (scratch_run, scratch_run / "model_best"):
        one_line(capsys, evaluation.main(base + ["--model", "tiny-random", "--adapter", str(given)]),
                 f"--adapter {given}: a whole model (model.safetensors), not a LoRA adapter; evaluate it with "
                 f"--model {scratch_run}/model_best")


# --- flags honoured or refused -------------------------------------------------------------------

def test_ctx_given_twice_keeps_both(series_file, tmp_path, capsys):
    argv = [a for a in eval_args(series_file, tmp_path) if a != "40"]
    argv.remove("--ctx")
    assert evaluation.main(argv + ["--ctx", "20", "--ctx", "40"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["contexts"] == [20, 40]


def test_plot_systems_outside_the_evaluated_ones_are_refused(series_file, tmp_path, capsys):
    one_line(capsys, evaluation.main(eval_args(series_file, tmp_path, "--plot-systems", "5")),
             "--plot-systems 5: outside the 2 systems evaluated (positions 0 to 1)")
    assert not (tmp_path / "ledger.json").exists()  # refused before any forecast


def test_a_value_head_s_flags_on_a_text_run_are_refused(series_file, tmp_path, capsys):
    one_line(capsys, train.main(train_args(series_file, tmp_path, "--value-space", "linear", "--components", "3")),
             "--components 3 and --value-space linear: settings of the continuous value head; this run reads "
             "digits text (--encoding continuous has the head)")
    assert not (tmp_path / "run").exists()


def test_a_replaced_evaluation_and_one_charged_before_say_so(series_file, tmp_path, capsys):
    argv = [a for a in eval_args(series_file, tmp_path) if a != "--quiet"]
    assert evaluation.main(argv) == 0
    first = capsys.readouterr()
    assert "replacing" not in first.err and "already charged" not in first.out
    assert evaluation.main(argv) == 0
    again = capsys.readouterr()
    assert f"{tmp_path / 'eval'}: replacing the evaluation there (--out another folder keeps it)" in again.err
    assert "computed by the language models (already charged by an earlier run of this evaluation: nothing " \
           "charged now)" in again.out
    assert "2 systems x 1 model:" in again.err  # the progress bar counts what it says it counts


def test_resume_with_another_setting_names_the_flag_to_drop(series_file, tmp_path, lora_run, capsys):
    one_line(capsys, train.main(["--resume", str(lora_run), "--lr", "0.5", "--quiet"]),
             f"--resume {lora_run}: the run was trained with --lr 0.0001, and a resumed run keeps it; "
             "drop --lr 0.5 to continue it, or start a new run with --out")
    assert json.loads((lora_run / "summary.json").read_text())["steps"] == 3  # nothing trained


def test_max_steps_zero_names_the_one_flag(series_file, tmp_path, capsys):
    err = one_line(capsys, train.main(train_args(series_file, tmp_path, "--max-steps", "0")),
                   "--max-steps must be at least 1, got 0")
    assert err.count("--") == 1  # one flag named, not four


def test_a_value_run_s_loss_plot_is_per_time_step_on_whole_steps(series_file, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import experiment.report as report
    saved = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path, dpi: saved.setdefault(path.name, fig))
    assert train.main(train_args(series_file, tmp_path, "--encoding", "continuous", "--chunk", "30",
                                 "--stride", "10")) == 0
    ax = saved["loss.png"].axes[0]
    assert ax.get_ylabel() == "negative log-likelihood (nats/step)"
    saved["loss.png"].canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(saved["loss.png"])
