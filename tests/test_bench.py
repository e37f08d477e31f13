"""bench.py end to end at full width with one block: every workload runs, answers agree, ratios printed."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import bench  # noqa: E402


def test_bench_prints_every_workload_and_the_ratios(capsys):
    assert bench.main(["--layers", "1", "--runs", "1", "--seq-len", "32", "--eval-prompts", "4", "--eval-steps", "2",
                       "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "max |logit diff| 0.0e+00" in out  # the same weights give the same logits
    assert "mask-only tokens equal: True" in out
    calls = int(re.search(r"(\d+) forward calls vs 20", out).group(1))
    # 6 free tokens per time step, the first from the prefill, which the 40-step prompts share with the 80-step ones
    assert calls == 2 * 6
    losses = re.search(r"first loss ([\d.]+) vs ([\d.]+)", out)
    assert losses.group(1) == losses.group(2)
    assert re.search(r"^ratios forward=[\d.]+ train=[\d.]+ eval=[\d.]+ memory=[\d.]+$", out, re.M)


@pytest.mark.parametrize("flag", ["--layers", "--eval-prompts", "--runs"])
def test_bench_refuses_a_count_below_one(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main([flag, "0"])
    assert stop.value.code == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dtype", "bf17"], "unknown dtype 'bf17'"),
])
def test_bench_refuses_a_bad_device_or_dtype(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
