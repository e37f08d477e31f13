"""The argument parser every command of the project uses (train.py, eval.py, reproduce.py, bench.py,
`python -m flops`, `python -m qwen_min`, `python -m data.simulate`), so they all behave alike:

- help shows each option's default and ends with examples (and the subcommands, where there are any);
- a typo is three lines: a short usage, the error with the closest option or choice, where help is;
- a negative number is a value, not an option: `--lr -1e-3` reaches the check that refuses it by name;
- a reader that stops early (`| head`) ends the command quietly, as it ends a Unix tool (`exit_status`).

Below the rest of the project: it imports nothing from it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from typing import Callable

NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")  # -1, -0.5, -.5, -1e-3, -2.5E+4

SIGPIPE_STATUS = 141  # what a shell reports for a command that a closed pipe stopped (128 + SIGPIPE)


def exit_status(main: Callable[[], int]) -> int:
    """main()'s exit status; if the reader of stdout went away (`... | head`), no traceback but
    status 141, as for a tool that SIGPIPE stopped. Python's own advice: point stdout at devnull so
    that the flush at exit does not raise again."""
    try:
        status = main()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_STATUS


def prose(doc: str) -> str:
    """A script's docstring as its --help description: the text without its indented example lines
    (the examples go under the options) and without a closing line about the code."""
    paragraphs = [p for p in re.split(r"\n\s*\n", doc.strip())
                  if p.strip() and not p.startswith("The work is done")
                  and not all(line.startswith("    ") for line in p.splitlines())]
    return "\n\n".join(p.strip() for p in paragraphs)


def with_default(text: str, default) -> str:
    """Help text with ` (default: X)` added, unless it states its default already or there is none
    to state (None, False, an empty list: the help says what happens then)."""
    if text is argparse.SUPPRESS or "(default" in text or default is None or default is False or default == []:
        return text
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """argparse with the project's help and errors. `examples` are command lines shown under the
    options; `subcommands` maps a subcommand's name to one line about it."""

    def __init__(self, prog: str, description: str, examples: list[str] | tuple[str, ...] = (),
                 subcommands: dict[str, str] | None = None, **kw):
        self.subcommands = dict(subcommands or {})
        self.elsewhere: dict[str, str] = {}  # an option of another command -> that command, for the error
        epilog = ""
        if examples:
            epilog += "examples:\n" + "\n".join(f"  {e}" for e in examples)
        if self.subcommands:
            width = max(map(len, self.subcommands))
            epilog += "\n\nsubcommands (each has its own --help):\n" + "\n".join(
                f"  {name:<{width}}  {about}" for name, about in self.subcommands.items())
        super().__init__(prog=prog, description=description, epilog=epilog or None,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        self._negative_number_matcher = NUMBER  # argparse's own matcher misses -1e-3

    def add_argument(self, *args, **kw):
        """As argparse's, with ` (default: X)` added to the help (see `with_default`)."""
        if kw.get("help") and kw.get("default") is not argparse.SUPPRESS:
            kw["help"] = with_default(kw["help"], kw.get("default"))
        return super().add_argument(*args, **kw)

    def short_usage(self) -> str:
        positionals = [a.metavar or a.dest for a in self._actions if not a.option_strings]
        first = "[" + "|".join(self.subcommands) + "] " if self.subcommands else ""
        return f"usage: {self.prog} {first}{' '.join(positionals) + ' ' if positionals else ''}[options]"

    def error(self, message: str):
        """Three lines on stderr and exit status 2: short usage, the error with a suggestion, where help is."""
        hint = self.suggestion(message)
        sys.stderr.write(f"{self.short_usage()}\n{self.prog}: error: {message}{hint}\n"
                         f"`{self.prog} --help` lists every option with its default\n")
        sys.exit(2)

    def suggestion(self, message: str) -> str:
        """'; did you mean X?' for an unknown option, subcommand or choice close to a known one."""
        options = [s for a in self._actions for s in a.option_strings if a.help is not argparse.SUPPRESS]
        if message.startswith("unrecognized arguments: "):
            for token in message.removeprefix("unrecognized arguments: ").split():
                name = token.split("=")[0]
                if name in self.elsewhere:
                    return f"; {name} is an option of {self.elsewhere[name]}"
                pool = options if name.startswith("-") else list(self.subcommands)
                close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
                if close:
                    return f"; did you mean {close[0]}?"
            return ""
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            close = difflib.get_close_matches(bad.group(1), re.findall(r"'([^']*)'", bad.group(2)), n=1, cutoff=0.6)
            return f"; did you mean {close[0]!r}?" if close else ""
        return ""
