"""Batched decoding with a preallocated key/value cache: greedy or sampled, optionally restricted to a token set."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .model import KVCache, QwenForCausalLM


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of any lengths -> ids (B, P) padded on the left, and the mask (B, P): 1 real, 0 padding."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, N) scores -> (B,) chosen column: argmax when temperature is 0, else a sample."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: QwenForCausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, pad_id: int,
             allowed_token_ids: Sequence[int] | None = None, stop_ids: Sequence[int] = (),
             temperature: float = 0.0, generator: torch.Generator | None = None,
             use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; return the new tokens of each, stop token excluded.

    With `allowed_token_ids` the LM head is computed only for those rows of the vocabulary, so the
    choice can't leave the set and costs len(allowed) instead of V dot products per position.
    `use_cache=False` recomputes the whole sequence every step (the reference the cache is tested against).
    """
    device = model.device
    ids, mask = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    head = model.lm_head.weight
    allowed = None if allowed_token_ids is None else torch.as_tensor(list(allowed_token_ids), device=device)
    if allowed is not None:
        head = head[allowed]  # (N, D): the rows the choice is made among
    cache = KVCache(model.config, B, P + max_new_tokens, model.dtype, device) if use_cache else None
    out = torch.empty((B, 0), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stop = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    step_ids, step_mask = ids, mask
    for _ in range(max_new_tokens):
        hidden = model.model(step_ids, step_mask, cache=cache)[:, -1]  # (B, D)
        choice = pick(torch.nn.functional.linear(hidden, head), temperature, generator)  # (B,)
        token = allowed[choice] if allowed is not None else choice
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out = torch.cat([out, token[:, None]], dim=1)
        done = done | torch.isin(token, stop)
        if bool(done.all()):
            break
        if use_cache:
            step_ids, step_mask = token[:, None], torch.ones((B, 1), dtype=torch.long, device=device)
        else:
            step_ids = torch.cat([ids, out], dim=1)
            step_mask = torch.cat([mask, torch.ones_like(out)], dim=1)
    results = []
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in set(stop_ids)), len(row))
        results.append(row[:cut])
    return results
