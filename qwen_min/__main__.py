"""Load a model and continue a prompt: the quickest check that weights, tokenizer and decoding work.

    python -m qwen_min --model tiny-random --prompt "0.25,1.50;0.27,1.47;" --max-new-tokens 24 --numbers-only
    python -m qwen_min --model /path/to/Qwen2.5-0.5B-Instruct --prompt "The capital of France is"

A continuous model (train.py --encoding continuous) reads the prompt's time steps as values and
writes --max-new-tokens time steps; a bins model's --numbers-only allows its value tokens, ',' and ';'.
"""

from __future__ import annotations

import sys
import time

import torch

from commandline import Parser, exit_status, prose
from data.text import decode, encode

from . import NUMBER_SYMBOLS, LoadError, QwenForValueForecasting, generate, load_pretrained, load_tokenizer
from .continuous import forecast_values


def parser() -> Parser:
    p = Parser("python -m qwen_min", prose(__doc__), examples=[
        'python -m qwen_min --model tiny-random --prompt "0.25,1.50;0.27,1.47;" --numbers-only',
        'python -m qwen_min --model runs/merged --numbers-only          # a merged export (lora.export_merged)',
        'python -m qwen_min --model Qwen/Qwen2.5-0.5B-Instruct --prompt "The capital of France is"'])
    p.add_argument("--model", default="tiny-random", help="hub id, local directory, or tiny-random")
    p.add_argument("--prompt", default="0.25,1.50;0.27,1.47;0.30,1.43;", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=24, help="tokens to generate at most (time steps for a "
                   "continuous model)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, 0 decodes greedily")
    p.add_argument("--numbers-only", action="store_true", help="restrict the output to 0-9 . , ; (default: off)")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.max_new_tokens < 1:
            raise LoadError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        t0 = time.perf_counter()
        model = load_pretrained(args.model, dtype=args.dtype, device=args.device)
        tok = load_tokenizer(args.model)
        if isinstance(model, QwenForValueForecasting):
            return continue_values(model, args, t0)
        symbols = [*tok.value_words, ",", ";"] if tok.value_words else NUMBER_SYMBOLS
        allowed = [tok.token_id(c) for c in symbols] if args.numbers_only else None
        prompt = tok.encode(args.prompt)
        if not prompt:
            raise LoadError("--prompt is empty")
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loaded(model, args, t0)
    stop = [tok.eos_id] if tok.eos_id is not None else []
    out = generate(model, [prompt], args.max_new_tokens, pad_id=tok.pad_id or 0, allowed_token_ids=allowed,
                   stop_ids=stop, temperature=args.temperature)
    print(args.prompt + tok.decode(out[0]))
    return 0


def loaded(model, args, t0: float) -> None:
    print(f"{args.model}: {model.num_parameters():,} parameters, {model.config.num_hidden_layers} blocks, "
          f"loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def continue_values(model: QwenForValueForecasting, args, t0: float) -> int:
    """The prompt's steps (scaled values as text) continued by --max-new-tokens steps of the continuous model."""
    values, _ = decode(args.prompt)  # (steps, 2)
    if not len(values):
        raise LoadError(f"--prompt {args.prompt!r} holds no time step (x,y;x,y;...) for a continuous model")
    loaded(model, args, t0)
    context = torch.as_tensor(values, dtype=torch.float32, device=model.device)[None]
    out = forecast_values(model, context, args.max_new_tokens, temperature=args.temperature)[0]  # (1, 1, steps, 2)
    out = out[0, 0].cpu().double().numpy()
    print(args.prompt.rstrip(";") + ";" + encode(out, 1.0, 2) + ";")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
