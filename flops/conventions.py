"""FLOP counting primitives under two conventions. Imports nothing of the project.

Every module of `qwen_min` and `lora` has `flops(seq_len, convention, past=0) -> Cost`, built from the
primitives here; a parent's Cost is the sum of its children's plus its own operations, so the
printout, the training budget and the experiment table all read the same numbers.

Units: FLOPs for one sequence of `seq_len` new tokens (batch 1), attending to `past` cached
positions as well. A batch costs B times as much. Padding that is computed is counted: a padded
window of 512 tokens costs 512 tokens whatever its mask says.

`coursework` (the reference report's rules):
  add/subtract/negate 1, multiply/divide/inverse 1, exp/log 10, sin/cos/sqrt 10; a matmul of
  (m x n) by (n x p) costs m*p*(2n-1); grouped-query attention counted as multi-head attention
  (every head its own K and V); no causal saving; positional embeddings counted once as an
  addition to the token embeddings (T*d: 4.59e5 at 512 tokens, where the report printed 4.95e5,
  apparently a transposition of digits; the rules give 4.59e5 and that is what we print);
  RMSNorm charged 13 FLOPs per element (square 1, mean 1, root 10, divide 1, the per-row constants
  and the weight left out), which is the report's 5.97e6 at 512 x 896; the LM head and softmax
  over the report's vocabulary of 151,646; backward = 2 x forward; LoRA's own cost neglected.

`exact` (what the code does):
  2 FLOPs per multiply-add, biases added, every other elementwise operation 1 FLOP (exp, rsqrt,
  sin and cos included, as FLOP counters and MFU figures count them), real GQA shapes, RoPE
  applied to q and k in every block, causal attention (query i sees past + i keys), the real
  vocabulary, LoRA's matmuls included. Backward: an operand's gradient costs what the forward
  matmul did, so a frozen linear layer (input gradient only) costs 1x its forward, a trainable one
  (input and weight gradients) 2x, attention's activation-by-activation matmuls 2x, and
  elementwise operations 1x their forward.

The linear layers' forward matmuls are kept apart in `Cost.matmul`: under `exact` they equal what
`torch.utils.flop_counter.FlopCounterMode` measures (it counts no FLOPs for SDPA on the CPU). The
whole forward is `2 * matmul_params * T + attention + elementwise`, where matmul_params are the
weights of every linear layer (the tied LM head included) and attention is 4 * heads * head_dim
per visible (query, key) pair.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Cost:
    """FLOPs of one pass: forward, backward, and the part of forward spent in linear-layer matmuls."""

    forward: float = 0.0
    backward: float = 0.0
    matmul: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        if other == 0:  # lets sum() start from 0
            return self
        return Cost(self.forward + other.forward, self.backward + other.backward, self.matmul + other.matmul)

    __radd__ = __add__

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.forward * k, self.backward * k, self.matmul * k)

    __rmul__ = __mul__

    @property
    def training(self) -> float:
        """Forward plus backward: one training step's FLOPs."""
        return self.forward + self.backward


