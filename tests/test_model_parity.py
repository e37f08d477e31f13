"""Our logits against transformers' Qwen2ForCausalLM loaded from the same safetensors directory."""

from __future__ import annotations

import pytest
import torch

from qwen_min import QwenConfig, QwenForCausalLM, init_weights, load_pretrained, save_pretrained

from .conftest import tiny_model

transformers = pytest.importorskip("transformers")

SHAPES = {
    "odd-heads-one-kv-group": dict(hidden_size=48, num_attention_heads=3, num_key_value_heads=3),
    "mqa-one-kv-head": dict(hidden_size=40, num_attention_heads=5, num_key_value_heads=1, rope_theta=10000.0),
    "gqa-untied": dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False),
    "gqa-tied-3-layers": dict(num_hidden_layers=3, rope_theta=500.0),
    "explicit-head-dim": dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=24),
}


def hf_from(directory, dtype=torch.float32):
    return transformers.Qwen2ForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_logits_equal_transformers_fp32(tmp_path, shape):
    save_pretrained(tiny_model(seed=3, **SHAPES[shape]), tmp_path)
    ours, theirs = load_pretrained(tmp_path), hf_from(tmp_path)
    ids = torch.randint(0, 97, (3, 23))
    with torch.no_grad():
        diff = (ours(ids) - theirs(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-5


def test_left_padded_batch_equals_transformers(model_dir):
    _, directory = model_dir
    ours, theirs = load_pretrained(directory), hf_from(directory)
    ids = torch.randint(0, 97, (3, 19))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    mask[2, :1] = 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (a - b)[real].abs().max().item() < 1e-5


def test_logits_close_to_transformers_bf16(model_dir):
    """bf16 on both sides: the same operations in the same order, so within bf16's ~3 significant digits."""
    _, directory = model_dir
    ours, theirs = load_pretrained(directory, dtype="bf16"), hf_from(directory, torch.bfloat16)
    ids = torch.randint(0, 97, (2, 21))
    with torch.no_grad():
        a, b = ours(ids).float(), theirs(input_ids=ids).logits.float()
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= 1e-2 * scale
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights under autocast run too
        auto = load_pretrained(directory)(ids).float()
    assert (auto - b).abs().max().item() <= 5e-2 * scale


def test_full_width_two_layers_equals_transformers(tmp_path):
    """Qwen2.5-0.5B's width, heads and full 151,936-token vocabulary, with 2 blocks of random weights."""
    config = QwenConfig(num_hidden_layers=2)
    save_pretrained(init_weights(QwenForCausalLM(config), seed=0), tmp_path)
    ours, theirs = load_pretrained(tmp_path), hf_from(tmp_path)
    ids = torch.randint(0, config.vocab_size, (1, 40))
    with torch.no_grad():
        a, b = ours(ids), theirs(input_ids=ids).logits
    assert a.shape == (1, 40, 151936)
    assert (a - b).abs().max().item() < 1e-5
    del theirs
