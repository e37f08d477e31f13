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

from commandline import Parser, prose
from experiment.cli import add_settings, given, run
from experiment.forecast import evaluate
from experiment.report import results_markdown
from experiment.settings import EvalSettings
from experiment.summaries import eval_summary


def parser() -> Parser:
    p = Parser("python eval.py", prose(__doc__), examples=[
        "python eval.py --model tiny-random --ctx 40 80 --limit 8 --adapter runs/tiny --out runs/eval-tiny",
        "python eval.py --ctx 40 80 --adapter runs/lora-r8-lr0.0001-c512/adapter_best",
        "python eval.py --model tiny-random --limit 8 --samples 20 --temperature 0.7 --baselines parroting arima"])
    return add_settings(p, EvalSettings)


def main(argv=None) -> int:
    s = EvalSettings(**given(parser().parse_args(argv)))
    results = {}
    code = run(lambda: results.update(evaluate(s)),
               interrupted=f"stopped: no results written; the batches generated so far are charged to {s.ledger}, "
                           "and the same command again charges only the rest")
    if code == 0:
        print(results_markdown(results))
        print(eval_summary(s.out, results, s.ledger))
    return code


if __name__ == "__main__":
    sys.exit(main())
