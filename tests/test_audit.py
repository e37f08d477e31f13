"""The ledger can be audited: its hash chain refuses an entry edited, removed or reordered by hand,
and `python -m flops audit` re-derives a run's entry from its folder and says where they disagree."""

from __future__ import annotations

import json

import pytest

import train
from experiment.audit import audit
from flops import Ledger
from flops.ledger import LedgerError, chained

from .test_mistakes import train_args

SERIES = (30, 2)


@pytest.fixture
def two_runs(series_file, tmp_path):
    for name, lr in (("a", "1e-3"), ("b", "1e-2")):
        assert train.main(train_args(series_file, tmp_path, "--lr", lr, "--out", str(tmp_path / name))) == 0
    return tmp_path / "ledger.json", [str(tmp_path / "a"), str(tmp_path / "b")]


def edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


def test_the_audit_agrees_with_the_work(two_runs):
    ledger, runs = two_runs
    lines, agree = audit(ledger, runs)
    assert agree and sum("agrees with the work" in line for line in lines) == 2


@pytest.mark.parametrize("damage,message", [
    (lambda d: next(iter(d["experiments"].values())).update(flops=1.0), "the chain breaks at entry"),
    (lambda d: d["experiments"].pop(list(d["experiments"])[-1]), "the chain's head does not match"),
    (lambda d: d.update(experiments=dict(reversed(list(d["experiments"].items())))), "the chain breaks at entry"),
    (lambda d: d.update(budget=1e30), "the chain breaks at entry")])
def test_a_ledger_edited_by_hand_is_refused(two_runs, damage, message):
    ledger, _ = two_runs
    edit(ledger, damage)
    with pytest.raises(LedgerError, match=message):
        Ledger.open(ledger)


def test_an_edit_that_rewrites_the_chain_is_caught_by_the_work(two_runs):
    """The chain has no secret: whoever rewrites it passes the chain, and the audit of the work catches them."""
    ledger, runs = two_runs
    edit(ledger, lambda d: (next(iter(d["experiments"].values())).update(flops=1e6), chained(d)))
    lines, agree = audit(ledger, runs)
    assert not agree and sum("DISAGREES: the work in" in line for line in lines) == 1


def test_a_run_never_charged_and_changed_settings_are_named(two_runs, series_file, tmp_path):
    ledger, runs = two_runs
    config = tmp_path / "a" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "dropout": 0.1}))
    assert train.main(train_args(series_file, tmp_path, "--ledger", str(tmp_path / "other.json"),
                                 "--out", str(tmp_path / "c"))) == 0
    lines, agree = audit(ledger, [*runs, str(tmp_path / "c")])
    assert not agree
    assert any(f"{tmp_path / 'a'}/config.json says other settings than those charged" in line for line in lines)
    assert any(line.startswith(f"{tmp_path / 'c'}: run ") and "has no entry in the ledger" in line for line in lines)


def test_an_evaluation_s_entry_is_checked_against_its_results(two_runs, series_file, tmp_path):
    import eval as evaluation

    from .test_mistakes import eval_args
    ledger, runs = two_runs
    assert evaluation.main(eval_args(series_file, tmp_path)) == 0
    lines, agree = audit(ledger, runs, [str(tmp_path / "eval")])
    assert agree and sum("agrees with the work" in line for line in lines) == 3
    results = tmp_path / "eval" / "results.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), "flops": 1.0}))
    lines, agree = audit(ledger, runs, [str(tmp_path / "eval")])
    assert not agree and any("results.json records 1.000000e+00" in line for line in lines)
