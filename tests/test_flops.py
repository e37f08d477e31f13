"""FLOPs: primitives, each module against a hand count, the report's Table 3, FlopCounterMode, the ledger."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import lora
from flops import COURSEWORK, EXACT, BudgetExceeded, Cost, Ledger
from flops.__main__ import main as flops_main
from flops.ledger import LedgerError
from experiment.models import meta_model
from flops.report import REPORT_TABLE3, as_json, component_table

from .conftest import tiny_config, tiny_model

T = 6  # tokens in the hand computations


def test_primitives():
    assert COURSEWORK.matmul(3, 4, 5, grads=1).forward == 3 * 5 * 7
    assert EXACT.matmul(3, 4, 5, grads=1).forward == 2 * 3 * 4 * 5
    assert EXACT.matmul(3, 4, 5, grads=1).backward == 120 and EXACT.matmul(3, 4, 5, grads=2).backward == 240
    assert COURSEWORK.matmul(3, 4, 5, grads=0).backward == 2 * 105
    assert COURSEWORK.silu_product(1, 1).forward == 1 + 10 + 1 + 1 + 1 + 1
    assert Cost(1, 2, 3) + Cost(4, 5, 6) == Cost(5, 7, 9) and sum([Cost(1, 1), Cost(2, 2)]) == Cost(3, 3)
    assert Cost(1, 2).training == 3


def test_linear_frozen_and_trainable():
    lin = torch.nn.Linear(8, 5)
    frozen = EXACT.linear(T, 8, 5, bias=True, trainable=False)
    assert frozen.forward == 2 * T * 8 * 5 + T * 5 and frozen.matmul == 2 * T * 8 * 5
    assert frozen.backward == 2 * T * 8 * 5 + T * 5  # input gradient only, bias add 1x
    assert EXACT.linear(T, 8, 5, bias=False, trainable=True).backward == 2 * (2 * T * 8 * 5)
    from flops import linear_flops
    assert linear_flops(lin, T, EXACT).backward == 2 * 2 * T * 8 * 5 + T * 5  # a fresh nn.Linear trains


def test_rmsnorm_by_hand():
    model = tiny_model()
    d = model.config.hidden_size
    norm = model.model.norm
    assert norm.flops(T, EXACT).forward == T * (4 * d + 3)
    assert norm.flops(T, COURSEWORK).forward == T * 13 * d


def test_mlp_by_hand():
    model = tiny_model()
    d, f = model.config.hidden_size, model.config.intermediate_size
    mlp = model.model.layers[0].mlp
    assert mlp.flops(T, EXACT).forward == 3 * (2 * T * d * f) + 6 * T * f
    assert mlp.flops(T, COURSEWORK).forward == 2 * T * f * (2 * d - 1) + T * d * (2 * f - 1) + 15 * T * f


def test_attention_by_hand_exact():
    cfg = tiny_config()
    attn = tiny_model().model.layers[0].self_attn
    d, H, K, E = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    proj = 2 * T * d * (H * E) + T * H * E + 2 * (2 * T * d * (K * E) + T * K * E) + 2 * T * (H * E) * d
    rope = 3.5 * T * (H + K) * E
    pairs = T * (T + 1) / 2
    core = H * (2 * E * pairs + 2 * E * pairs + pairs + 5 * pairs - 2 * T)
    assert attn.flops(T, EXACT).forward == proj + rope + core
    past = 4  # decoding after a cache of 4: query i sees 4 + i keys
    pairs = T * past + T * (T + 1) / 2
    core = H * (2 * E * pairs + 2 * E * pairs + pairs + 5 * pairs - 2 * T)
    assert attn.flops(T, EXACT, past=past).forward == proj + rope + core


def test_attention_by_hand_coursework():
    cfg = tiny_config()
    attn = tiny_model().model.layers[0].self_attn
    d, H, E = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    proj = 4 * T * d * (2 * d - 1) + 3 * T * d  # GQA counted as MHA: K and V as wide as Q
    core = H * (T * T * (2 * E - 1) + T * E * (2 * T - 1) + T * T + T * (12 * T - 1))
    assert attn.flops(T, COURSEWORK).forward == proj + core
    assert attn.flops(T, COURSEWORK).backward == 2 * (proj + core)


def test_parent_is_the_sum_of_its_children():
    model = tiny_model()
    block = model.model.layers[1]
    for conv in (EXACT, COURSEWORK):
        parts = (block.input_layernorm.flops(T, conv) + block.self_attn.flops(T, conv)
                 + block.post_attention_layernorm.flops(T, conv) + block.mlp.flops(T, conv)
                 + 2 * block.residual_flops(T, conv))
        assert block.flops(T, conv) == parts
        rows = component_table(model, T, conv)
        assert rows["forward"].forward == pytest.approx(
            rows["positional embeddings"].forward + rows["2 blocks"].forward + rows["final RMSNorm"].forward
            + rows["LM head"].forward + rows["softmax"].forward)


def test_report_table3_within_one_percent():
    rows = as_json(component_table(meta_model(), 512, COURSEWORK))
    for name, want in REPORT_TABLE3.items():
        assert abs(rows[name] / want - 1) < 0.01, (name, rows[name], want)
    assert rows["positional embeddings"] == rows["residual add"] == 512 * 896


def test_exact_total_against_the_closed_form():
    """forward = 2 * matmul_params * T + attention + the elementwise rest (documented in conventions)."""
    model = meta_model()
    cost = model.flops(512, EXACT)
    linear_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert cost.matmul == 2 * linear_params * 512
    cfg = model.config
    attention = cfg.num_hidden_layers * 4 * cfg.num_attention_heads * cfg.head_dim * 512 * 513 / 2
    rest = cost.forward - cost.matmul - attention
    assert 0 < rest < 0.01 * cost.forward


# The counter knows addmm but not addmm_, the in-place form the LoRA update is added with: its own
# addmm formula (unwrapped, since custom_mapping wraps it again) counts that too.
INPLACE_ADDMM = {torch.ops.aten.addmm_: flop_registry[torch.ops.aten.addmm].__wrapped__}


def counted(model, ids) -> int:
    with FlopCounterMode(display=False, custom_mapping=INPLACE_ADDMM) as counter:
        model(ids)
    return counter.get_total_flops()


@pytest.mark.parametrize("rank", [0, 3])
def test_linear_layers_equal_flop_counter_at_tiny_size(rank):
    model = tiny_model()
    if rank:
        lora.inject(model, rank=rank, targets=("q_proj", "v_proj", "down_proj"), verbose=False)
    ids = torch.randint(0, 97, (1, 11))
    with torch.no_grad():
        assert model.flops(11, EXACT).matmul == counted(model, ids)


def test_linear_layers_equal_flop_counter_at_full_width():
    model = tiny_model(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                       num_key_value_heads=2, num_hidden_layers=1, std=0.02)
    lora.inject(model, rank=8, verbose=False)
    ids = torch.randint(0, 151936, (1, 16))
    with torch.no_grad():
        assert model.flops(16, EXACT).matmul == counted(model, ids)


def test_lora_rows_and_frozen_backward():
    base = meta_model()
    with_lora = meta_model(rank=8)
    rows = component_table(with_lora, 512, EXACT)
    assert "LoRA adapters, 24 blocks" in rows
    # frozen base: backward of the base linear layers is 1x instead of 2x
    assert with_lora.flops(512, EXACT).backward < 0.6 * base.flops(512, EXACT).backward
    assert component_table(meta_model(rank=8), 512, COURSEWORK)["LoRA adapters, 24 blocks"] == Cost()


def test_cli_table_and_json(capsys):
    assert flops_main(["--seq-len", "512", "--convention", "coursework"]) == 0
    out = capsys.readouterr().out
    assert "ours/report" in out and "24 blocks" in out and "forward + backward" in out
    assert flops_main(["--seq-len", "128", "--rank", "8", "--targets", "q_proj,v_proj", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["LoRA adapters, 24 blocks"] > 0 and data["forward + backward"] > data["forward"]
    assert flops_main(["--rank", "4", "--targets", "qq_proj"]) == 2
    assert "unknown LoRA target module 'qq_proj'" in capsys.readouterr().err


# --- ledger ----------------------------------------------------------------------------------------

def test_ledger_charges_and_refuses(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = Ledger.open(path, budget=1000, convention="exact")
    assert ledger.charge("run-a", "train", 400, tokens=10, step=1)
    assert ledger.charge("run-a", "train", 400, tokens=10, step=2)
    assert not ledger.can_afford(201) and ledger.can_afford(200)
    with pytest.raises(BudgetExceeded, match="would take the ledger to 1201 of its 1e\\+03 budget"):
        ledger.charge("run-b", "eval", 401)
    again = Ledger.open(path)
    assert again.total == 800 and set(again.experiments) == {"run-a"}
    assert again.experiments["run-a"]["steps"] == 2 and again.experiments["run-a"]["tokens"] == 20


def test_ledger_never_double_charges(tmp_path):
    ledger = Ledger.open(tmp_path / "l.json", budget=1e6)
    for step in (1, 2, 3, 2, 3, 4):  # a resumed run repeats steps 2 and 3
        ledger.charge("run", "train", 10, step=step)
    assert ledger.total == 40 and ledger.experiments["run"]["steps"] == 4
    assert ledger.charge("run", "eval", 5, key="eval-ctx40")
    assert not ledger.charge("run", "eval", 5, key="eval-ctx40")
    assert ledger.total == 45


def test_ledger_convention_is_chosen_once(tmp_path):
    Ledger.open(tmp_path / "l.json", convention="coursework")
    with pytest.raises(LedgerError, match="counts under the 'coursework' convention, not 'exact'"):
        Ledger.open(tmp_path / "l.json", convention="exact")


def test_ledger_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "l.json"
    ledger = Ledger.open(path, budget=1e6)
    ledger.charge("run", "train", 10, step=1)
    before = path.read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ledger.charge("run", "train", 10, step=2)
    assert path.read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_ledger_cli(tmp_path, capsys):
    path = tmp_path / "l.json"
    Ledger.open(path, budget=1e4).charge("grid-r8", "train", 2500, tokens=100, step=1)
    assert flops_main(["ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| grid-r8 | train | 1 | 100 | 2.500e+03 | 25.00% |" in out and "remaining 7.500e+03" in out
    assert flops_main(["ledger", str(tmp_path / "none.json")]) == 2
    (tmp_path / "bad.json").write_text("[]")
    assert flops_main(["ledger", str(tmp_path / "bad.json")]) == 2
    assert "not a FLOPs ledger" in capsys.readouterr().err
