"""LoRA: invariants, freezing, merging, and adapter files that peft reads and writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lora
import qwen_min.__main__ as qwen_min_cli
from qwen_min import NUMBER_SYMBOLS, LoadError, QwenConfig, generate, load_pretrained, load_tokenizer

from .conftest import NewBuffers, tiny_model
from .test_model import meta_model


def randomise_adapters(model, seed=0):
    """Give B non-zero values so the adapter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.3)
    return model


IDS = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0))


def test_fresh_adapter_changes_nothing():
    model = tiny_model()
    with torch.no_grad():
        before = model(IDS)
        lora.inject(model, rank=4, targets=lora.TARGETS, verbose=False)
        after = model(IDS)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_merge_equals_unmerged_and_unmerge_restores():
    model = randomise_adapters(lora.inject(tiny_model(), rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"),
                                           verbose=False))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(IDS)
        for layer in lora.lora_layers(model).values():
            layer.merge()
        merged = model(IDS)
        for layer in lora.lora_layers(model).values():
            layer.unmerge()
    assert (merged - unmerged).abs().max().item() < 1e-5
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, original[k], atol=1e-6, rtol=0)


def test_only_lora_parameters_train_and_one_step_changes_only_them():
    model = lora.inject(tiny_model(), rank=2, verbose=False)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("lora_A.weight", "lora_B.weight")) for n in names)
    assert len(names) == 2 * 2 * model.config.num_hidden_layers  # A and B, q and v, every block
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(lora.trainable_parameters(model), lr=1e-2)
    model.train()
    loss = model(IDS).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n not in names:
            assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.endswith("lora_B.weight"))


def test_full_size_trainable_count_and_summary():
    model = meta_model(QwenConfig())
    lora.inject(model, rank=8, verbose=False)
    assert sum(p.numel() for p in lora.trainable_parameters(model)) == 540_672
    assert lora.summary(model) == "LoRA r=8 on q_proj, v_proj: 540,672 trainable of 494,573,440 parameters (0.1093%)"


def test_base_keys_keep_their_names():
    model = lora.inject(tiny_model(), rank=2, verbose=False)
    keys = set(model.state_dict())
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "model.layers.0.self_attn.q_proj.bias" in keys
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in keys


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=4, targets=("q_proj", "c_attn")), "unknown LoRA target module 'c_attn'"),
    (dict(rank=4, alpha=-1), "alpha must be positive"),
    (dict(rank=4, dropout=1.5), r"dropout must be in \[0, 1\)"),
])
def test_bad_injection_arguments(kwargs, message):
    with pytest.raises(LoadError, match=message):
        lora.inject(tiny_model(), verbose=False, **kwargs)


