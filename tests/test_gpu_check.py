"""The GPU check rehearsed on the CPU (scripts/gpu-check.sh --device cpu): the same steps as on a GPU
at tiny sizes, so the script that will get one short lease on a GPU machine can't rot here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from .conftest import ROOT


def test_the_gpu_check_rehearses_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + (out / "env.txt").read_text()
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"env.txt", "summary.md", "bench.log", "plan.log"} <= set(files)
    steps = re.findall(r"^STEP (\S+) (\d+) ([\d.]+) limit (\d+)$", (out / "env.txt").read_text(), re.M)
    assert [s[0] for s in steps] == ["tests", "bench", "compile", "batches", "plan"]
    assert all(rc == "0" and float(t) < float(limit) for _, rc, t, limit in steps)
    summary = (out / "summary.md").read_text()
    for heading in ("## bench.py (cpu, fp32)", "## bench.py --compile", "## A LoRA step against batch size",
                    "## The plan"):
        assert heading in summary
    assert re.search(r"^\| forward 1x32 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| 1.037 \|", summary, re.M)
    assert len(re.findall(r"^\| \d+ x 32 \|", summary, re.M)) >= 2  # the batch sweep: one row per size timed
    spent = float(re.search(r"random weights \(tiny size\): ([\d.e+]+) FLOPs charged", summary).group(1))
    assert 0 < spent <= 2e10  # the rehearsal's budget
    assert "5 skipped" in (out / "tests.log").read_text()  # the CUDA tests, each with its reason
