"""Training on Lotka-Volterra series, charged to a FLOPs budget: LoRA fine-tuning of Qwen2.5 on the
series written as text (the default), or a small model of the same architecture trained from scratch
(--model scratch-1m, scratch-5m, scratch-20m: every weight, on freshly simulated systems).

    python train.py --rank 8 --lr 1e-4                         # Qwen/Qwen2.5-0.5B-Instruct (hub or cache)
    python train.py --model tiny-random --max-steps 300 --eval-every 50 --out runs/tiny
    python train.py --model scratch-1m --flops 1e14 --batch-size 16 --lr 3e-3 --schedule cosine --warmup 100
    python train.py --resume runs/tiny                         # continue a stopped or killed run
    python train.py sweep --model tiny-random --max-steps 40   # lr x rank grid on 20% of the training systems
    torchrun --nproc-per-node 2 train.py ...                   # data parallel; each process charges its share

How a series enters the model is --encoding: digits (LLMTIME text, a token per character: the
report's), bins (a token per value) or continuous (the values themselves, through a value layer in
and a Gaussian-mixture head out over --head-steps steps at once; the scratch presets' default).

Every run writes to --out: config.json (the resolved settings), metrics.jsonl (a line per step),
adapter_best/ and adapter_last/ (PEFT layout; model_best/ and model_last/ when every weight trains),
loss.png, summary.json, checkpoint.pt (atomic, for --resume). Every training step and validation pass
is charged to the ledger (--ledger, budget --budget) with the FLOPs that `flops` computes for it; a run
stops cleanly before a step the budget can't pay for.

The work is done by the `experiment` library (settings, trainer, sweep); this file reads flags. The
report's whole plan is `python reproduce.py`.
"""

from __future__ import annotations

import argparse
import sys

from commandline import Parser, exit_status, prose
from experiment.cli import add_settings, given, point_elsewhere, run
from experiment.folders import resume_settings
from experiment.settings import EvalSettings, SweepSettings, TrainSettings
from experiment.summaries import run_summary, sweep_summary
from experiment.sweep import sweep
from experiment.trainer import train


def run_parser() -> Parser:
    p = Parser("python train.py", prose(__doc__), examples=[
        "python train.py --model tiny-random --max-steps 300 --eval-every 100 --lr 1e-2 --out runs/tiny",
        "python train.py --resume runs/tiny --max-steps 600     # continue, with more steps",
        "python train.py --rank 8 --lr 1e-4                      # Qwen2.5-0.5B-Instruct (hub or a local copy)",
        "python train.py --model scratch-1m --flops 3e13 --batch-size 16 --lr 3e-3 --schedule cosine --warmup 30"
        "   # from scratch, continuous values",
        "python train.py --model scratch-1m --encoding bins --chunk 400 --stride 400 --flops 1e13   # a token per value"],
        subcommands={"sweep": "the lr x rank grid on one ledger, with its table (sweep.md)"})
    add_settings(p, TrainSettings)
    p.add_argument("--resume", default=argparse.SUPPRESS, metavar="DIR",
                   help="continue the run in DIR from its checkpoint, the flags given here over its settings "
                        "(default: a new run)")
    return point_elsewhere(p, **{"python eval.py": EvalSettings})


def sweep_parser() -> Parser:
    p = Parser("python train.py sweep", SweepSettings.__doc__, examples=[
        "python train.py sweep --model tiny-random --max-steps 50 --out runs/sweep",
        "python train.py sweep --lrs 1e-5 5e-5 1e-4 --ranks 2 4 8 --train-fraction 0.2"])
    return add_settings(p, SweepSettings)


def settings_from_argv(argv: list[str]) -> TrainSettings:
    """A run's settings from its flags; with --resume DIR, the saved run's with the given flags over them."""
    flags = given(run_parser().parse_args(argv))
    resume = flags.pop("resume", None)
    s = (resume_settings(resume, **flags) if resume else TrainSettings(**flags)).resolved()
    s.check_head_flags(flags)
    return s


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "plan":
        print("error: the report's whole plan is its own command: python reproduce.py " + " ".join(argv[1:]),
              file=sys.stderr)
        return 2
    if argv and argv[0] == "sweep":
        a = SweepSettings(**given(sweep_parser().parse_args(argv[1:])))
        result = {}
        code = run(lambda: result.update(sweep(a)))
        if code == 0:
            print(sweep_summary(a.out, result["best"], a.ledger))
        return code
    summary = {}
    code = run(lambda: summary.update(train(settings_from_argv(argv))))
    if code == 0 and summary:
        print(run_summary(summary))
    return code


if __name__ == "__main__":
    sys.exit(exit_status(main))
