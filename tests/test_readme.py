"""The README's Python examples run as written on a CPU-only machine, in a fresh folder, with the
offline tiny random model in place of the hub id (no weights can be downloaded here); the files they
say they write exist, and the merged export they make loads with `python -m qwen_min`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from qwen_min import LoadError, load_pretrained

from .conftest import ROOT

HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_every_python_example_runs_on_the_cpu(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 3 and any(HUB_ID in b for b in blocks)
    data = ROOT / "data" / "lotka_volterra_data.h5"
    if data.is_file():  # the examples use the default data file (simulated when missing: slower, same result)
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / data.name).symlink_to(data)
    for i, block in enumerate(blocks):
        done = run(["-c", block.replace(HUB_ID, "tiny-random")], tmp_path)
        assert done.returncode == 0, f"README Python example {i + 1} failed:\n{block}\n{done.stderr[-3000:]}"
    runs = tmp_path / "runs"
    assert (runs / "tiny-lib" / "adapter_best" / "adapter_model.safetensors").is_file()
    assert (runs / "eval-lib" / "results.json").is_file() and (runs / "adapter" / "adapter_config.json").is_file()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (runs / "merged").iterdir()}
    done = run(["-m", "qwen_min", "--model", "runs/merged", "--numbers-only", "--max-new-tokens", "5"], tmp_path)
    assert done.returncode == 0 and len(done.stdout.strip()) == len("0.25,1.50;0.27,1.47;0.30,1.43;") + 5, done.stderr


def test_cuda_asked_of_a_cpu_only_torch_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(LoadError, match=r"device 'cuda': this torch .* has no CUDA device"):
        load_pretrained("tiny-random", device="cuda")
