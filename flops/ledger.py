"""The FLOPs budget ledger: one JSON file, one entry per experiment, never over its limit.

    ledger = Ledger.open("runs/ledger.json", budget=1e17, convention="exact")
    ledger.charge("3f9c2a7b11d0", "train", step_flops, name="lora-r8-lr1e-4", tokens=2048, step=12)
    # ... then compute step 12; BudgetExceeded above means: stop and save, nothing was charged

Work is charged before it is computed (a claim), under the file's lock, so no two processes can
compute what the budget pays for once and no failure after a compute leaves it uncharged. Work whose
cost is known only afterwards claims an upper bound (`claim=True`) and `settle`s it to what it spent.

Each entry is keyed by the identity of one unit of work (a training run's id, an evaluation's
digest of everything that decides its computation), with the human name beside it. Crash-safe:
every charge re-reads the file under an exclusive lock (several processes may share one ledger),
adds, and replaces the file atomically. Charges keyed by a training step or by a key are applied
once only, so a resumed run that repeats a step, or a rerun stage, pays nothing twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

from data.files import WriteFailed, remove_leftovers, write_text

from .conventions import get_convention

DEFAULT_BUDGET = 1e17


class BudgetExceeded(RuntimeError):
    """A charge that would take the ledger over its budget; nothing was charged."""


class LedgerError(ValueError):
    """A ledger file that can't be used as asked (unreadable, other convention or budget)."""


# --- the chain: each entry's hash covers the one before it, the head covers the last --------------

def entry_hash(previous: str, key: str, entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "chain"}
    return hashlib.sha256((previous + json.dumps([key, body], sort_keys=True)).encode()).hexdigest()


def chained(data: dict) -> dict:
    """`data` with every entry's `chain` hash set in order, and the ledger's `head` (the last hash and
    the number of entries), so that an edited, deleted or reordered entry breaks the chain."""
    previous = hashlib.sha256(json.dumps([data["budget"], data["convention"]]).encode()).hexdigest()
    for key, entry in data["experiments"].items():
        entry["chain"] = previous = entry_hash(previous, key, entry)
    data["head"] = {"hash": previous, "entries": len(data["experiments"])}
    return data


def check_chain(path: Path, data: dict) -> None:
    """Refuse a ledger whose chain breaks: an entry changed, removed or moved by anything but `charge`.
    A ledger from before the chain (no `head`) is accepted, and chained at its next write."""
    if "head" not in data:
        return
    found = {k: e.get("chain") if isinstance(e, dict) else None for k, e in data["experiments"].items()}
    head = dict(data["head"]) if isinstance(data["head"], dict) else {}
    expected = chained(json.loads(json.dumps({k: data[k] for k in ("budget", "convention", "experiments")})))
    for key, entry in expected["experiments"].items():
        if found[key] != entry["chain"]:
            raise LedgerError(f"{path}: the chain breaks at entry {key!r} (changed, removed or reordered by "
                              f"hand?); a ledger that can't be audited is refused")
    if head != expected["head"]:
        raise LedgerError(f"{path}: the chain's head does not match its entries (an entry removed by hand?); "
                          f"a ledger that can't be audited is refused")


