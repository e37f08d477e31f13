"""The same decoder on continuous values: one position per time step, a linear input layer in place
of the token embedding, and a predictive distribution out.

    values (B, T, 2) scaled  --inputs-->  --embed_values-->  (B, T, D)  --model-->  (B, T, D)
    --value_head-->  per species a mixture of `components` Gaussians over the next step, in the space

The space (`ValueSpec.space`) is where the values enter and the Gaussians live: `log` models
u = log(value + LOG_OFFSET), so a step's change is relative (predator-prey growth is a rate times the
population) and a forecast can never go below 0; `linear` models the scaled value itself.
With `ValueSpec.inputs` 'centred', what enters is each value in the space minus the series' running
mean up to it (causal: position t's mean is of steps 1..t, carried through the cache for values fed
back): in log space each species' size is divided out, so the model reads a series' shape and
forecasts its relative changes, the same for a system and the one with its populations scaled (a
symmetry of every family here: x -> s x is K -> s K, h -> h / s). The head's means stay offsets from
the present value itself.

The (prey, predator) pair at step t enters at position t; position t's head gives the distribution
of step t+1, or with a head of several steps (`ValueSpec.steps`, a patch as TimesFM and
Chronos-Bolt give) of steps t+1 ... t+steps at once. Each component's mean is an offset from the
present value (in the space: the next steps are near the present one), its scale is
softplus(raw) + MIN_SCALE, its weight a softmax over the components. The loss is the negative
log-likelihood of the next steps' scaled values, summed over the two species (nats per step; in log
space with the change of variables' term, so both spaces' losses are densities over the same values
and compare). Forecasts feed back a sample (or, greedy, the mixture's mean in the space) through the
KV cache: 20 forward calls for 20 steps of a next-step head, one call for a head of 20 steps, which
is then never fed its own draws. The context is computed once per series, for all its samples and
shorter contexts.

Parameter names: the decoder is `model.*` as in the checkpoint; the new layers are `embed_values.*`
and `value_head.*`. With a pretrained Qwen (LoRA), `model.embed_tokens` stays loaded and unused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flops.conventions import Convention, Cost, get_convention, linear_flops

from .config import QwenConfig
from .generate import Generated
from .loss import IGNORE
from .model import DecoderWithHead, KVCache, QwenModel

SPECIES = 2  # prey, predator
MIN_SCALE = 1e-3  # the smallest standard deviation a component may have (scaled units)
# Elementwise FLOPs per species and component of the mixture's log-likelihood: softplus (exp, add,
# log), the offset mean (add), the standardised error (subtract, divide, square), the Gaussian's log
# density (log, 2 adds, a multiply), the log weight (log-softmax: exp, add, log, subtract), and the
# logsumexp over components (max, subtract, exp, add, log): counted as 20.
NLL_OPS = 20
VALUE_SPACES = ("log", "linear")
VALUE_INPUTS = ("level", "centred")  # what enters: the value in the space, or that minus its running mean
LOG_OFFSET = 0.01  # scaled units, the digit text's resolution: log(0 + LOG_OFFSET) is finite
# Elementwise FLOPs per value of the log space: at the input, an add and a log; at the head, the
# present value's add and log again (the means' offset), the target's add and log, and the change of
# variables' add: 5 (a forecast's draw has the means' 2 and an exp and a subtract back: 4, counted as 5).
LOG_IN_OPS, LOG_HEAD_OPS = 2, 5
CENTRE_OPS = 3  # per value of centred inputs: the running sum's add, the mean's divide, the subtract


# a ValueSpec's field -> its key in a model's config.json and an adapter's metadata; what a file saved
# before the field was a choice means (the values themselves, a next-step head, levels)
SAVED_KEYS = {"components": "value_components", "space": "value_space", "steps": "value_steps",
              "inputs": "value_inputs"}
BEFORE = {"space": "linear", "steps": 1, "inputs": "level"}
CHOICES = {"space": VALUE_SPACES, "inputs": VALUE_INPUTS}


@dataclass(frozen=True)
class ValueSpec:
    """What a continuous model's head is: `components` Gaussians per species for each of the next
    `steps` steps, in `space` ('log': of log(scaled value + LOG_OFFSET); 'linear': of the scaled value),
    and what it reads (`inputs`: 'level', the value in the space; 'centred', that minus its running mean)."""

    components: int = 1
    space: str = "log"
    steps: int = 1
    inputs: str = "level"

    def __post_init__(self):
        for name in ("components", "steps"):
            k = getattr(self, name)
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"{name} must be a positive integer, got {k!r}")
        if self.space not in VALUE_SPACES:
            raise ValueError(f"value space must be one of {', '.join(VALUE_SPACES)}, got {self.space!r}")
        if self.inputs not in VALUE_INPUTS:
            raise ValueError(f"value inputs must be one of {', '.join(VALUE_INPUTS)}, got {self.inputs!r}")

    def saved(self) -> dict[str, int | str]:
        """The keys that record the spec in a model's config.json and an adapter's metadata."""
        return {key: getattr(self, field) for field, key in SAVED_KEYS.items()}

    @classmethod
    def read(cls, saved: Mapping, components: int | None = None, text: bool = False) -> ValueSpec:
        """The spec `saved` records (see `saved`); a file from before a field was a choice reads as
        it was then (`BEFORE`). `components`, if given, in place of the file's (an adapter's comes from
        its head's shape); `text`: the integers are strings of digits (safetensors metadata). A
        ValueError names the key, the value and what was expected."""
        fields = {}
        for field, key in SAVED_KEYS.items():
            value = components if field == "components" and components is not None else saved.get(key, BEFORE.get(field))
            if field in ("components", "steps"):
                if text and isinstance(value, str) and value.isdigit():
                    value = int(value)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{key} must be a positive integer, got {value!r}")
            elif value not in CHOICES[field]:
                raise ValueError(f"{key} must be one of {', '.join(CHOICES[field])}, got {value!r}")
            fields[field] = value
        return cls(**fields)

    @property
    def width(self) -> int:
        """The value head's outputs: a weight, a mean and a scale per component, species and step."""
        return self.steps * SPECIES * 3 * self.components


