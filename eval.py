"""20-step forecasts of the validation systems, scored by MAE and CRPS against baselines (persistence,
parroting, an ODE fit; ARIMA and ETS with the baselines extra).

    python eval.py --ctx 80                                   # Qwen/Qwen2.5-0.5B-Instruct, untuned
    python eval.py --ctx 40 80 --adapter runs/lora-r8-lr0.0001-c512/adapter_best
    python eval.py --model tiny-random --ctx 40 80 --limit 8 --out runs/eval-tiny
    python eval.py --adapter runs/a --adapter runs/b --plot-systems 0 10 20

For each context length the first `ctx` steps of each system are written as text (ending with ';'),
the model continues them for --horizon steps under a grammar of the number format (so every step
parses), and the forecast is scored against the truth. Writes to --out: results.json, results.md,
mae_vs_horizon.png, forecasts.png, forecasts.npz (every forecast, for later figures). Generation
FLOPs are charged to --ledger.

The work is done by `experiment.forecast`; this file reads flags.
"""

from __future__ import annotations

import sys

from commandline import Parser, exit_status, prose
from experiment.cli import add_settings, given, point_elsewhere, run
from experiment.compare import compare, parse_names
from experiment.forecast import evaluate, with_base_model
from experiment.report import results_markdown
from experiment.settings import EvalSettings, TrainSettings
from experiment.summaries import compare_summary, eval_summary


def parser() -> Parser:
    p = Parser("python eval.py", prose(__doc__), examples=[
        "python eval.py --model tiny-random --ctx 40 80 --limit 8 --adapter runs/tiny --out runs/eval-tiny",
        "python eval.py --ctx 40 80 --adapter runs/lora-r8-lr0.0001-c512/adapter_best",
        "python eval.py --model tiny-random --limit 8 --samples 20 --temperature 0.7 --baselines parroting arima",
        "python eval.py --data runs/sets/shifted.h5 --split all --scale-from data/lotka_volterra_data.h5 --out runs/e"],
        subcommands={"compare": "several evaluations side by side, with the targets a forecaster is held to"})
    return point_elsewhere(add_settings(p, EvalSettings), **{"python train.py": TrainSettings})


def compare_parser() -> Parser:
    p = Parser("python eval.py compare", "Several evaluations (each one set) side by side: a row per set and "
               "forecaster, the targets the chosen forecaster meets, and MAE and CRPS against steps ahead.", examples=[
                   "python eval.py compare runs/eval-val runs/eval-fresh --out runs/compare",
                   "python eval.py compare runs/e-* --forecaster parroting --out runs/compare-parroting"])
    p.add_argument("folders", nargs="+", metavar="EVAL", help="evaluation folders of eval.py (required)")
    p.add_argument("--out", default="runs/compare", help="folder for comparison.md and comparison.png")
    p.add_argument("--forecaster", default=None, help="the forecaster held to the targets (default: the first "
                   "evaluation's model)")
    p.add_argument("--skip", action="append", default=[], metavar="NAME",
                   help="leave forecaster NAME (as the table calls it) out; repeat for several (default: none)")
    p.add_argument("--name", action="append", default=[], metavar="OLD=NEW",
                   help="call forecaster OLD (a run's folder name, or a baseline's) NEW in the table; repeat for "
                        "several (default: none)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        args = compare_parser().parse_args(argv[1:])
        table = []
        code = run(lambda: table.append(compare(args.folders, args.out, args.forecaster, parse_names(args.name),
                                                tuple(args.skip))))
        if code == 0:
            print(table[0])
            print(compare_summary(args.out))
        return code
    flags = given(parser().parse_args(argv))
    s = EvalSettings(**flags)
    results = {}
    code = run(lambda: results.update(evaluate(EvalSettings(**with_base_model(flags)))),
               interrupted=f"stopped: no results written; the batches generated so far are charged to {s.ledger}, "
                           "and the same command again charges only the rest")
    if code == 0:
        print(results_markdown(results))
        print(eval_summary(s.out, results, s.ledger))
    return code


if __name__ == "__main__":
    sys.exit(exit_status(main))