@dataclass(frozen=True)
class Convention:
    """Costs of primitives and the structural choices of one convention (see the module docstring)."""

    name: str
    exp: float  # also log
    sqrt: float  # also sin, cos, rsqrt
    exact_matmul: bool  # 2mnp, else m*p*(2n-1)
    gqa_as_mha: bool
    causal: bool
    rope_per_layer: bool
    vocab_size: int | None  # None: the model's own
    count_lora: bool
    backward_rule: str  # "2x" or "by-operand"
    rmsnorm_per_element: float
    rmsnorm_per_row: float
    softmax_per_element: float

    # --- primitives --------------------------------------------------------------------------------
    def pointwise(self, n: float, per_element: float = 1.0) -> Cost:
        """n elements, each `per_element` FLOPs; backward ~1x (exact) or 2x (coursework)."""
        fwd = n * per_element
        return Cost(fwd, self._backward(fwd, grads=1))

    def matmul(self, m: float, n: float, p: float, grads: int) -> Cost:
        """(m x n) @ (n x p); `grads`: how many of the two operands need a gradient (0, 1 or 2)."""
        fwd = 2 * m * n * p if self.exact_matmul else m * p * (2 * n - 1)
        return Cost(fwd, self._backward(fwd, grads))

    def _backward(self, forward: float, grads: int) -> float:
        return 2 * forward if self.backward_rule == "2x" else grads * forward

    # --- building blocks used by the modules -------------------------------------------------------
    def linear(self, tokens: int, in_features: int, out_features: int, bias: bool, trainable: bool) -> Cost:
        """x @ W.T (+ b). Frozen weights: only the input gradient; trainable: input and weight gradients."""
        mm = self.matmul(tokens, in_features, out_features, grads=2 if trainable else 1)
        cost = replace(mm, matmul=mm.forward)
        if bias:
            cost = cost + self.pointwise(tokens * out_features)
        return cost

    def rmsnorm(self, tokens: int, dim: int) -> Cost:
        return self.pointwise(tokens * dim, self.rmsnorm_per_element) + self.pointwise(tokens, self.rmsnorm_per_row)

    def silu_product(self, tokens: int, dim: int) -> Cost:
        """silu(g) * u: negate, exp, add, inverse, multiply for silu, then the product."""
        return self.pointwise(tokens * dim, 1 + self.exp + 1 + 1 + 1 + 1)

    def softmax(self, rows: float, entries: float) -> Cost:
        """Softmax over `entries` scores split into `rows`: exp, sum, divide each (and under exact the
        max and the subtraction that keep it stable): coursework 12 per entry less 1 per row."""
        if self.exact_matmul:
            return self.pointwise(entries * (self.exp + 4) - 2 * rows)
        return self.pointwise(entries * (self.exp + 2) - rows)

    def visible_pairs(self, tokens: int, past: int) -> float:
        """(query, key) pairs attention computes: causal (past + i for query i) or all past + T."""
        if self.causal:
            return tokens * past + tokens * (tokens + 1) / 2
        return tokens * (past + tokens)

    def attention_core(self, tokens: int, past: int, heads: int, head_dim: int) -> Cost:
        """softmax(q k^T / sqrt(E)) v for every head; both operands of its matmuls get gradients."""
        if self.causal:  # only the visible pairs: 2E for the score, 2E for the weighted value
            pairs = self.visible_pairs(tokens, past)
            core = self.matmul(pairs, head_dim, 1, grads=2) + self.matmul(pairs, 1, head_dim, grads=2)
        else:  # (T x E) @ (E x S), then (T x S) @ (S x E)
            keys = past + tokens
            pairs = tokens * keys
            core = self.matmul(tokens, head_dim, keys, grads=2) + self.matmul(tokens, keys, head_dim, grads=2)
        scale = self.pointwise(pairs)  # / sqrt(E)
        return (core + scale + self.softmax(tokens, pairs)) * heads

    def rope_apply(self, tokens: int, heads: int, head_dim: int) -> Cost:
        """x * cos + rotate_half(x) * sin: 2 multiplies, 1 add and half a negate per element (exact only)."""
        if not self.rope_per_layer:
            return Cost()
        return self.pointwise(tokens * heads * head_dim, 3.5)

    def positional(self, tokens: int, hidden: int, head_dim: int) -> Cost:
        """Coursework: an addition of a position embedding (T*d). Exact: RoPE angles, cos and sin (once)."""
        if not self.rope_per_layer:
            return self.pointwise(tokens * hidden)
        return self.pointwise(tokens * head_dim // 2) + self.pointwise(tokens * head_dim, 2 * self.sqrt)


COURSEWORK = Convention(
    name="coursework", exp=10, sqrt=10, exact_matmul=False, gqa_as_mha=True, causal=False, rope_per_layer=False,
    vocab_size=151646, count_lora=False, backward_rule="2x",
    rmsnorm_per_element=13, rmsnorm_per_row=0, softmax_per_element=12)
EXACT = Convention(
    name="exact", exp=1, sqrt=1, exact_matmul=True, gqa_as_mha=False, causal=True, rope_per_layer=True,
    vocab_size=None, count_lora=True, backward_rule="by-operand",
    rmsnorm_per_element=4, rmsnorm_per_row=3, softmax_per_element=5)
CONVENTIONS = {c.name: c for c in (COURSEWORK, EXACT)}


def linear_flops(module, tokens: int, convention: Convention, out_features: int | None = None) -> Cost:
    """An nn.Linear's cost, read off the module (sizes, bias, whether its weight trains); a module
    with its own `flops` (a LoRA layer) answers for itself. `out_features` overrides the width
    (coursework counts K and V projections as wide as Q)."""
    if hasattr(module, "flops"):
        return module.flops(tokens, convention, out_features=out_features)
    return convention.linear(tokens, module.in_features, out_features or module.out_features,
                             module.bias is not None, module.weight.requires_grad)


def get_convention(name: str | Convention) -> Convention:
    if isinstance(name, Convention):
        return name
    if name not in CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {name!r}; expected one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]
