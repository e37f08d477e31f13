"""Print FLOPs tables and ledgers.

    python -m flops --seq-len 512                              # full-size Qwen2.5-0.5B, exact convention
    python -m flops --seq-len 512 --convention coursework      # the reference report's rules (Table 3)
    python -m flops --seq-len 512 --rank 8 --targets q_proj,v_proj --json
    python -m flops ledger runs/ledger.json                    # the experiment table (Table 5)
    python -m flops audit runs/report/ledger.json runs/report/*/   # the ledger against the work
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from commandline import Parser, exit_status
from data import DataError
from experiment.audit import audit
from experiment.errors import UsageError
from experiment.models import meta_model
from qwen_min import LoadError, QwenConfig, open_model
from qwen_min.presets import is_preset

from .conventions import CONVENTIONS
from .ledger import Ledger, LedgerError
from .report import as_json, component_table, format_table

# A package's __main__ is a script: it may import the packages above flops (the model, LoRA, the
# experiment library) to build the model whose table it prints. Nothing inside flops imports them.


def table_parser() -> Parser:
    p = Parser("python -m flops", "Per-component FLOPs of one forward pass.", examples=[
        "python -m flops --seq-len 512 --convention coursework   # the reference report's Table 3, side by side",
        "python -m flops --seq-len 512 --rank 8 --json",
        "python -m flops --config scratch-1m --seq-len 100",
        "python -m flops ledger runs/ledger.json                 # the experiments charged to a budget"],
        subcommands={"ledger": "print a FLOPs ledger's experiments and what is left of its budget",
                     "audit": "check a ledger's chain and re-derive its runs' entries from their folders"})
    p.add_argument("--seq-len", type=int, default=512, help="tokens in the sequence")
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="exact",
                   help="exact: what the code computes; coursework: the reference report's rules")
    p.add_argument("--config", default=None, help="a config.json, a model directory or a preset (tiny-random, "
                   "scratch-1m, scratch-5m, scratch-20m) (default: Qwen2.5-0.5B's)")
    p.add_argument("--rank", type=int, default=0, help="LoRA rank, 0 for no adapters")
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated LoRA targets")
    p.add_argument("--json", action="store_true", help="print component name -> FLOPs as JSON (default: a table)")
    return p


def ledger_parser() -> Parser:
    p = Parser("python -m flops ledger", "Print a FLOPs ledger's experiments.",
               examples=["python -m flops ledger runs/ledger.json", "python -m flops ledger runs/report/ledger.json --json"])
    p.add_argument("path", help="the ledger file, e.g. runs/ledger.json (required)")
    p.add_argument("--json", action="store_true", help="print the ledger's JSON (default: a table)")
    return p


def config_of(name: str) -> QwenConfig:
    """--config: a preset's, a model directory's or a hub id's config (the one it reads by default), or
    a config.json."""
    if is_preset(name) or not Path(name).is_file():
        return open_model(name).config()
    return QwenConfig.from_json(name)


def table_main(argv) -> int:
    args = table_parser().parse_args(argv)
    if args.seq_len < 1 or args.rank < 0:
        print("error: --seq-len must be >= 1 and --rank >= 0", file=sys.stderr)
        return 2
    try:
        config = config_of(args.config) if args.config else None
        model = meta_model(config, args.rank, tuple(t for t in args.targets.split(",") if t))
    except (LoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = component_table(model, args.seq_len, args.convention)
    if args.json:
        print(json.dumps(as_json(rows), indent=1))
    else:
        compare = args.convention == "coursework" and args.seq_len == 512 and config is None
        print(format_table(rows, args.convention, args.seq_len, compare_report=compare))
    return 0


def ledger_main(argv) -> int:
    args = ledger_parser().parse_args(argv)
    if not Path(args.path).is_file():
        print(f"error: {args.path}: no such ledger file", file=sys.stderr)
        return 2
    try:
        ledger = Ledger.open(args.path)
    except LedgerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(ledger.data, indent=1) if args.json else ledger.table())
    return 0


def audit_main(argv) -> int:
    p = Parser("python -m flops audit", "Check a ledger: its hash chain and budget, each training run's entry "
               "re-derived from the run's settings and data with the code's own flops(), and each evaluation's "
               "against what its results.json records.",
               examples=["python -m flops audit runs/report/ledger.json runs/report/*/"])
    p.add_argument("path", help="the ledger file (required)")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run and evaluation folders whose entries to "
                   "re-derive (others are left out)")
    args = p.parse_args(argv)
    if not Path(args.path).is_file():
        print(f"error: {args.path}: no such ledger file", file=sys.stderr)
        return 2
    try:
        lines, agree = audit(args.path, [d for d in args.runs if (Path(d) / "checkpoint.pt").is_file()],
                             [d for d in args.runs if (Path(d) / "results.json").is_file()])
    except (LedgerError, LoadError, UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if agree else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "ledger":
        return ledger_main(argv[1:])
    if argv and argv[0] == "audit":
        return audit_main(argv[1:])
    return table_main(argv)


if __name__ == "__main__":
    sys.exit(exit_status(main))
