"""What a user meets at the command line: every command's help states each option's default and
shows examples that parse; a typo is at most three lines with the closest option; a negative number
is a value."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path

import pytest

import eval as evaluation
import reproduce
import train
from commandline import Parser
from flops import Ledger

PARSERS = {  # the command as typed -> its parser
    "python train.py": lambda: train.run_parser(),
    "python train.py sweep": lambda: train.sweep_parser(),
    "python reproduce.py": lambda: reproduce.parser(),
    "python eval.py": lambda: importlib.import_module("eval").parser(),
    "python bench.py": lambda: importlib.import_module("bench").parser(),
    "python -m flops": lambda: importlib.import_module("flops.__main__").table_parser(),
    "python -m flops ledger": lambda: importlib.import_module("flops.__main__").ledger_parser(),
    "python -m data.simulate": lambda: importlib.import_module("data.simulate").parser(),
    "python -m qwen_min": lambda: importlib.import_module("qwen_min.__main__").parser(),
}


def shown_options(p: argparse.ArgumentParser):
    return [a for a in p._actions if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", PARSERS)
def test_help_states_every_default_and_has_examples(command):
    p = PARSERS[command]()
    text = p.format_help()
    assert p.prog == command
    for action in shown_options(p):
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert name in text, f"{command}: {name} not in --help"
        described = p._get_formatter()._expand_help(action)
        assert "(default" in described or "(required)" in described, \
            f"{command} {name}: help states no default: {described!r}"
    examples = text.split("examples:\n", 1)[1].split("\n\n")[0].splitlines()
    assert len(examples) >= 2, f"{command}: fewer than two examples"
    for line in examples:  # each example is a command this parser (or its subcommand's) accepts
        words = shlex.split(line.split("  #")[0])
        assert " ".join(words[: len(command.split())]) == command or words[2] in p.subcommands, line
        args = words[len(command.split()):]
        if args and args[0] in p.subcommands:
            continue
        p.parse_args(args)


def test_subcommands_are_listed_in_the_parent_help():
    assert "sweep" in train.run_parser().format_help()
    assert "ledger" in PARSERS["python -m flops"]().format_help()


@pytest.mark.parametrize("argv, suggestion", [
    (["--rnak", "8"], "did you mean --rank?"),
    (["--eval-evry", "5"], "did you mean --eval-every?"),
    (["--schedule", "cosin"], "did you mean 'cosine'?"),
    (["swep"], "did you mean sweep?"),
])
def test_a_typo_is_three_lines_with_the_closest_match(capsys, argv, suggestion):
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) <= 3, err
    assert err[0].startswith("usage: python train.py") and suggestion in err[1], err


def test_a_typo_far_from_everything_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        train.main(["--zzzzzz", "1"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz 1" in err and "did you mean" not in err


@pytest.mark.parametrize("value", ["-1e-3", "-0.5", "-.5", "-2", "-2.5E+4"])
def test_negative_numbers_are_values(value):
    p = Parser("prog", "test", examples=["prog --lr 1", "prog"])
    p.add_argument("--lr", type=float, help="x")
    p.add_argument("--ctx", type=float, nargs="+", help="y")
    a = p.parse_args(["--lr", value, "--ctx", value, "1"])
    assert a.lr == float(value) and a.ctx == [float(value), 1.0]


def test_a_negative_learning_rate_reaches_its_check(capsys):
    assert train.main(["--model", "tiny-random", "--lr", "-1e-3"]) == 2
    assert capsys.readouterr().err.strip() == "error: --lr must be positive, got -0.001"


def test_stride_follows_the_chunk_unless_given():
    assert train.settings_from_argv(["--model", "tiny-random"]).stride == 268
    assert train.settings_from_argv(["--model", "tiny-random", "--chunk", "100"]).stride == 52
    assert train.settings_from_argv(["--model", "tiny-random", "--chunk", "100", "--stride", "100"]).stride == 100


def listed_paths(text: str) -> list[str]:
    """The paths of a summary's '  what  path' lines."""
    return [line.split()[-1] for line in text.splitlines() if line.startswith("  ")]


