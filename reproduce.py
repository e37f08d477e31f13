"""The reference report's whole experiment plan in one command, on one ledger and one FLOPs budget.

    python reproduce.py --out runs/report                      # Qwen/Qwen2.5-0.5B-Instruct, 1e17 FLOPs
    python train.py plan --out runs/report                     # the same
    python reproduce.py --model tiny-random --budget 2e12 --eval-limit 8 --val-limit 10 --out runs/report-tiny

Stages (the budget is split between three groups by --shares, the report's about 10% / 70% / 20%):
  1. the untuned model's evaluation (contexts 40 and 80, 20 steps, validation systems)      } share 1
  2. a default LoRA run (rank 4, lr 1e-5, batch 4, chunk 512) and its evaluation            }
  3. the grid lr {1e-5, 5e-5, 1e-4} x rank {2, 4, 8} on 20% of the training systems         } share 2
  4. chunk sizes 128 and 768 at the grid's best setting                                     }
  5. a final run on all training systems at the best setting, and its evaluation            } share 3
Re-running the same command continues where it stopped, and the ledger charges nothing twice.
Writes report.md with the tables and figures.

The work is done by `experiment.plan`.
"""

from __future__ import annotations

import sys

from experiment.cli import plan_main


def main(argv=None) -> int:
    return plan_main(sys.argv[1:] if argv is None else argv, prog="python reproduce.py")


if __name__ == "__main__":
    sys.exit(main())
