"""The command line over the settings dataclasses: one flag per field (`--batch-size` for
`batch_size`), its help and default taken from the field, and one way to turn a user's mistake into
one line and exit status 2.

Parsers leave every flag the user did not give out of the namespace (argparse.SUPPRESS), so the
dataclass holds the only defaults and `given(ns)` is exactly what was typed, abbreviations included
(`--max 5` is `--max-steps 5`): what `--resume` lets override the saved run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields

from commandline import Parser, with_default
from data import DataError
from data.files import WriteFailed
from flops import BudgetExceeded
from flops.ledger import LedgerError
from qwen_min import LoadError

from .errors import RunError, UsageError
from .groups import Charged

USER_ERRORS = (UsageError, LoadError, DataError, LedgerError, BudgetExceeded, WriteFailed)


def add_settings(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """One argument per field of the settings dataclass `cls` (except `skip`), where the work is
    charged (ledger, budget, convention) last."""
    charged = {f.name for f in fields(Charged)}
    for f in sorted(fields(cls), key=lambda f: f.name in charged):
        if f.name in skip:
            continue
        meta = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        kw = {"help": with_default(meta.get("help", ""), default), "default": argparse.SUPPRESS, "dest": f.name}
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", **kw)
            continue
        kw["type"] = meta.get("type") or type(default)
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if meta.get("flag") == "append":
            kw["action"] = "append"
        elif isinstance(default, list) or meta.get("nargs"):  # given twice (`--ctx 40 --ctx 80`), both are kept
            kw["nargs"] = meta.get("nargs") or "+"
            kw["action"] = "extend"
        p.add_argument(flag, **kw)
    return p


def options_of(cls) -> set[str]:
    """The flags `add_settings` makes for the settings dataclass `cls`."""
    return {"--" + f.name.replace("_", "-") for f in fields(cls)}


def point_elsewhere(p: Parser, **commands) -> Parser:
    """Let `p` answer an option that belongs to another command by naming that command:
    `commands` maps a command line (`python eval.py`) to its settings dataclass."""
    own = {s for a in p._actions for s in a.option_strings}
    for command, cls in commands.items():
        p.elsewhere.update({flag: command for flag in options_of(cls) - own if flag not in p.elsewhere})
    return p


def given(ns: argparse.Namespace) -> dict:
    """The flags the user gave, as settings fields (a parser built by `add_settings` holds no defaults)."""
    return dict(vars(ns))


def run(work: Callable[[], object], interrupted: str | None = None) -> int:
    """Call `work`; a user's mistake is one line on stderr and exit status 2 (a run that stopped on
    its own problem, exit status 1), Ctrl-C prints `interrupted`
    (when given) and exits 130. Returns 0 otherwise."""
    try:
        work()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130
    return 0