def test_run_and_eval_summaries_name_files_that_exist(series_file, tmp_path, capsys):
    ledger = tmp_path / "ledger.json"
    common = ["--model", "tiny-random", "--data", str(series_file), "--ledger", str(ledger), "--quiet"]
    assert train.main([*common, "--chunk", "128", "--max-steps", "2", "--eval-every", "2", "--val-limit", "2",
                       "--out", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    paths = listed_paths(text)
    assert str(tmp_path / "run" / "adapter_best") in paths and str(tmp_path / "run" / "loss.png") in paths
    assert paths and all(Path(p).exists() for p in paths), text
    assert f"best validation loss {summary['best_val_loss']:.4f} (at step 2)" in text
    spent = Ledger.open(ledger).total
    assert f"FLOPs: {summary['flops']:.3e} for this run" in text and f"{spent:.3e} of 1.000e+17" in text
    assert f"next: python eval.py --model tiny-random --adapter {tmp_path / 'run' / 'adapter_best'}" in text

    assert evaluation.main([*common, "--adapter", str(tmp_path / "run"), "--ctx", "40", "--limit", "2", "--no-ode-fit",
                            "--out", str(tmp_path / "eval")]) == 0
    text = capsys.readouterr().out
    paths = listed_paths(text.split("evaluation of 2 validation systems")[1])
    assert len(paths) == 5 and all(Path(p).exists() for p in paths), text
    assert f"{Ledger.open(ledger).total:.3e} of 1.000e+17" in text


def test_a_stopped_full_run_says_how_to_continue_and_lists_its_model(tmp_path):
    from experiment.summaries import run_summary
    out = tmp_path / "scratch"
    (out / "model_best").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("")
    Ledger.open(tmp_path / "ledger.json", 1e15, "exact").charge("r", "train", 2e12, name="scratch", tokens=1, step=1)
    text = run_summary({"name": "scratch", "out": str(out), "model": "scratch-1m", "full": True, "steps": 7,
                        "max_steps": 10, "complete": False, "best_val_loss": 0.5, "best_step": 5, "flops": 2e12,
                        "flops_this_start": 1e12, "ledger": str(tmp_path / "ledger.json"), "seconds": 3.0})
    assert text.splitlines()[0].startswith(f"run scratch stopped at step 7 of 10 (python train.py --resume {out} "
                                           "continues it), best validation loss 0.5000 (at step 5)")
    assert listed_paths(text) == [str(out / "model_best"), str(out / "metrics.jsonl")]
    assert "2.000e+12 for this run (1.000e+12 since this start)" in text and "9.980e+14 left" in text
    assert text.splitlines()[-1] == f"next: python eval.py --model {out / 'model_best'} --out {out}-eval"


def test_help_description_is_the_docstring_without_its_examples():
    text = train.run_parser().format_help()
    assert "Every run writes to --out" in text and "The work is done" not in text
    assert "    python train.py --rank 8 --lr 1e-4 " not in text.split("examples:")[0]


ENTRY_POINTS = ("train.py", "eval.py", "reproduce.py", "bench.py", "gpu_check.py", "flops/__main__.py",
                "data/simulate.py", "qwen_min/__main__.py")


def test_a_reader_that_stops_early_ends_a_command_without_a_traceback():
    """`python eval.py ... | head`: the command stops with the status a shell gives SIGPIPE (141) and
    nothing on stderr, where Python alone ends in a BrokenPipeError traceback; every command goes
    through the same `exit_status`."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    talker = ("import sys\nfrom commandline import exit_status\n"
              "def main():\n    for _ in range(100000):\n        print('x' * 100)\n    return 0\n"
              "sys.exit(exit_status(main))\n")
    proc = subprocess.Popen([sys.executable, "-c", talker], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(10) == b"x" * 10
    proc.stdout.close()  # the reader goes away with ~10 MB still to come
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""
    for path in ENTRY_POINTS:
        assert (root / path).read_text().rstrip().endswith("sys.exit(exit_status(main))"), path
