"""Structure of the model: parameter names and counts, config reading, rotary and norm numerics."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_min import LoadError, QwenConfig, QwenForCausalLM
from qwen_min.model import MLP, RMSNorm, apply_rotary, silu_mul

from .conftest import QWEN_CONFIGS, needs_qwen_configs, tiny_model


def meta_model(config: QwenConfig) -> QwenForCausalLM:
    with torch.device("meta"):
        return QwenForCausalLM(config)


def test_full_size_parameter_count_on_meta():
    model = meta_model(QwenConfig())
    assert model.num_parameters() == 494_032_768
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_untied_head_counts_separately():
    tied, untied = meta_model(QwenConfig()), meta_model(QwenConfig(tie_word_embeddings=False))
    assert untied.num_parameters() - tied.num_parameters() == 151936 * 896


def test_parameter_names_are_the_checkpoint_keys():
    keys = set(meta_model(QwenConfig(num_hidden_layers=1)).state_dict())
    layer = "model.layers.0."
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                layer + "input_layernorm.weight", layer + "post_attention_layernorm.weight",
                *(layer + f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")),
                layer + "self_attn.o_proj.weight",
                *(layer + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down"))}
    assert keys == expected


@needs_qwen_configs
@pytest.mark.parametrize("name", ["config.json", "config.instruct.json"])
def test_official_configs_read_to_the_defaults(name):
    config = QwenConfig.from_json(QWEN_CONFIGS / name)
    defaults = QwenConfig()
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(config, field) == getattr(defaults, field)
    assert config.num_attention_heads // config.num_key_value_heads == 7  # query heads per key/value head


def test_config_reads_transformers_5_rope_parameters(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "qwen2", "rope_parameters": {"rope_type": "default", "rope_theta": 77.0}}))
    assert QwenConfig.from_json(path).rope_theta == 77.0


@pytest.mark.parametrize("raw, message", [
    ({"num_attention_heads": 14, "num_key_value_heads": 3}, "must be a multiple of num_key_value_heads"),
    ({"hidden_size": 100, "num_attention_heads": 3, "num_key_value_heads": 1}, "must be divisible by num_attention_heads"),
    ({"model_type": "llama"}, "model_type is 'llama', expected 'qwen2'"),
    ({"rope_scaling": {"type": "yarn", "factor": 4}}, "rope type 'yarn' is not supported"),
    ({"hidden_size": -5}, "hidden_size must be a positive integer"),
])
def test_config_errors_name_the_file_and_field(tmp_path, raw, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(LoadError, match=message) as info:
        QwenConfig.from_json(path)
    assert str(path) in str(info.value)


def test_config_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{nope")
    with pytest.raises(LoadError, match="not valid JSON"):
        QwenConfig.from_json(path)


def test_rmsnorm_in_fp32_then_weight():
    norm = RMSNorm(4, eps=0.0)
    norm.weight.data = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    torch.testing.assert_close(norm(x), torch.tensor([[1.0, -2.0, 3.0, -4.0]]))
    assert norm.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_rotary_rotates_pairs_half_apart():
    """Position p rotates dims (i, i + E/2) by p * theta^(-2i/E): with E=4 and theta=1 every angle is p."""
    x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    p = torch.tensor(0.7)
    cos = torch.full((1, 1, 4), float(p.cos()))
    sin = torch.full((1, 1, 4), float(p.sin()))
    out = apply_rotary(x, cos, sin).flatten()
    torch.testing.assert_close(out, torch.tensor([p.cos(), 0.0, p.sin(), 0.0]))


def test_forward_shapes_and_last_only():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 9))
    logits = model(ids)
    assert logits.shape == (2, 9, 97)
    torch.testing.assert_close(model(ids, last_only=True), logits[:, -1:])


def test_causality_future_tokens_do_not_change_the_past():
    model = tiny_model()
    ids = torch.randint(0, 97, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 97
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, :8], model(changed)[:, :8])


def test_silu_mul_matches_autograd_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    g, u, grad = (torch.randn(3, 5, 40, generator=gen) for _ in range(3))
    ours = [t.clone().requires_grad_() for t in (g, u)]
    ref = [t.clone().requires_grad_() for t in (g, u)]
    out = silu_mul(*ours)
    expected = torch.nn.functional.silu(ref[0]) * ref[1]
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(out, expected)
    assert torch.equal(ours[0].grad, ref[0].grad) and torch.equal(ours[1].grad, ref[1].grad)


def test_frozen_mlp_keeps_two_activations_for_backward():
    """With frozen weights (LoRA), the MLP keeps gate(x) and up(x) for its backward, not silu(gate(x))."""
    config = QwenConfig(hidden_size=16, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=32)
    mlp = MLP(config).requires_grad_(False)
    x = torch.randn(2, 7, 16, requires_grad=True)
    kept = set()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.add((t.data_ptr(), tuple(t.shape))) or t, lambda t: t):
        mlp(x).sum().backward()
    wide = [shape for _, shape in kept if shape == (2, 7, 48)]
    assert len(wide) == 2
