"""LoRALinear: a frozen nn.Linear plus a trainable low-rank update, B @ A, scaled by alpha / r."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flops.conventions import Convention, Cost


class LoRALinear(nn.Module):
    """y = x W^T + b + (alpha / r) * B(A(dropout(x))), with W and b frozen under their original names.

    lora_A: (r, in) kaiming-uniform, lora_B: (out, r) zeros, so a fresh adapter changes nothing.
    `merge()` folds the update into W (inference with no extra cost); `unmerge()` takes it out again.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(self.in_features, rank, **kw)  # weight (r, in)
        self.lora_B = nn.Linear(rank, self.out_features, **kw)  # weight (out, r)
        self.dropout = float(dropout)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora()

    @torch.no_grad()
    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """A kaiming-uniform (as peft: a = sqrt(5)), B zeros."""
        if self.lora_A.weight.is_meta:
            return
        bound = math.sqrt(6 / ((1 + 5) * self.in_features))  # kaiming_uniform_ with a=sqrt(5), fan_in
        self.lora_A.weight.uniform_(-bound, bound, generator=generator)
        self.lora_B.weight.zero_()

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A, shaped like W (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.out_features)
        x = x.reshape(-1, self.in_features)  # (N, in), a view for contiguous x
        y = F.linear(x, self.weight, self.bias)  # (N, out)
        if self.merged:
            return y.view(shape)
        h = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))  # (N, r)
        if h.dtype == y.dtype == self.lora_B.weight.dtype:
            # y += scaling * h B^T in place: the update and its scaled copy are never (N, out) tensors of their own
            return y.addmm_(h, self.lora_B.weight.T, alpha=self.scaling).view(shape)
        # mixed dtypes (autocast over fp32 weights, an adapter kept in another dtype): cast, then add
        return (y + (self.lora_B(h) * self.scaling).to(y.dtype)).view(shape)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def adapter_flops(self, seq_len: int, convention: Convention) -> Cost:
        """The adapter's own share: x A^T, then B, the scaling and the addition (none once merged,
        and none under a convention that neglects LoRA)."""
        if self.merged or not convention.count_lora:
            return Cost()
        trainable = self.lora_A.weight.requires_grad
        return (convention.linear(seq_len, self.in_features, self.rank, False, trainable)
                + convention.linear(seq_len, self.rank, self.out_features, False, trainable)
                + convention.pointwise(2 * seq_len * self.out_features))

    def flops(self, seq_len: int, convention: Convention, out_features: int | None = None) -> Cost:
        """The frozen base layer plus the adapter."""
        base = convention.linear(seq_len, self.in_features, out_features or self.out_features,
                                 self.bias is not None, self.weight.requires_grad)
        return base + self.adapter_flops(seq_len, convention)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, r={self.rank}, "
                f"alpha={self.alpha:g}, merged={self.merged}")
