"""Training windows (of tokens, or of values) and the prompts of an evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .text import encode

IGNORE = -100  # label value the loss skips (padding)


def window_starts(length: int, chunk: int, stride: int) -> list[int]:
    """0, stride, 2*stride, ... until a window reaches the end of the sequence."""
    starts = [0]
    while starts[-1] + chunk < length:
        starts.append(starts[-1] + stride)
    return starts


def make_windows(sequences: Sequence[Sequence[int]], chunk: int = 512, stride: int = 268,
                 pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Cut every token sequence into windows of `chunk` tokens every `stride` tokens.

    Returns input_ids, labels and attention_mask, each (windows, chunk). The last window of a
    sequence is padded on the right: its padding has attention_mask 0 and label -100, so the loss
    ignores it. Labels equal input_ids otherwise (the shift happens in the loss).
    """
    if chunk < 2 or stride < 1:
        raise ValueError(f"chunk must be >= 2 and stride >= 1, got chunk={chunk}, stride={stride}")
    ids, labels, mask = [], [], []
    for seq in sequences:
        for start in window_starts(len(seq), chunk, stride):
            piece = list(seq[start:start + chunk])
            pad = chunk - len(piece)
            ids.append(piece + [pad_id] * pad)
            labels.append(piece + [IGNORE] * pad)
            mask.append([1] * len(piece) + [0] * pad)
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return {"input_ids": as_tensor(ids), "labels": as_tensor(labels), "attention_mask": as_tensor(mask)}


def make_value_windows(series: Sequence[np.ndarray], chunk: int = 100, stride: int = 100) -> dict[str, torch.Tensor]:
    """Cut every series of scaled values (steps, 2) into windows of `chunk` steps every `stride` steps,
    for the continuous encoding. Returns values (windows, chunk, 2) float32 and labels (windows,
    chunk): 0 at a real step, -100 at the padding that ends a sequence's last window (zeros)."""
    if chunk < 2 or stride < 1:
        raise ValueError(f"chunk must be >= 2 and stride >= 1, got chunk={chunk}, stride={stride}")
    values, labels = [], []
    for seq in series:
        seq = np.asarray(seq, dtype=np.float32)
        for start in window_starts(len(seq), chunk, stride):
            piece = seq[start:start + chunk]
            pad = chunk - len(piece)
            values.append(np.concatenate([piece, np.zeros((pad, 2), dtype=np.float32)]))
            labels.append([0] * len(piece) + [IGNORE] * pad)
    return {"values": torch.from_numpy(np.stack(values)), "labels": torch.tensor(labels, dtype=torch.long)}


def prompt(values: np.ndarray, ctx: int, alpha: float = 1.0, decimals: int = 2) -> str:
    """The first `ctx` steps of a series (points, 2) as text ending with ';': what the model continues."""
    return encode(values[:ctx], alpha, decimals) + ";"


def tokenize_series(values: Sequence[np.ndarray], alpha: float, encode_text: Callable[[str], list[int]],
                    decimals: int = 2) -> list[list[int]]:
    """Each system's whole series as text, then tokens."""
    return [encode_text(encode(v, alpha, decimals)) for v in values]
