"""Qwen2.5 as explicit modules, read top-down: RMSNorm, rotary embeddings, attention, MLP, block, model.

Parameter names are the official checkpoint keys (`model.layers.0.self_attn.q_proj.weight`, ...),
so `model.safetensors` loads with `load_state_dict(strict=True)` and no mapping table. Numerics
follow transformers' `Qwen2ForCausalLM`: RMSNorm and RoPE angles in fp32, rotate-half RoPE,
q/k/v with bias and o_proj without, softmax inside `scaled_dot_product_attention`.

Shapes: B batch, T new tokens, S all key positions (cache + new), D hidden, H query heads,
K key/value heads, E head dim, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flops.conventions import Convention, Cost, get_convention, linear_flops

from .config import QwenConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the normalisation computed in fp32 and cast back before the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def flops(self, seq_len: int, convention: Convention) -> Cost:
        return convention.rmsnorm(seq_len, self.weight.shape[0])


class RotaryEmbedding(nn.Module):
    """cos and sin of position * theta^(-2i/E), rotate-half layout, angles in fp32. No parameters."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._inv_freq:
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=device) / self.head_dim
            self._inv_freq[device] = 1.0 / (self.theta ** exponents)  # (E/2,)
        return self._inv_freq[device]

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq(position_ids.device)  # (B, T, E/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, E)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, T, E); cos, sin: (B, T, E)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Preallocated keys and values for every layer, (layers, B, K, max_len, E), filled left to right.

    `valid` (B, max_len) marks real tokens (False for left padding), so later steps can mask them.
    """

    def __init__(self, config: QwenConfig, batch: int, max_len: int, dtype: torch.dtype, device):
        self.config = config
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0  # positions filled so far
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, K, T, E) keys/values after `length`; return all of them (B, K, S, E)."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def repeated(self, times: int, length: int, max_len: int) -> "KVCache":
        """A new cache holding this one's first `length` positions with each row repeated `times`
        times in a row (row b becomes rows b*times to b*times + times-1), room for `max_len`."""
        out = type(self)(self.config, self.k.shape[1] * times, max_len, self.k.dtype, self.k.device)
        out.k[:, :, :, :length] = self.k[:, :, :, :length].repeat_interleave(times, 1)
        out.v[:, :, :, :length] = self.v[:, :, :, :length].repeat_interleave(times, 1)
        out.valid[:, :length] = self.valid[:, :length].repeat_interleave(times, 0)
        out.length = length
        return out


class Attention(nn.Module):
    """Grouped-query attention: H query heads share K key/value heads (14 and 2 at full size)."""

    def __init__(self, config: QwenConfig, layer_idx: int):
        super().__init__()
        d, e = config.hidden_size, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, e
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(d, self.n_head * e, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv_head * e, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv_head * e, bias=True)
        self.o_proj = nn.Linear(self.n_head * e, d, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, E)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, E)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, E)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, K, S, E)
        # mask None: plain causal attention over the T new tokens (no cache, no padding)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.n_head != self.n_kv_head)  # (B, H, T, E)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def flops(self, seq_len: int, convention: Convention, past: int = 0) -> Cost:
        """Projections, RoPE on q and k, and the attention itself over `past` cached + `seq_len` new keys."""
        kv_width = (self.n_head if convention.gqa_as_mha else self.n_kv_head) * self.head_dim
        projections = (linear_flops(self.q_proj, seq_len, convention)
                       + linear_flops(self.k_proj, seq_len, convention, out_features=kv_width)
                       + linear_flops(self.v_proj, seq_len, convention, out_features=kv_width)
                       + linear_flops(self.o_proj, seq_len, convention))
        rope = convention.rope_apply(seq_len, self.n_head + self.n_kv_head, self.head_dim)
        return projections + rope + convention.attention_core(seq_len, past, self.n_head, self.head_dim)


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, saving only its two inputs for the backward and recomputing silu(gate) there.

    Autograd would also keep silu(gate), a third (B, T, intermediate) tensor per block; with the
    down projection frozen (LoRA) nothing else of the MLP's is kept, so this saves a third of the
    MLP's activations. The gradients are the same operations autograd runs, bit for bit.
    """

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)  # in place: one (B, T, intermediate) buffer, not two

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SiluMul.apply(gate, up)
    return F.silu(gate).mul_(up)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: QwenConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))  # (B, T, D)

    def flops(self, seq_len: int, convention: Convention) -> Cost:
        return (linear_flops(self.gate_proj, seq_len, convention) + linear_flops(self.up_proj, seq_len, convention)
                + convention.silu_product(seq_len, self.gate_proj.out_features)
                + linear_flops(self.down_proj, seq_len, convention))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: QwenConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))

    def residual_flops(self, seq_len: int, convention: Convention) -> Cost:
        """One residual addition (T x D); a block has two."""
        return convention.pointwise(seq_len * self.input_layernorm.weight.shape[0])

    def flops(self, seq_len: int, convention: Convention, past: int = 0) -> Cost:
        return (self.input_layernorm.flops(seq_len, convention) + self.self_attn.flops(seq_len, convention, past)
                + self.post_attention_layernorm.flops(seq_len, convention) + self.mlp.flops(seq_len, convention)
                + 2 * self.residual_flops(seq_len, convention))


