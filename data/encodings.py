"""How a series enters a model, three ways, and the value arithmetic they share.

    digits       LLMTIME text, one token per character: "0.68,0.75;" is 10 positions per time step
    bins         the same text, one token per value (a vocabulary of the 1,000 values 0.00 ... 9.99
                 at 2 decimals, plus ',' and ';'), Chronos-style: 4 positions per time step
    continuous   one position per time step: the scaled (prey, predator) pair itself, through a
                 linear input layer, and a predictive distribution out (see qwen_min.continuous)

Every encoding sees values divided by the split's alpha (data.text.scale_for), so all three read
and write the same scaled numbers, below 10 (the fresh training systems are clipped there, see
experiment.batches.fresh_windows, so every value has a bin).
"""

from __future__ import annotations

import numpy as np

ENCODINGS = ("digits", "bins", "continuous")


def bin_words(decimals: int = 2) -> list[str]:
    """The value tokens of the bins encoding, smallest first: '0.00', '0.01', ..., '9.99' at 2 decimals
    (10 * 10**decimals words; a bin's index is its value times 10**decimals)."""
    return [f"{k / 10 ** decimals:.{decimals}f}" for k in range(10 * 10 ** decimals)]


def bin_width(decimals: int = 2) -> float:
    """The width of one value bin in scaled units (0.01 at 2 decimals)."""
    return 10.0 ** -decimals


def jitter(values: np.ndarray, alpha: float, decimals: int, rng: np.random.Generator) -> np.ndarray:
    """A sample within each value's bin: uniform over the bin's width (in original units: alpha times
    the scaled width) around the bin's value, kept non-negative. For sampled bin forecasts."""
    half = bin_width(decimals) * alpha / 2
    return np.maximum(values + rng.uniform(-half, half, size=values.shape), 0.0)


__all__ = ["ENCODINGS", "bin_words", "bin_width", "jitter"]
