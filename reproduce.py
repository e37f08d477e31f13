"""The reference report's whole experiment plan in one command, on one ledger and one FLOPs budget.

    python reproduce.py --out runs/report                      # Qwen/Qwen2.5-0.5B-Instruct, 1e17 FLOPs
    python reproduce.py --model tiny-random --budget 2e12 --eval-limit 8 --val-limit 10 --out runs/report-tiny

Stages (the budget is split between three groups by --shares, the report's about 10% / 70% / 20%):
  1. the untuned model's evaluation (contexts 40 and 80, 20 steps, validation systems)      } share 1
  2. a default LoRA run (rank 4, lr 1e-5, batch 4, chunk 512) and its evaluation            }
  3. the grid lr {1e-5, 5e-5, 1e-4} x rank {2, 4, 8} on 20% of the training systems         } share 2
  4. chunk sizes 128 and 768 at the grid's best setting                                     }
  5. a final run on all training systems at the best setting, and its evaluation            } share 3
Re-running the same command continues where it stopped, and the ledger charges nothing twice.
Writes report.md with the tables and figures.

The work is done by `experiment.plan`; this file reads flags.
"""

from __future__ import annotations

import sys

from commandline import Parser, exit_status, prose
from experiment.cli import add_settings, given, run
from experiment.plan import reproduce
from experiment.settings import PlanSettings
from experiment.summaries import plan_summary


def parser(prog: str = "python reproduce.py") -> Parser:
    p = Parser(prog, prose(__doc__), examples=[
        f"{prog} --out runs/report                # Qwen2.5-0.5B-Instruct, 1e17 FLOPs",
        f"{prog} --model tiny-random --budget 1e13 --out runs/report-tiny",
        f"{prog} --model tiny-random --budget 1e13 --out runs/report-tiny   # again: continues, charges nothing twice"])
    return add_settings(p, PlanSettings)


def main(argv=None) -> int:
    """The plan from the command line: prints report.md, then where everything went."""
    a = PlanSettings(**given(parser().parse_args(sys.argv[1:] if argv is None else argv)))

    def work():
        report = reproduce(a)
        print(report.read_text())
        print(plan_summary(report.parent))
    return run(work, "stopped: the same command continues from here (finished stages are read back, a stopped "
                     "training run resumes from its checkpoint, nothing is charged twice)")


if __name__ == "__main__":
    sys.exit(exit_status(main))
