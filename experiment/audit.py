"""A ledger audited against the work: each training run's entry re-derived from the code's own
`flops()`, the run's recorded settings (config.json) and its data, batch by batch, as the trainer
claimed it. The ledger's own integrity (its hash chain, a finite positive budget) is checked when
it is opened; this says where the file and the work disagree.
"""

from __future__ import annotations

from pathlib import Path

from flops import Ledger, get_convention
from qwen_min import open_model

from .batches import prepare_data
from .costs import step_cost, val_cost
from .encodings import encoding_of
from .folders import RunFolder, resume_settings
from .groups import settings_digest
from .models import META, run_model
from .outputs import EvalFolder
from .settings import TrainSettings


def expected_run_flops(folder: RunFolder, s: TrainSettings, steps: int, convention: str) -> float:
    """The FLOPs the first `steps` claims of the run in `folder` (its settings `s`) hold: every step's
    windows as the trainer drew them, and a validation pass with each step that had one (every
    --eval-every, and the steps metrics.jsonl records a validation at, such as an earlier start's last step)."""
    source, encoding = open_model(s.model), encoding_of(s.encoding)
    model = run_model(s, source, encoding, META, None)
    rule = get_convention(convention)
    prep = prepare_data(s, source.tokenizer(s.encoding), encoding)
    total = sum(step_cost(model, rule, s.chunk, prep.batch(k, s.batch_size, s.seed)[1]).training
                for k in range(1, steps + 1))
    validated = {k for k in range(1, steps + 1) if k % s.eval_every == 0}
    validated |= {m["step"] for m in folder.read_metrics(upto=steps) if m.get("val_loss") is not None}
    return total + len(validated) * val_cost(model, rule, prep.val_ids)


def evaluations_of(folders: list[str]) -> dict[str, tuple[str, float]]:
    """{ledger key: (folder, FLOPs its language models computed)} of the evaluation folders given."""
    found = {}
    for d in folders:
        results = EvalFolder(d).results()
        if results is not None and "ledger_key" in results:
            found[results["ledger_key"]] = (d, float(results["flops"]))
    return found


def audit(ledger_path: str | Path, run_dirs: list[str], eval_dirs: list[str] = ()) -> tuple[list[str], bool]:
    """(a line per entry, whether the ledger and the work agree everywhere they were compared): a
    training run's entry re-derived from its folder, an evaluation's compared with the FLOPs its
    results.json records (the same evaluation in any folder computes the same)."""
    ledger = Ledger.open(ledger_path)
    evals = evaluations_of(list(eval_dirs))
    lines = [f"{ledger_path}: {len(ledger.experiments)} entries, {ledger.total:.6e} of {ledger.budget:.3e} FLOPs, "
             f"chain intact"]
    agree = ledger.total <= ledger.budget
    if not agree:
        lines.append(f"over budget: {ledger.total:.6e} charged on a budget of {ledger.budget:.3e}")
    runs = {}
    for d in run_dirs:
        config = RunFolder(d).read_config()
        runs[config.get("run_id")] = (d, config)
    for key, entry in ledger.experiments.items():
        name = entry.get("name", key)
        if key in evals:
            d, flops = evals[key]
            open_claims = entry.get("claims", {})
            same = not open_claims and abs(flops - entry["flops"]) <= 1e-9 * max(flops, 1.0)
            agree &= same
            lines.append(f"{name} ({key}): {entry['flops']:.6e} FLOPs, an evaluation; " + (
                "agrees with the work" if same else f"DISAGREES: {d}/results.json records {flops:.6e}"
                + (f", and {len(open_claims)} claim(s) were never settled" if open_claims else "")))
            continue
        if key not in runs:
            open_claims = len(entry.get("claims", {}))
            lines.append(f"{name} ({key}): {entry['flops']:.6e} FLOPs, {entry['kind']}; not re-derived (no run folder "
                         f"given for it)" + (f"; {open_claims} claim(s) never settled" if open_claims else ""))
            continue
        d, config = runs.pop(key)
        if config.get("world_size", 1) != 1:
            lines.append(f"{name} ({key}): not re-derived (a run of {config['world_size']} processes)")
            continue
        settings = resume_settings(d).resolved()
        digest = settings_digest(settings)
        if entry.get("settings", digest) != digest:
            agree = False
            lines.append(f"{name} ({key}): DISAGREES: {d}/config.json says other settings than those charged")
            continue
        expected = expected_run_flops(RunFolder(d), settings, entry.get("last_step", 0), ledger.convention)
        same = abs(expected - entry["flops"]) <= 1e-9 * max(expected, 1.0)
        agree &= same
        lines.append(f"{name} ({key}): {entry['flops']:.6e} FLOPs for {entry.get('last_step', 0)} steps; "
                     + ("agrees with the work" if same else f"DISAGREES: the work in {d} comes to {expected:.6e}"))
    for key, (d, _) in runs.items():
        agree = False
        lines.append(f"{d}: run {key} has no entry in the ledger (its steps were never charged)")
    return lines, agree