def attention_mask_for(key_valid: torch.Tensor | None, T: int, start: int) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask, True where a query may attend, or None when causal-only will do.

    Queries are positions start..start+T-1 of S = start+T keys. A key is visible when it is not
    after the query and is a real token; every query also sees itself, so rows belonging to left
    padding stay finite (their outputs are never used).
    """
    S = start + T
    if key_valid is None or bool(key_valid.all()):
        if start == 0 or T == 1:
            return None  # is_causal covers the first case; a single new token sees every key
        key_valid = None
    q_pos = torch.arange(start, S, device=(key_valid.device if key_valid is not None else None))
    k_pos = torch.arange(S, device=q_pos.device)
    mask = k_pos[None, :] <= q_pos[:, None]  # (T, S) causal
    if key_valid is None:
        return mask[None, None]
    mask = mask[None] & key_valid[:, None, :]  # (B, T, S)
    mask = mask | (k_pos[None, :] == q_pos[:, None])[None]
    return mask[:, None]


class QwenModel(nn.Module):
    """Token embedding, the blocks, the final norm: `model.*` in the checkpoint."""

    def __init__(self, config: QwenConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None):
        """input_ids (B, T), or inputs_embeds (B, T, D) in their place -> final hidden states (B, T, D).
        attention_mask (B, T): 1 real, 0 padding."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        B, T = x.shape[:2]
        start = cache.length if cache is not None else 0
        key_valid = None if attention_mask is None else attention_mask.bool()
        if cache is not None:
            if start + T > cache.max_len:
                raise ValueError(f"KV cache holds {cache.max_len} positions, asked for {start + T}")
            cache.valid[:, start:start + T] = True if key_valid is None else key_valid
            key_valid = cache.valid[:, :start + T]
        if position_ids is None:
            if key_valid is None:
                position_ids = torch.arange(start, start + T, device=x.device).expand(B, T)
            else:  # left padding: real tokens count from 0
                position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        cos, sin = self.rotary(position_ids, x.dtype)  # (B, T, E)
        mask = attention_mask_for(key_valid, T, start)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length = start + T
        return self.norm(x)

    def positional_flops(self, seq_len: int, convention: Convention) -> Cost:
        d = self.embed_tokens.embedding_dim
        return convention.positional(seq_len, d, self.rotary.head_dim)

    def flops(self, seq_len: int, convention: Convention, past: int = 0) -> Cost:
        """Embedding lookup (free), positions, every block, the final norm."""
        return (self.positional_flops(seq_len, convention)
                + sum(layer.flops(seq_len, convention, past) for layer in self.layers)
                + self.norm.flops(seq_len, convention))


class DecoderWithHead(nn.Module):
    """What every model of the decoder (`self.model`) and a head answers alike."""

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The decoder's dtype (a head's layers may be fp32 beside a bf16 decoder, as LoRA trains them)."""
        return self.model.norm.weight.dtype


class QwenForCausalLM(DecoderWithHead):
    """The decoder and its LM head, tied to the input embedding when the config says so."""

    def __init__(self, config: QwenConfig):
        super().__init__()
        self.config = config
        self.model = QwenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                last_only: bool = False) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`."""
        h = self.model(input_ids, attention_mask, position_ids, cache)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)

    def head_flops(self, positions: int, convention: Convention) -> Cost:
        """The LM head on `positions` positions (the convention may fix the vocabulary size)."""
        vocab = convention.vocab_size or self.lm_head.out_features
        return convention.linear(positions, self.lm_head.in_features, vocab, False, self.lm_head.weight.requires_grad)

    def softmax_flops(self, positions: int, convention: Convention) -> Cost:
        vocab = convention.vocab_size or self.lm_head.out_features
        return convention.softmax(positions, positions * vocab)

    def flops(self, seq_len: int, convention: Convention | str = "exact", past: int = 0,
              head_positions: int | None = None) -> Cost:
        """One sequence of `seq_len` tokens (after `past` cached ones), the LM head and softmax on
        `head_positions` of them (default: all). Batch B costs B times this. See `flops.conventions`."""
        convention = get_convention(convention)
        positions = seq_len if head_positions is None else head_positions
        return (self.model.flops(seq_len, convention, past) + self.head_flops(positions, convention)
                + self.softmax_flops(positions, convention))


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> QwenForCausalLM:
    """Random weights (normal(0, std) matrices, zero biases, unit norms), the same for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif isinstance(model.get_submodule(name.rsplit(".", 1)[0]), RMSNorm):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model
