"""The per-component FLOPs table (the report's Table 3), read from a model's own `flops()` methods.

The model is passed in (any object with the modules' `flops()`): nothing of `qwen_min` is imported."""

from __future__ import annotations

from .conventions import Convention, Cost, get_convention

# the reference report's Table 3 at 512 tokens (coursework convention), from RMSNorm up
REPORT_TABLE3 = {"RMSNorm": 5.97e6, "attention": 4.27e9, "feed-forward": 1.34e10, "one block": 1.77e10,
                 "24 blocks": 4.25e11, "final RMSNorm": 5.97e6, "LM head": 1.39e11, "softmax": 9.33e8,
                 "forward": 5.65e11, "forward + backward": 1.70e12}


def component_table(model, seq_len: int, convention: Convention | str) -> dict[str, Cost]:
    """Ordered rows: component name -> Cost, for one sequence of `seq_len` tokens."""
    convention = get_convention(convention)
    blocks = model.model.layers
    first = blocks[0]
    rows = {
        "positional embeddings": model.model.positional_flops(seq_len, convention),
        "RMSNorm": first.input_layernorm.flops(seq_len, convention),
        "residual add": first.residual_flops(seq_len, convention),
        "attention": first.self_attn.flops(seq_len, convention),
        "feed-forward": first.mlp.flops(seq_len, convention),
        "one block": first.flops(seq_len, convention),
        f"{len(blocks)} blocks": sum(b.flops(seq_len, convention) for b in blocks),
        "final RMSNorm": model.model.norm.flops(seq_len, convention),
        "LM head": model.head_flops(seq_len, convention),
        "softmax": model.softmax_flops(seq_len, convention),
    }
    adapters = [m for m in model.modules() if hasattr(m, "adapter_flops")]
    if adapters:
        per_block = [m for m in first.modules() if hasattr(m, "adapter_flops")]
        rows["LoRA adapters, one block"] = sum(m.adapter_flops(seq_len, convention) for m in per_block)
        rows[f"LoRA adapters, {len(blocks)} blocks"] = sum(m.adapter_flops(seq_len, convention) for m in adapters)
    rows["forward"] = model.flops(seq_len, convention)
    return rows


def format_table(rows: dict[str, Cost], convention: str, seq_len: int, compare_report: bool = False) -> str:
    lines = [f"FLOPs for one sequence of {seq_len} tokens, {convention} convention", "",
             f"{'component':<30}{'forward':>12}{'backward':>12}"
             + (f"{'report':>12}{'ours/report':>13}" if compare_report else "")]
    for name, cost in rows.items():
        line = f"{name:<30}{cost.forward:>12.3e}{cost.backward:>12.3e}"
        if compare_report and name in REPORT_TABLE3:
            line += f"{REPORT_TABLE3[name]:>12.3e}{cost.forward / REPORT_TABLE3[name]:>13.4f}"
        lines.append(line)
    total = rows["forward"]
    line = f"{'forward + backward':<30}{total.training:>12.3e}{'':>12}"
    if compare_report:
        line += f"{REPORT_TABLE3['forward + backward']:>12.3e}{total.training / REPORT_TABLE3['forward + backward']:>13.4f}"
    lines.append(line)
    return "\n".join(lines)


def as_json(rows: dict[str, Cost]) -> dict[str, float]:
    """Component name -> forward FLOPs, plus the training total."""
    out = {name: cost.forward for name, cost in rows.items()}
    out["forward + backward"] = rows["forward"].training
    return out
