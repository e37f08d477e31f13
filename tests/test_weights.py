"""Loading and saving in the Hugging Face layout, and one clear error for each way a directory can be wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_min import LoadError, load_pretrained, parse_device, save_pretrained
from qwen_min.weights import open_model

from .conftest import ROOT, tiny_model


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_and_tied_head(model_dir):
    model, directory = model_dir
    stored = load_file(directory / "model.safetensors")
    assert "lm_head.weight" not in stored  # as in the official tied checkpoint
    loaded = load_pretrained(directory)
    assert same_weights(model, loaded)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert not any(p.is_meta for p in loaded.parameters())
    assert not loaded.training


def test_untied_round_trip(tmp_path):
    model = tiny_model(tie_word_embeddings=False)
    save_pretrained(model, tmp_path)
    assert "lm_head.weight" in load_file(tmp_path / "model.safetensors")
    assert same_weights(model, load_pretrained(tmp_path))


def test_dtype_and_device(model_dir):
    _, directory = model_dir
    model = load_pretrained(directory, dtype="bf16", device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("name, message", [
    ("tpu", "unknown device 'tpu'; expected cpu, cuda or cuda:N"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("meta", "unknown device 'meta'"),
    ("cuda:99", "device 'cuda:99': "),  # no CUDA here, or fewer than 100 devices
])
def test_bad_device_is_one_clear_error(name, message):
    with pytest.raises(LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_device(name)
    assert parse_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_cuda_asked_of_a_cpu_torch():
    with pytest.raises(LoadError, match="has no CUDA device to use"):
        parse_device("cuda")


def test_sharded_checkpoint(model_dir):
    model, directory = model_dir
    state = load_file(directory / "model.safetensors")
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, directory / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "model.safetensors").unlink()
    assert same_weights(model, load_pretrained(directory))
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(LoadError, match=r"model-00002-of-00002.safetensors: shard named in .* is missing"):
        load_pretrained(directory)


def rewrite(directory, change):
    path = directory / "model.safetensors"
    state = load_file(path)
    change(state)
    save_file(state, path)
    return path


def test_wrong_shape_names_file_and_key(model_dir):
    _, directory = model_dir
    path = rewrite(directory, lambda s: s.__setitem__("model.norm.weight", torch.ones(31)))
    with pytest.raises(LoadError) as info:
        load_pretrained(directory)
    assert str(info.value) == f"{path}: model.norm.weight has shape (31,), expected (32,) from config.json"


def test_missing_key(model_dir):
    _, directory = model_dir
    rewrite(directory, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(LoadError, match=r"missing key model.layers.1.mlp.up_proj.weight \(expected shape \(72, 32\)\)"):
        load_pretrained(directory)


def test_unknown_key(model_dir):
    _, directory = model_dir
    rewrite(directory, lambda s: s.__setitem__("model.layers.2.self_attn.q_proj.weight", torch.zeros(32, 32)))
    with pytest.raises(LoadError, match=r"model.safetensors: unknown key model.layers.2.self_attn.q_proj.weight"):
        load_pretrained(directory)


def test_untied_head_missing(tmp_path):
    save_pretrained(tiny_model(tie_word_embeddings=False), tmp_path)
    rewrite(tmp_path, lambda s: s.pop("lm_head.weight"))
    with pytest.raises(LoadError, match="missing key lm_head.weight"):
        load_pretrained(tmp_path)


def test_missing_files(model_dir, tmp_path):
    _, directory = model_dir
    with pytest.raises(LoadError, match="no such directory"):
        load_pretrained(tmp_path / "nowhere")
    (directory / "model.safetensors").unlink()
    with pytest.raises(LoadError, match="no model.safetensors or model.safetensors.index.json found"):
        load_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(LoadError, match=r"config.json: config file not found"):
        load_pretrained(directory)


def test_not_safetensors(model_dir):
    _, directory = model_dir
    (directory / "model.safetensors").write_bytes(b"definitely not a safetensors file")
    with pytest.raises(LoadError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(directory)


def test_a_file_instead_of_a_directory(model_dir):
    _, directory = model_dir
    with pytest.raises(LoadError, match="expected a model directory"):
        load_pretrained(directory / "config.json")


def run_offline(code: str, hf_home) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_hub_id_offline_without_cache_is_one_clear_error(tmp_path):
    code = ("from qwen_min import load_pretrained, LoadError\n"
            "try:\n    load_pretrained('Qwen/Qwen2.5-0.5B-Instruct')\n"
            "except LoadError as e:\n    print(e)\n")
    out = run_offline(code, tmp_path / "hf")
    assert out.returncode == 0, out.stderr
    command = "hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir models/qwen2.5-0.5b-instruct"
    assert out.stdout.strip() == ("Qwen/Qwen2.5-0.5B-Instruct: not in the local Hugging Face cache and the hub can't "
                                  f"be reached (offline?); download it where there is a network ({command}), "
                                  "then pass that directory")
    assert command in (ROOT / "README.md").read_text()  # the README's way to get the model is the same command


def test_a_mistyped_preset_gets_the_closest_name():
    with pytest.raises(LoadError, match=r"^tiny-rnadom: no such directory or preset; did you mean tiny-random\?$"):
        open_model("tiny-rnadom")


def test_hub_id_loads_from_the_cache_offline(model_dir, tmp_path):
    """The hub path for real: a snapshot laid out as huggingface_hub caches it, read with no network."""
    _, directory = model_dir
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-qwen"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(directory, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    code = "from qwen_min import load_pretrained\nprint(load_pretrained('someone/tiny-qwen').num_parameters())"
    out = run_offline(code, tmp_path / "hf")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == tiny_model().num_parameters()


@pytest.mark.parametrize("encoding", ["digits", "continuous"])
def test_a_model_is_resolved_once_per_training_run_and_once_per_evaluation(series_file, tmp_path, monkeypatch,
                                                                           encoding):
    """The name is resolved (a hub id would be fetched) and config.json read once per command: every
    later question goes to the one ModelSource."""
    import eval as evaluation
    import train
    from qwen_min import ModelSource, load_tokenizer
    from qwen_min import weights

    directory = tmp_path / "qwen"
    save_pretrained(load_pretrained("tiny-random"), directory, tokenizer=load_tokenizer("tiny-random"))
    calls = {"opened": [], "resolved": [], "config read": []}

    def counting(kind, real, keep=lambda *a: True):
        def wrapper(*args, **kwargs):
            if keep(*args):
                calls[kind].append(args)
            return real(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(ModelSource, "__init__", counting("opened", ModelSource.__init__))
    monkeypatch.setattr(weights, "resolve_dir", counting("resolved", weights.resolve_dir))
    monkeypatch.setattr(weights, "read_json_object", counting(
        "config read", weights.read_json_object, lambda path, *a: path.name == "config.json"))
    common = ["--data", str(series_file), "--ledger", str(tmp_path / "ledger.json"), "--quiet"]
    assert train.main(["--model", str(directory), "--encoding", encoding, "--chunk", "60", "--rank", "2",
                       "--max-steps", "2", "--val-limit", "2", "--out", str(tmp_path / "run"), *common]) == 0
    assert {k: len(v) for k, v in calls.items()} == {"opened": 1, "resolved": 1, "config read": 1}
    for found in calls.values():
        found.clear()
    assert evaluation.main(["--model", str(directory), "--adapter", str(tmp_path / "run"), "--limit", "2",
                            "--ctx", "20", "--horizon", "3", "--baselines", "persistence",
                            "--out", str(tmp_path / "eval"), *common]) == 0
    assert {k: len(v) for k, v in calls.items()} == {"opened": 1, "resolved": 1, "config read": 1}
