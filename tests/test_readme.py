"""The README is what a user reads first, so what it says is checked: it stays short; every link in it
and in docs/ leads somewhere; its (and docs/') Python examples run as written on a CPU-only machine,
in a fresh folder, with the offline tiny random model in place of the hub id, and what they say they
write exists; the first hour's commands print what it quotes; the test count it gives is the suite's."""

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


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path, kind: str = "python") -> list[str]:
    return blocks_of(path.read_text(), kind)


def python_blocks() -> list[str]:
    return [b for path in DOCUMENTS for b in blocks(path)]


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


def test_the_readme_is_short_and_speaks_to_its_reader():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15_000
    for word in ("issue", "session", "round"):
        assert word not in text.lower(), word


def test_every_link_of_the_readme_and_the_docs_leads_somewhere():
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#]+)\)", path.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (path.parent / target).exists(), f"{path.name} links to {target}, which is not there"


def normalised(text: str) -> str:
    return re.sub(r"\d+ s of steps", "N s of steps", text).strip()


def test_the_first_hour_prints_what_the_readme_quotes(tmp_path):
    readme = (ROOT / "README.md").read_text()
    first_hour = readme.split("## A first hour on a CPU", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in blocks_of(first_hour, "bash")[0].splitlines()]
    train_cmd, eval_cmd = (next(c for c in commands if c.startswith(f"python {s}.py")) for s in ("train", "eval"))
    quoted = [normalised(b) for b in blocks_of(first_hour, "")]
    data = ROOT / "data" / "lotka_volterra_data.h5"
    if data.is_file():
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / data.name).symlink_to(data)
    printed = []
    for command in (train_cmd, eval_cmd):
        script, *args = command.split()[1:]
        done = run([str(ROOT / script), *args, "--quiet"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        printed.append(normalised(done.stdout))
    assert printed[0] == quoted[0]
    assert printed[1].endswith(quoted[1])  # after results.md's table


def blocks_of(text: str, kind: str) -> list[str]:
    """The bodies of the fenced blocks of language `kind` ('' for a bare fence), fence by fence."""
    found, lang, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```") and lang is None:
            lang, body = line[3:].strip(), []
        elif line.startswith("```"):
            if lang == kind:
                found.append("\n".join(body) + "\n")
            lang = None
        elif lang is not None:
            body.append(line)
    return found


def test_the_test_count_the_readme_gives_is_the_suite_s():
    done = run(["-m", "pytest", "--collect-only", "-q", "-p", "tests.readme_counts", "-p", "no:cacheprovider"], ROOT)
    total, shared, cuda = map(int, re.search(r"COUNTS (\d+) (\d+) (\d+)", done.stdout).groups())
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"{total} tests" in text and f"all pass but the {cuda} that need a CUDA device" in text
    assert f"without it, {total - shared - cuda} pass and {shared + cuda} skip" in text
    assert {"Eleven": 11}.get(re.search(r"(\w+) tests need files from outside", text).group(1)) == shared


def test_ci_installs_and_tests_as_the_readme_says():
    """.ci/run runs the README's CPU set-up line, command by command, and then its test command."""
    text = (ROOT / "README.md").read_text()
    cpu_line = next(b for b in blocks_of(text, "bash") if "download.pytorch.org/whl/cpu" in b).strip()
    test_command = blocks_of(text.split("## Test", 1)[1], "bash")[0].strip()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    wanted = [c.strip() for c in cpu_line.split("&&")] + [test_command]
    assert [c.replace(" -q", "") for c in ci] == [c.replace(" -q", "") for c in wanted]


def test_the_real_model_s_step_cost_the_readme_gives_is_the_code_s():
    from experiment.models import meta_model
    from flops import get_convention
    text = " ".join((ROOT / "README.md").read_text().split())
    quoted = float(re.search(r"a LoRA step of 4 windows of 512 tokens is ([\d.]+e\d+) FLOPs", text).group(1))
    step = 4 * meta_model(None, 8, ("q_proj", "v_proj")).flops(512, get_convention("exact")).training
    assert f"{step:.1e}" == f"{quoted:.1e}"
