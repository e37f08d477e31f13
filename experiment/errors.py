"""The two ways the library stops a command: a user's mistake (one line, exit status 2, before any
work) and a run's own problem (one line, exit status 1, what it saved kept)."""

from __future__ import annotations

import math


class UsageError(Exception):
    """A bad setting: printed as one line, exit status 2, before any work."""


class RunError(Exception):
    """A run that stopped on a problem of its own (a loss that is no longer finite): printed as one
    line, exit status 1; what it had saved is kept."""


def need(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
