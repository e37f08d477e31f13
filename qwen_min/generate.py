"""Batched decoding with a preallocated key/value cache: greedy or sampled, optionally restricted to a token set."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flops.conventions import Cost, get_convention

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
             allowed_token_ids: Sequence[int] | None = None, pattern: Sequence[Sequence[int]] | None = None,
             stop_ids: Sequence[int] = (), temperature: float = 0.0, generator: torch.Generator | None = None,
             use_cache: bool = True, skip_forced: bool = True, restrict_head: bool = True,
             ragged_prefill: bool = True, convention: str = "exact") -> "Generated":
    """Continue each prompt by up to `max_new_tokens` tokens; return the new tokens of each, stop token excluded.

    Token choice: among `allowed_token_ids`, or, with `pattern`, among pattern[i % len(pattern)] for the
    i-th new token (a fixed-length grammar, such as a number format). With `restrict_head` the LM head
    is computed only for the rows that may be chosen (13 instead of 151,936 for number text). With
    `skip_forced`, a position whose set holds one token is appended without a forward pass and fed
    together with the next position. With `ragged_prefill` prompts of different lengths are prefilled
    in groups of equal length, so no padding is computed. `use_cache=False` recomputes the whole sequence at every step
    (the reference the cache is tested against). Returns the new tokens with what computing them cost
    (`flops` under `convention`, padding computed counted, and `forward_calls`).
    """
    device = model.device
    ids, mask = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    rules, heads = token_rules(model, pattern, allowed_token_ids, restrict_head)
    cache = KVCache(model.config, B, P + max_new_tokens, model.dtype, device) if use_cache else None
    out = torch.empty((B, 0), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stop = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    feed_ids, feed_mask = ids, mask  # tokens not yet seen by the model
    counter = FlopCounter(model, convention)
    for i in range(max_new_tokens):
        rule, head = rules[i % len(rules)], heads[i % len(rules)]
        if skip_forced and use_cache and rule is not None and len(rule) == 1:
            token = rule.expand(B)
        else:
            if not use_cache:
                feed_ids, feed_mask = torch.cat([ids, out], 1), torch.cat([mask, torch.ones_like(out)], 1)
            past = cache.length if cache is not None else 0
            if cache is not None and past == 0 and ragged_prefill:
                hidden = prefill_by_length(model, cache, feed_ids, feed_mask, counter)
            else:
                hidden = model.model(feed_ids, feed_mask, cache=cache)[:, -1]  # (B, D)
                counter.add(feed_ids.shape[1], past, B)
            counter.head(B, head.shape[0])
            scores = torch.nn.functional.linear(hidden, head)  # (B, rows)
            if rule is not None and not restrict_head:  # the full head, then a mask
                masked = torch.full_like(scores, float("-inf"))
                masked[:, rule] = scores[:, rule]
                scores = masked
            choice = pick(scores, temperature, generator)
            token = rule[choice] if rule is not None and restrict_head else choice
            feed_ids = feed_mask = None
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out = torch.cat([out, token[:, None]], dim=1)
        done = done | torch.isin(token, stop)
        if bool(done.all()):
            break
        new_mask = torch.ones((B, 1), dtype=torch.long, device=device)
        feed_ids = token[:, None] if feed_ids is None else torch.cat([feed_ids, token[:, None]], 1)
        feed_mask = new_mask if feed_mask is None else torch.cat([feed_mask, new_mask], 1)
    return Generated(cut_at_stop(out.tolist(), set(stop_ids)), counter.cost, counter.calls)


def token_rules(model, pattern, allowed_token_ids, restrict_head: bool) -> tuple[list, list]:
    """The token ids each new position may take (a list cycled through; [None]: any), and the LM head's
    rows computed for each (only those ids with `restrict_head`, else the whole vocabulary)."""
    device = model.device
    if pattern is not None:
        rules = [torch.as_tensor(list(r), dtype=torch.long, device=device) for r in pattern]
    elif allowed_token_ids is not None:
        rules = [torch.as_tensor(list(allowed_token_ids), dtype=torch.long, device=device)]
    else:
        rules = [None]
    heads = [model.lm_head.weight[r] if r is not None and restrict_head else model.lm_head.weight for r in rules]
    return rules, heads


def cut_at_stop(rows: list[list[int]], stop: set[int]) -> list[list[int]]:
    """Each row up to its first stop token (excluded)."""
    return [row[:next((i for i, t in enumerate(row) if t in stop), len(row))] for row in rows]


def prefill_by_length(model, cache: KVCache, ids: torch.Tensor, mask: torch.Tensor, counter) -> torch.Tensor:
    """Prefill a left-padded batch one group of equal prompt length at a time, with no padding and the
    plain causal kernel, writing each group's keys and values where the padded batch would have them.

    A prompt that is a prefix of another in the batch (or equal to it: several samples of one prompt,
    or the 40-step context of a series whose 80 steps are also asked for) is not computed again: its
    keys, values and last hidden state are the first positions of the longer prompt's, which causal
    attention makes the same. Returns the last position's hidden state (B, D).
    """
    B, W = ids.shape
    lengths = mask.sum(1).tolist()
    rows = [ids[b, W - n:].tolist() for b, n in enumerate(lengths)]
    donors = share_prefixes(rows)
    hidden = torch.empty((B, model.config.hidden_size), dtype=model.dtype, device=ids.device)
    computed = [b for b in range(B) if b not in donors]
    takers = {b: [b] for b in computed}
    for r, d in donors.items():
        takers[d].append(r)
    for n in sorted({lengths[b] for b in computed}):
        group = [b for b in computed if lengths[b] == n]
        part = KVCache(model.config, len(group), n, model.dtype, ids.device)
        states = model.model(ids[group, W - n:], cache=part)  # (G, n, D)
        counter.add(n, 0, len(group))
        for j, b in enumerate(group):
            for r in takers[b]:
                m = lengths[r]
                hidden[r] = states[j, m - 1]
                cache.k[:, r, :, W - m:W] = part.k[:, j, :, :m]
                cache.v[:, r, :, W - m:W] = part.v[:, j, :, :m]
    cache.valid[:, :W] = mask.bool()
    cache.length = W
    return hidden


def share_prefixes(prompts: Sequence[Sequence[int]]) -> dict[int, int]:
    """{row: donor row} for every prompt that equals the start of a longer (or equal, earlier) prompt
    that is itself computed. Longest prompts are computed first; each is looked up only at the
    lengths that occur, so the cost is rows x distinct lengths."""
    order = sorted(range(len(prompts)), key=lambda b: (-len(prompts[b]), b))
    sizes = sorted({len(p) for p in prompts})
    starts: dict[tuple, int] = {}
    donors: dict[int, int] = {}
    for b in order:
        key = tuple(prompts[b])
        if key in starts:
            donors[b] = starts[key]
            continue
        for n in sizes:
            if n <= len(key):
                starts.setdefault(key[:n], b)
    return donors


class Generated(list):
    """What a decoding call returns: its outputs (a list: one per prompt, or per context), and what
    computing them cost, from the modules' own `flops()`: `cost` (its forward FLOPs, `flops`, and
    their linear-layer part, `cost.matmul`) and `forward_calls`."""

    def __init__(self, outputs, cost: Cost, forward_calls: int):
        super().__init__(outputs)
        self.cost, self.forward_calls = cost, forward_calls

    @property
    def flops(self) -> float:
        return self.cost.forward


class FlopCounter:
    """Adds up each forward call's Cost, from the model's own `flops()`, under `convention`."""

    def __init__(self, model, convention: str = "exact"):
        self.model, self.convention = model, get_convention(convention)
        self.cost, self.calls = Cost(), 0

    def add(self, tokens: int, past: int, batch: int) -> None:
        """One forward of `batch` rows of `tokens` new tokens after `past` cached positions."""
        self.calls += 1
        self.cost += batch * self.model.model.flops(tokens, self.convention, past)

    def head(self, batch: int, rows: int) -> None:
        """The LM head on the last position of each row, over `rows` vocabulary rows."""
        self.cost += batch * self.convention.linear(1, self.model.lm_head.in_features, rows, False, False)