class QwenForValueForecasting(DecoderWithHead):
    """The decoder with `embed_values` (2 -> D) in, and `value_head` (D -> steps x 2 x 3 x components) out."""

    def __init__(self, config: QwenConfig, spec: ValueSpec = ValueSpec()):
        super().__init__()
        self.config, self.spec = config, spec
        self.model = QwenModel(config)
        self.embed_values = nn.Linear(SPECIES, config.hidden_size)
        self.value_head = nn.Linear(config.hidden_size, spec.width)

    @classmethod
    def from_decoder(cls, decoder: QwenModel, config: QwenConfig, spec: ValueSpec = ValueSpec(),
                     generator: torch.Generator | None = None) -> "QwenForValueForecasting":
        """Around a (pretrained) decoder: new input and output layers, initialised at random."""
        with torch.device("meta"):
            model = cls(config, spec)
        model.model = decoder
        w = decoder.norm.weight
        model.embed_values = nn.Linear(SPECIES, config.hidden_size, device=w.device, dtype=w.dtype)
        model.value_head = nn.Linear(config.hidden_size, spec.width, device=w.device, dtype=w.dtype)
        model.reset_value_layers(generator)
        return model

    @torch.no_grad()
    def reset_value_layers(self, generator: torch.Generator | None = None, std: float = 0.02) -> None:
        """normal(0, std) weights and zero biases for the two new layers."""
        for layer in (self.embed_values, self.value_head):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
            layer.bias.zero_()

    def to_space(self, values: torch.Tensor) -> torch.Tensor:
        """Scaled values -> the space the head models, in fp32 (same shape)."""
        return (values.float() + LOG_OFFSET).log() if self.spec.space == "log" else values.float()

    def from_space(self, u: torch.Tensor) -> torch.Tensor:
        """The space -> scaled values, never below 0 (same shape)."""
        return ((u.exp() - LOG_OFFSET) if self.spec.space == "log" else u).clamp(min=0)

    def inputs(self, values: torch.Tensor, cache: "ValueCache | None" = None) -> torch.Tensor:
        """values (B, T, 2) scaled -> what the input layer reads (B, T, 2), fp32: the values in the
        space, or (centred inputs) those minus the running mean of the series so far, its earlier
        positions' sum read from `cache` (a ValueCache) and this call's written to it."""
        u = self.to_space(values)
        if self.spec.inputs == "level":
            return u
        past = 0 if cache is None else cache.length
        sums = u.cumsum(1)  # (B, T, 2)
        if past:
            sums = sums + cache.sums[:, past - 1, None]
        if cache is not None:
            cache.sums[:, past:past + u.shape[1]] = sums
        counts = torch.arange(past + 1, past + u.shape[1] + 1, device=u.device, dtype=u.dtype)
        return u - sums / counts[:, None]

    def new_cache(self, batch: int, max_len: int, device) -> "ValueCache":
        """A KV cache for this model that also holds the running sums of centred inputs."""
        return ValueCache(self.config, batch, max_len, self.dtype, device)

    def forward(self, values, attention_mask=None, position_ids=None, cache: KVCache | None = None) -> torch.Tensor:
        """values (B, T, 2) scaled -> final hidden states (B, T, D)."""
        x = self.embed_values(self.inputs(values, cache).to(self.embed_values.weight.dtype))  # (B, T, D)
        x = x.to(self.dtype)  # fp32 value layers (LoRA) on a bf16 decoder
        return self.model(attention_mask=attention_mask, position_ids=position_ids, cache=cache, inputs_embeds=x)

    def mixture(self, hidden: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden (..., D) and the values at the same positions (..., 2) -> log weights, means and
        scales of each of the next `steps` steps in the space, each (..., steps, 2, components), in
        fp32; every mean is an offset from the present value."""
        raw = self.value_head(hidden.to(self.value_head.weight.dtype)).float()
        raw = raw.unflatten(-1, (self.spec.steps, SPECIES, 3, self.spec.components))  # (..., H, 2, 3, K)
        log_w = torch.log_softmax(raw[..., 0, :], dim=-1)
        means = self.to_space(values)[..., None, :, None] + raw[..., 1, :]
        scales = F.softplus(raw[..., 2, :]) + MIN_SCALE
        return log_w, means, scales

    def nll(self, hidden: torch.Tensor, values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (nats) of `targets` (N, steps, 2), the next steps after each of N
        positions, summed over the species: (N, steps). In log space the density of
        u = log(v + LOG_OFFSET) is turned into one of v by the change of variables: -log p(v) = -log p(u) + u."""
        log_w, means, scales = self.mixture(hidden, values)
        u = self.to_space(targets)  # (N, H, 2)
        z = (u[..., None] - means) / scales
        log_p = -0.5 * z * z - scales.log() - 0.5 * math.log(2 * math.pi)  # (N, H, 2, K)
        nll = -torch.logsumexp(log_w + log_p, dim=-1).sum(-1)
        return nll + u.sum(-1) if self.spec.space == "log" else nll

    def predict(self, hidden: torch.Tensor, values: torch.Tensor, temperature: float = 0.0,
                generator: torch.Generator | None = None, samples: int | None = None) -> torch.Tensor:
        """The next `steps` steps (B, steps, 2) from hidden (B, D) and the present values (B, 2): the
        mixture's mean in the space when temperature is 0 (in log space a median, not a mean, of the
        values), else a draw for each step (a component by its weight, then its Gaussian with the
        scale times `temperature`). With `samples`, that many draws of each row's distribution,
        (B, samples, steps, 2), from one pass of the head. Scaled values cannot go below 0."""
        log_w, means, scales = self.mixture(hidden, values)  # (B, H, 2, K)
        if samples is not None:  # (B, S, H, 2, K): the same distribution for every draw of a row
            log_w, means, scales = (x[:, None].expand(-1, samples, *x.shape[1:]) for x in (log_w, means, scales))
        if temperature <= 0:
            return self.from_space((log_w.exp() * means).sum(-1))
        k = torch.multinomial(log_w.exp().flatten(0, -2), 1, generator=generator).view(*log_w.shape[:-1], 1)
        mean, scale = means.gather(-1, k).squeeze(-1), scales.gather(-1, k).squeeze(-1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return self.from_space(mean + temperature * scale * noise)

    def head_flops(self, positions: int, convention: Convention) -> Cost:
        """The value head and the mixture's likelihood of every step it gives at `positions` positions
        (in log space: the present value's log once, each step's target log and change of variables)."""
        steps = self.spec.steps
        log_ops = LOG_HEAD_OPS + 3 * (steps - 1) if self.spec.space == "log" else 0
        return (linear_flops(self.value_head, positions, convention)
                + convention.pointwise(positions * SPECIES * self.spec.components * steps, NLL_OPS)
                + convention.pointwise(positions * SPECIES, log_ops))

    def flops(self, seq_len: int, convention: Convention | str = "exact", past: int = 0,
              head_positions: int | None = None) -> Cost:
        """One series of `seq_len` steps (after `past` cached ones): the input layer, the decoder, and
        the head on `head_positions` of them (default: all). Batch B costs B times this."""
        convention = get_convention(convention)
        positions = seq_len if head_positions is None else head_positions
        in_ops = (LOG_IN_OPS if self.spec.space == "log" else 0) + (CENTRE_OPS if self.spec.inputs == "centred" else 0)
        return (convention.pointwise(seq_len * SPECIES, in_ops) + linear_flops(self.embed_values, seq_len, convention)
                + self.model.flops(seq_len, convention, past) + self.head_flops(positions, convention))


class ValueCache(KVCache):
    """A KV cache with, per row and position, the running sum of the inputs in the space (B, max_len, 2):
    what centred inputs need of the positions before a call, a shorter context's included."""

    def __init__(self, config: QwenConfig, batch: int, max_len: int, dtype: torch.dtype, device):
        super().__init__(config, batch, max_len, dtype, device)
        self.sums = torch.zeros(batch, max_len, SPECIES, device=device)

    def repeated(self, times: int, length: int, max_len: int) -> "ValueCache":
        out = super().repeated(times, length, max_len)
        out.sums[:, :length] = self.sums[:, :length].repeat_interleave(times, 0)
        return out


def value_loss(model: QwenForValueForecasting, values: torch.Tensor, labels: torch.Tensor,
               ignore: int = IGNORE) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood (nats per step, both species) of the next `steps` steps after
    every position whose next step is real (labels (B, T) not `ignore`), each step counted where it
    is real too; returns (loss, steps scored). values (B, T, 2)."""
    hidden = model(values)[:, :-1]  # (B, T-1, D); right padding is never seen by a real step
    futures, real = ahead(values, model.spec.steps), ahead(labels != ignore, model.spec.steps)  # (B, T-1, H, ...)
    scored = real[..., 0]  # (B, T-1): the positions whose next step is real
    nll = model.nll(hidden[scored], values[:, :-1][scored], futures[scored])  # (N, H)
    counted = real[scored]
    return nll[counted].mean(), int(counted.sum())


def ahead(x: torch.Tensor, steps: int) -> torch.Tensor:
    """x (B, T, ...) -> (B, T-1, steps, ...): at position t, x[t+1] ... x[t+steps], zeros (False)
    where that runs past the end."""
    T = x.shape[1]
    shifted = [x[:, h:] for h in range(1, steps + 1)]
    shifted = [torch.cat([s, s.new_zeros((s.shape[0], T - 1 - s.shape[1], *s.shape[2:]))], 1) for s in shifted]
    return torch.stack(shifted, 2)


@torch.no_grad()
def forecast_values(model: QwenForValueForecasting, series: torch.Tensor, horizon: int, contexts=None,
                    samples: int = 1, temperature: float = 0.0, generator: torch.Generator | None = None,
                    convention: str = "exact") -> Generated:
    """Continue each of `series` (B, T, 2), scaled, from each of `contexts` (its first steps, default
    all T) by `horizon` steps, `samples` times: a list over `contexts` of (B, samples, horizon, 2).

    One prefill of the longest context per series: a shorter context's keys, values and last hidden
    state are its first positions (causal attention gives the same), and every sample starts from
    them. A head that reaches the horizon gives every step's distribution in one pass, drawn
    `samples` times (or greedy its median). Otherwise, per context and for all B x samples rows at
    once, the head gives the next `steps` steps (a draw of each, or greedy the median), which are fed
    back through the cache in one forward call before the head is asked again: 20 calls for 20
    steps of a next-step head. Returned with what it cost: `flops` (from the modules' own flops(),
    under `convention`) and `forward_calls`."""
    conv = get_convention(convention)
    B, T, _ = series.shape
    contexts = [T] if contexts is None else [int(c) for c in contexts]
    if not contexts or min(contexts) < 1 or max(contexts) > T or samples < 1:
        raise ValueError(f"contexts must be 1 to {T} steps and samples at least 1, got {contexts} and {samples}")
    C = max(contexts)
    prefill = model.new_cache(B, C, series.device)
    states = model(series[:, :C], cache=prefill)  # (B, C, D)
    calls, spent = 1, B * model.flops(C, conv, head_positions=0)  # the head is charged per call below
    rows = B * samples
    forecasts = []
    for c in contexts:
        if horizon <= model.spec.steps:  # the head's distribution of every step at once: drawn, never fed back
            spent += B * model.head_flops(1, conv)
            draws = model.predict(states[:, c - 1], series[:, c - 1].float(), temperature, generator, samples)
            forecasts.append(draws[:, :, :horizon])
            continue
        cache = prefill.repeated(samples, c, c + horizon)
        hidden = states[:, c - 1].repeat_interleave(samples, 0)  # (rows, D)
        last = series[:, c - 1].float().repeat_interleave(samples, 0)  # (rows, 2)
        out = []
        while len(out) < horizon:
            spent += rows * model.head_flops(1, conv)
            block = model.predict(hidden, last, temperature, generator)[:, :horizon - len(out)]  # (rows, <=H, 2)
            out.extend(block.unbind(1))
            last = block[:, -1]
            if len(out) < horizon:
                past = cache.length
                hidden = model(block, cache=cache)[:, -1]
                calls += 1
                spent += rows * model.flops(block.shape[1], conv, past, head_positions=0)
        forecasts.append(torch.stack(out, 1).view(B, samples, horizon, 2))
    return Generated(forecasts, spent, calls)
