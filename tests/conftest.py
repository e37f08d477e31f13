"""Shared helpers: tiny random Qwen2 models written to disk in the Hugging Face layout, a buffer watcher."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qwen_min import QwenConfig, QwenForCausalLM, init_weights, save_pretrained

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
QWEN_TOKENIZER = SHARED / "qwen2.5-tokenizer"
QWEN_CONFIGS = SHARED / "qwen2.5-0.5b"

needs_qwen_tokenizer = pytest.mark.skipif(
    not (QWEN_TOKENIZER / "tokenizer.json").is_file(),
    reason=f"the real Qwen2.5 tokenizer is not at {QWEN_TOKENIZER} (../shared/ beside the project)")
needs_qwen_configs = pytest.mark.skipif(
    not (QWEN_CONFIGS / "config.json").is_file(),
    reason=f"the official Qwen2.5-0.5B configs are not at {QWEN_CONFIGS} (../shared/ beside the project)")


def tiny_config(**overrides) -> QwenConfig:
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, bos_token_id=None, eos_token_id=None)
    return QwenConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, std: float = 0.2, **overrides) -> QwenForCausalLM:
    """Weights larger than the usual 0.02 so that differences between implementations would show."""
    return init_weights(QwenForCausalLM(tiny_config(**overrides)), seed=seed, std=std).eval()


@pytest.fixture
def model_dir(tmp_path):
    """A saved tiny model and its directory."""
    model = tiny_model()
    save_pretrained(model, tmp_path / "tiny")
    return model, tmp_path / "tiny"


@pytest.fixture(scope="module")
def series_file(request, tmp_path_factory):
    """A small simulated series file; a test module sets SERIES = (systems, seed) to choose it."""
    from data import write_series
    from data.simulate import simulate

    systems, seed = getattr(request.module, "SERIES", (60, 5))
    trajectories, time_, _ = simulate(systems=systems, seed=seed)
    return write_series(tmp_path_factory.mktemp("data") / "lv.h5", trajectories, time_)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class NewBuffers(TorchDispatchMode):
    """The buffers that ops produce while active, among outputs that `match`: the shape each had when
    first produced (`shapes`, in order; an op writing in place into one adds nothing) and the most of
    them alive at once (`most_alive`)."""

    def __init__(self, match):
        super().__init__()
        self.match, self.shapes, self.live, self.most_alive = match, [], {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and self.match(t):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr not in self.live:
                    self.shapes.append(tuple(t.shape))
                    self.live[ptr] = weakref.ref(storage, lambda _, ptr=ptr: self.live.pop(ptr, None))
                self.most_alive = max(self.most_alive, len(self.live))
        return out


@pytest.fixture
def scratch_run(series_file, tmp_path):
    """A scratch-1m run of one step on the module's series file: a folder with model_best/."""
    import train

    out = tmp_path / "scratch"
    assert train.main(["--model", "scratch-1m", "--data", str(series_file), "--fresh-systems", "8", "--max-steps", "1",
                       "--eval-every", "1", "--val-limit", "2", "--batch-size", "2", "--ledger",
                       str(tmp_path / "ledger.json"), "--out", str(out), "--quiet"]) == 0
    return out