class Ledger:
    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    # --- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, budget: float | None = None, convention: str | None = None) -> "Ledger":
        """Open or create. A new ledger takes budget (default 1e17) and convention (default exact);
        an existing one keeps its own, and asking for a different convention is an error."""
        path = Path(path)
        if path.is_dir():
            raise LedgerError(f"{path}: is a folder, not a ledger file (give a file path, e.g. {path / 'ledger.json'})")
        if path.exists():
            ledger = cls(path, cls._read(path))
            if convention is not None and get_convention(convention).name != ledger.convention:
                raise LedgerError(f"{path}: this ledger counts under the {ledger.convention!r} convention, "
                                  f"not {convention!r}; a ledger's convention is chosen once")
            if budget is not None and float(budget) != ledger.budget:
                raise LedgerError(f"{path}: this ledger's budget is {ledger.budget:.3g} FLOPs, not {float(budget):.3g}")
            return ledger
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise LedgerError(f"{path}: budget must be a finite positive number of FLOPs, got {budget}")
        data = {"budget": float(budget or DEFAULT_BUDGET), "convention": get_convention(convention or "exact").name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "experiments": {}}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LedgerError(f"{path}: can't create its folder ({e.strerror})") from None
        with cls._locked(path):
            if not path.exists():
                cls._write(path, data)
        return cls.open(path, budget, convention)

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            data = json.loads(path.read_text())
            budget = float(data["budget"])
            get_convention(data["convention"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise LedgerError(f"{path}: not a FLOPs ledger ({type(e).__name__}: {e})") from None
        except OSError as e:
            raise LedgerError(f"{path}: can't read the ledger ({e.strerror})") from None
        if not (isinstance(data["budget"], (int, float)) and math.isfinite(budget) and budget > 0):
            raise LedgerError(f"{path}: the budget must be a finite positive number of FLOPs, got {data['budget']!r}")
        if not isinstance(data.get("experiments"), dict):
            raise LedgerError(f"{path}: not a FLOPs ledger (experiments must be an object, got "
                              f"{type(data.get('experiments')).__name__})")
        check_chain(path, data)
        for key, e in data["experiments"].items():
            numbers = isinstance(e, dict) and all(
                isinstance(e.get(f), (int, float)) and not isinstance(e.get(f), bool) and e.get(f) >= 0
                for f in ("flops", "steps", "tokens"))
            if not numbers:
                raise LedgerError(f"{path}: entry {key!r} must hold non-negative numbers flops, steps and tokens, "
                                  f"got {e!r:.120}")
            last, keys = e.get("last_step", 0), e.get("keys", [])
            if not (isinstance(last, int) and not isinstance(last, bool) and last >= 0
                    and isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                raise LedgerError(f"{path}: entry {key!r} must hold last_step (a step number) and keys (a list of "
                                  f"names), got last_step={last!r}, keys={keys!r:.60}")
        return data

    @staticmethod
    def _write(path: Path, data: dict) -> None:
        try:
            remove_leftovers(path.parent, path.name)  # of writes killed half-way; called under the lock
            write_text(path, json.dumps(chained(data), indent=1))
        except WriteFailed as e:
            raise LedgerError(f"{path}: can't write the ledger ({e.reason}); nothing was charged") from None

    @staticmethod
    @contextmanager
    def _locked(path: Path):
        try:
            lock = open(path.with_name(path.name + ".lock"), "a")
        except OSError as e:
            raise LedgerError(f"{path}: can't use the ledger's folder ({e.strerror})") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def refresh(self) -> "Ledger":
        self.data = self._read(self.path)
        return self

    # --- reading -----------------------------------------------------------------------------------
    @property
    def budget(self) -> float:
        return float(self.data["budget"])

    @property
    def convention(self) -> str:
        return self.data["convention"]

    @property
    def experiments(self) -> dict[str, dict]:
        return self.data["experiments"]

    @property
    def total(self) -> float:
        return sum(e["flops"] for e in self.experiments.values())

    @property
    def remaining(self) -> float:
        return self.budget - self.total

    def can_afford(self, flops: float) -> bool:
        return self.refresh().total + flops <= self.budget

    def named(self, name: str) -> dict[str, dict]:
        """The entries (key -> entry) charged under the human name `name`."""
        return {k: e for k, e in self.experiments.items() if e.get("name", k) == name}

    def spent(self, name: str) -> float:
        """FLOPs charged under the human name `name`, over all its entries."""
        return sum(e["flops"] for e in self.named(name).values())

    # --- charging ----------------------------------------------------------------------------------
    def charge(self, experiment: str, kind: str, flops: float, *, name: str | None = None, tokens: int = 0,
               step: int | None = None, key: str | None = None, steps: int = 1, claim: bool = False,
               folder: str | None = None, settings: str | None = None) -> bool:
        """Add `flops` to the entry `experiment` (a unit of work's identity; `name`, default the same,
        is what people read). With `step`, only if that step is past the last one charged; with `key`,
        only if that key was never charged. Returns whether anything was charged.
        Raises BudgetExceeded (charging nothing) when the total would pass the budget.
        With `claim` (and a `key`), `flops` is a bound claimed before the work: `settle` later
        replaces it with what the work spent; a claim never settled stays charged in full. `folder`
        (where the work's files are) and `settings` (a digest of what decides its cost) are recorded
        on the entry, for the audit."""
        if not flops >= 0:
            raise ValueError(f"a charge must be a non-negative number of FLOPs, got {flops}")
        with self._locked(self.path):
            self.refresh()
            e = self.experiments.setdefault(experiment, {"name": name or experiment, "kind": kind, "steps": 0,
                                                         "tokens": 0, "flops": 0.0, "last_step": 0, "keys": []})
            e.setdefault("last_step", 0), e.setdefault("keys", [])  # an entry edited by hand, or an old one
            if (step is not None and step <= e["last_step"]) or (key is not None and key in e["keys"]):
                return False
            if self.total + flops > self.budget:
                if not e["flops"] and not e["steps"]:
                    del self.experiments[experiment]
                raise BudgetExceeded(f"{self.path}: charging {flops:.3g} FLOPs to {e['name']!r} would take the ledger "
                                     f"to {self.total + flops:.4g} of its {self.budget:.3g} budget")
            if folder is not None:
                e["folder"] = folder
            if settings is not None:
                e["settings"] = settings
            e["flops"] += float(flops)
            e["tokens"] += int(tokens)
            e["steps"] += steps
            if step is not None:
                e["last_step"] = step
            if key is not None:
                e["keys"].append(key)
                if claim:
                    e.setdefault("claims", {})[key] = float(flops)
            e["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self._write(self.path, self.data)
            return True

    def settle(self, experiment: str, key: str, flops: float) -> None:
        """Replace the claim `key` of `experiment` (a bound charged before the work) with the `flops`
        the work spent: the difference is given back (or, past the bound, charged: it was computed)."""
        if not flops >= 0:
            raise ValueError(f"a charge must be a non-negative number of FLOPs, got {flops}")
        with self._locked(self.path):
            self.refresh()
            e = self.experiments[experiment]
            claimed = e.get("claims", {}).pop(key)
            e["flops"] += float(flops) - claimed
            if not e["claims"]:
                del e["claims"]
            e["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self._write(self.path, self.data)

    # --- reporting ---------------------------------------------------------------------------------
    def table(self) -> str:
        """The experiment table (the report's Table 5): FLOPs per experiment, totals, budget used."""
        rows = ["| experiment | kind | steps | tokens | FLOPs | share of budget |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for key, e in self.experiments.items():
            name = e.get("name", key)
            label = name if name == key else f"{name} ({key})"
            rows.append(f"| {label} | {e['kind']} | {e['steps']:,} | {e['tokens']:,} | {e['flops']:.3e} | "
                        f"{e['flops'] / self.budget:.2%} |")
        rows.append(f"| **total** | | {sum(e['steps'] for e in self.experiments.values()):,} | "
                    f"{sum(e['tokens'] for e in self.experiments.values()):,} | {self.total:.3e} | "
                    f"{self.total / self.budget:.2%} |")
        return "\n".join(rows) + (f"\n\nbudget {self.budget:.3e} FLOPs ({self.convention} convention), "
                                  f"used {self.total:.3e} ({self.total / self.budget:.2%}), "
                                  f"remaining {self.remaining:.3e}")