def test_save_and_load_round_trip(tmp_path):
    model = randomise_adapters(lora.inject(tiny_model(), rank=3, alpha=6, targets="q_proj,k_proj,up_proj", verbose=False))
    lora.save_adapter(model, tmp_path / "a", base_model_name_or_path="tiny")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 3
    assert cfg["lora_alpha"] == 6 and cfg["target_modules"] == ["q_proj", "k_proj", "up_proj"]
    assert cfg["bias"] == "none" and cfg["base_model_name_or_path"] == "tiny"
    keys = set(load_file(tmp_path / "a" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    fresh = lora.load_adapter(tiny_model(), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS), model(IDS), atol=0, rtol=0)


def test_merged_export_loads_in_qwen_min(tmp_path, capsys):
    model = randomise_adapters(lora.inject(load_pretrained("tiny-random"), rank=4, verbose=False))
    tok = load_tokenizer("tiny-random")
    lora.export_merged(model, tmp_path / "merged", tok)
    merged = load_pretrained(tmp_path / "merged")
    assert not lora.lora_layers(merged)
    with torch.no_grad():
        assert (merged(IDS) - model(IDS)).abs().max().item() < 1e-5
    prompt = "0.25,1.50;0.27,1.47;"
    ids = load_tokenizer(tmp_path / "merged").encode(prompt)
    assert ids == tok.encode(prompt)
    numbers = [tok.token_id(c) for c in NUMBER_SYMBOLS]
    expected = tok.decode(generate(model, [ids], 8, pad_id=tok.pad_id, allowed_token_ids=numbers)[0])
    assert qwen_min_cli.main(["--model", str(tmp_path / "merged"), "--prompt", prompt, "--max-new-tokens", "8",
                              "--numbers-only"]) == 0
    assert capsys.readouterr().out == prompt + expected + "\n"


# --- malformed adapters ----------------------------------------------------------------------------

@pytest.fixture
def saved_adapter(tmp_path):
    model = randomise_adapters(lora.inject(tiny_model(), rank=4, verbose=False))
    return lora.save_adapter(model, tmp_path / "adapter")


def edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_missing_files(saved_adapter, tmp_path):
    with pytest.raises(LoadError, match="no such adapter directory"):
        lora.load_adapter(tiny_model(), tmp_path / "nowhere")
    (saved_adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(LoadError, match="adapter_model.safetensors: missing"):
        lora.load_adapter(tiny_model(), saved_adapter)
    (saved_adapter / "adapter_config.json").unlink()
    with pytest.raises(LoadError, match="adapter_config.json: missing"):
        lora.load_adapter(tiny_model(), saved_adapter)


def test_wrong_rank(saved_adapter):
    edit_config(saved_adapter, r=8)
    model = tiny_model()
    with pytest.raises(LoadError, match=r"lora_A.weight has shape \(4, 32\), expected \(8, 32\) \(r=8\)"):
        lora.load_adapter(model, saved_adapter)
    assert not lora.lora_layers(model)  # refused before any change


def test_rank_differs_from_injected_model(saved_adapter):
    model = lora.inject(tiny_model(), rank=2, verbose=False)
    with pytest.raises(LoadError, match="adapter has r=4 on q_proj, v_proj, but the model's LoRA layers have r=2"):
        lora.load_adapter(model, saved_adapter)


def test_wrong_target(saved_adapter):
    edit_config(saved_adapter, target_modules=["q_proj", "c_attn"])
    with pytest.raises(LoadError, match="target module 'c_attn' is not a projection of this model"):
        lora.load_adapter(tiny_model(), saved_adapter)
    edit_config(saved_adapter, target_modules=["q_proj", "k_proj"])
    model = tiny_model()
    with pytest.raises(LoadError, match=r"missing key .*layers.0.self_attn.k_proj.lora_A.weight"):
        lora.load_adapter(model, saved_adapter)
    assert not lora.lora_layers(model)  # refused before any change


def test_wrong_shape(saved_adapter):
    path = saved_adapter / "adapter_model.safetensors"
    state = load_file(path)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    state[key] = torch.zeros(32, 4)  # v_proj is 16 wide
    save_file(state, path)
    with pytest.raises(LoadError, match=rf"{key} has shape \(32, 4\), expected \(16, 4\)"):
        lora.load_adapter(tiny_model(), saved_adapter)


def test_adapter_for_another_model_size(saved_adapter):
    other = tiny_model(hidden_size=48, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(LoadError, match=r"has shape \(4, 32\), expected \(4, 48\)"):
        lora.load_adapter(other, saved_adapter)


# --- interoperability with peft and transformers ---------------------------------------------------

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def test_our_adapter_loads_in_peft_with_equal_logits(tmp_path, model_dir):
    _, base_dir = model_dir
    ours = randomise_adapters(lora.inject(load_pretrained(base_dir), rank=4, alpha=8, verbose=False))
    lora.save_adapter(ours, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    hf = transformers.Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert (ours(IDS) - theirs(input_ids=IDS).logits).abs().max().item() < 1e-5


def test_peft_adapter_loads_in_ours_with_equal_logits(tmp_path, model_dir):
    _, base_dir = model_dir
    hf = transformers.Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "o_proj", "gate_proj"], lora_dropout=0.0,
                             task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(hf, config)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    theirs.save_pretrained(tmp_path / "peft-adapter")
    ours = lora.load_adapter(load_pretrained(base_dir), tmp_path / "peft-adapter")
    assert lora.lora_config(ours)["target_modules"] == ["q_proj", "o_proj", "gate_proj"]
    with torch.no_grad():
        assert (ours(IDS) - theirs.eval()(input_ids=IDS).logits).abs().max().item() < 1e-5


def test_merged_export_loads_in_transformers(tmp_path):
    ours = randomise_adapters(lora.inject(load_pretrained("tiny-random"), rank=4, verbose=False))
    tok = load_tokenizer("tiny-random")
    lora.export_merged(ours, tmp_path / "merged", tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "merged")
    text = "0.25,1.50;0.27,1.47;"
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text) and hf_tok.decode(ids) == text and hf_tok.eos_token_id == tok.eos_id
    with torch.no_grad():
        assert (ours(IDS) - hf(input_ids=IDS).logits).abs().max().item() < 1e-5
        assert (ours(torch.tensor([ids])) - hf(input_ids=torch.tensor([ids])).logits).abs().max().item() < 1e-5


def lora_linear(seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(16, 24)
    with torch.no_grad():
        base.weight.copy_(torch.randn(24, 16, generator=gen))
        base.bias.copy_(torch.randn(24, generator=gen))
    layer = lora.LoRALinear(base.requires_grad_(False), rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.weight.copy_(torch.randn(24, 4, generator=gen))
    return layer


def test_update_is_added_into_the_base_output_in_place():
    """x W^T + b + s B A x with one (N, out) buffer, where update, scaled update and sum took three more."""
    layer = lora_linear()
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    with NewBuffers(lambda t: tuple(t.shape) == (15, 24)) as watch:
        y = layer(x)
    assert len(watch.shapes) == 1 and y.shape == (3, 5, 24)
    a, b = (layer.lora_A.weight.detach().clone().requires_grad_(), layer.lora_B.weight.detach().clone().requires_grad_())
    ref = x @ layer.weight.T + layer.bias + (x @ a.T @ b.T) * 2.0
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(layer.lora_A.weight.grad, a.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(layer.lora_B.weight.grad, b.grad, atol=1e-4, rtol=1e-5)


def test_update_under_autocast_over_fp32_weights():
    """bf16 activations and fp32 adapter weights cannot be added in place; the cast path runs instead."""
    layer = lora_linear()
    x = torch.randn(15, 16, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), atol=0.5, rtol=2e-2)
