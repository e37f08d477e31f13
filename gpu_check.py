"""The GPU check's steps that are Python (scripts/gpu-check.sh runs them, each time-boxed):

    python gpu_check.py batches --device cuda --dtype bf16 --json W/batches.json   # LoRA step vs batch size
    python gpu_check.py model-dir W/qwen-random                                    # full-size random weights
    python gpu_check.py plan-budget W/batches.json --seconds 150                    # a plan that fits the time
    python gpu_check.py summary OUT --work W                                        # OUT/summary.md

`batches` times the LoRA training step as train.py takes it (fp32 adapters on the base's dtype,
fused AdamW on CUDA, bf16 autocast) at batch sizes 1, 2, 4, 8, 16 x 512 until its FLOP/s stop
rising; `summary` puts the bench's rows (ratios against transformers + peft, tokens/s, MFU against
the chip's bf16 peak, peak memory), the batch sweep and the plan's wall time with its extrapolation
to the full 1e17 FLOPs into one table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from commandline import Parser, exit_status
from experiment.speed import batch_sweep, chip_peak
from flops import Ledger
from qwen_min import (LoadError, QwenConfig, QwenForCausalLM, init_weights, load_tokenizer, parse_device, parse_dtype,
                      save_pretrained)
from qwen_min.presets import TINY_RANDOM, preset_config
from qwen_min.tokenizer import tiny_tokenizer

FULL_BUDGET = 1e17
CPU_RATIOS = {"forward": 1.037, "eval": 0.424, "train": 0.800}  # docs/speed.md: the 2-core CPU's full bench
SHARED_TOKENIZER = Path(__file__).resolve().parent.parent / "shared" / "qwen2.5-tokenizer"


STEPS = {"batches": "a LoRA step's speed and MFU against batch size", "model-dir": "a random model directory",
         "plan-budget": "the budget of a plan that takes about --seconds", "summary": "the check's table"}


def config_of(size: str) -> QwenConfig:
    """Qwen2.5-0.5B's config, or the tiny preset's (the rehearsal's size)."""
    return QwenConfig() if size == "full" else preset_config(TINY_RANDOM)


def parser() -> Parser:
    p = Parser("python gpu_check.py", __doc__.split("\n\n")[0], subcommands=STEPS)
    sub = p.add_subparsers(dest="step", required=True)
    b = sub.add_parser("batches", description=STEPS["batches"])
    b.add_argument("--device", default="cuda")
    b.add_argument("--dtype", default="bf16")
    b.add_argument("--size", choices=("full", "tiny"), default="full")
    b.add_argument("--seq-len", type=int, default=512)
    b.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--json", required=True)
    m = sub.add_parser("model-dir", description=STEPS["model-dir"])
    m.add_argument("directory")
    m.add_argument("--size", choices=("full", "tiny"), default="full")
    g = sub.add_parser("plan-budget", description=STEPS["plan-budget"])
    g.add_argument("batches_json")
    g.add_argument("--seconds", type=float, default=150.0)
    g.add_argument("--efficiency", type=float, default=0.4,
                   help="the plan's FLOP/s as a share of the best LoRA step's (evaluation decodes slower)")
    s = sub.add_parser("summary", description=STEPS["summary"])
    s.add_argument("out")
    s.add_argument("--work", required=True)
    return p


def batches(a) -> int:
    device, dtype = str(parse_device(a.device)), parse_dtype(a.dtype)
    rows = batch_sweep(config_of(a.size), device, dtype, a.seq_len, a.batches, a.runs)
    name, peak = chip_peak(device)
    Path(a.json).write_text(json.dumps({"device": name, "bf16_peak": peak, "dtype": a.dtype, "rows": rows}, indent=1))
    print(batch_table(rows))
    return 0


def model_dir(a) -> int:
    """Random weights in the Hugging Face layout; at full size with the real vocabulary where
    ../shared/ has it, else the byte tokenizer (a token per digit and mark, as Qwen's)."""
    save_pretrained(init_weights(QwenForCausalLM(config_of(a.size)), seed=0), a.directory)
    real = a.size == "full" and (SHARED_TOKENIZER / "tokenizer.json").is_file()
    tok = load_tokenizer(SHARED_TOKENIZER) if real else tiny_tokenizer()
    tok.save(a.directory)
    print(a.directory)
    return 0


def plan_budget(a) -> int:
    rows = [r for r in json.loads(Path(a.batches_json).read_text())["rows"] if "flops_per_s" in r]
    best = max(r["flops_per_s"] for r in rows)
    print(f"{min(FULL_BUDGET, a.efficiency * best * a.seconds):.3g}")
    return 0


# --- the summary ----------------------------------------------------------------------------------

def batch_table(rows: list[dict]) -> str:
    lines = ["| batch x tokens | step s | tokens/s | TFLOP/s | MFU (bf16 peak) | peak memory GiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("out_of_memory"):
            lines.append(f"| {r['batch']} | out of memory | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        memory = f"{r['peak_memory'] / 2 ** 30:.1f}" if r["peak_memory"] is not None else "-"
        lines.append(f"| {r['batch']} x {r['seq_len']} | {r['seconds']:.4f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['flops_per_s'] / 1e12:.2f} | {mfu} | {memory} |")
    return "\n".join(lines)


def bench_table(bench: dict, peak: float | None) -> str:
    """The bench's rows; MFU against the chip's bf16 peak, or against the matmul peak the bench
    measured where the chip's is not known (a CPU)."""
    against = "bf16 peak" if peak else "measured matmul peak"
    peak = peak or bench["matmul_peak"]
    lines = [f"| workload | ours s | theirs s | ours / theirs | CPU's ratio | tokens/s | TFLOP/s | MFU ({against}) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in bench["rows"]:
        kind = r["workload"].split()[0]
        if r["tokens"] is None:  # the memory row: GiB, not seconds
            lines.append(f"| {r['workload'].strip()} (GiB) | {r['ours']:.2f} | {r['theirs']:.2f} | "
                         f"{r['ours'] / r['theirs']:.3f} | | | | |")
            continue
        fps = r["flops_per_s"]
        lines.append(f"| {r['workload']} | {r['ours']:.4f} | {r['theirs']:.4f} | {r['ours'] / r['theirs']:.3f} | "
                     f"{CPU_RATIOS.get(kind, '')} | {r['tokens'] / r['ours']:,.0f} | {fps / 1e12:.2f} | "
                     f"{fps / peak:.1%} |")
    return "\n".join(lines)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def plan_lines(work: Path, env: str) -> list[str]:
    """The plan's FLOPs (its ledger), wall time (env.txt's STEP line) and the full budget's time at that rate."""
    ledger_path = work / "plan" / "ledger.json"
    wall = next((float(line.split()[3]) for line in env.splitlines() if line.startswith("STEP plan ")), None)
    size = next((line.split()[-1] for line in env.splitlines() if line.startswith("plan model ")), "?")
    if not ledger_path.is_file() or not wall:
        return ["The plan did not run (see plan.log)."]
    spent = Ledger.open(ledger_path).total
    full = wall * FULL_BUDGET / spent
    return [f"The plan on random weights ({size} size): {spent:.3e} FLOPs charged in {wall:.0f} s of wall time "
            f"({spent / wall / 1e12:.3g} TFLOP/s over everything it does), so the full {FULL_BUDGET:.0e} would "
            f"take about {full / 60:.3g} minutes ({full / 3600:.3g} hours)."]


def summary(a) -> int:
    out, work = Path(a.out), Path(a.work)
    env = (out / "env.txt").read_text() if (out / "env.txt").is_file() else ""
    sweep = read_json(work / "batches.json")
    peak = sweep["bf16_peak"] if sweep else None
    parts = ["# GPU check", "", f"Device: {sweep['device'] if sweep else 'unknown'}; bf16 peak "
             f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'not known'}.", ""]
    parts += ["Steps (exit status, seconds, time box):", "", "```",
              *[line for line in env.splitlines() if line.startswith("STEP ")], "```", ""]
    for name, title in (("bench.json", "bench.py"), ("compile.json", "bench.py --compile")):
        bench = read_json(work / name)
        if bench:
            parts += [f"## {title} ({bench['device']}, {bench['dtype']})", "", bench_table(bench, peak), ""]
    if sweep:
        best = max((r for r in sweep["rows"] if r.get("mfu") is not None), key=lambda r: r["mfu"], default=None)
        parts += ["## A LoRA step against batch size", "", batch_table(sweep["rows"]), ""]
        if best:
            verdict = "meets" if best["mfu"] >= 0.4 else "misses"
            parts += [f"Best: {best['mfu']:.1%} of the bf16 peak at {best['batch']} x {best['seq_len']}, which "
                      f"{verdict} the target of 40%.", ""]
    parts += ["## The plan", "", *plan_lines(work, env), ""]
    (out / "summary.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return 0


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        return {"batches": batches, "model-dir": model_dir, "plan-budget": plan_budget, "summary": summary}[a.step](a)
    except (LoadError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(exit_status(main))
