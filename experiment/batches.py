"""Training batches: the split's series as token windows, the fresh systems of the scratch presets, and
which windows each step reads.

The rows of a step follow from the step number alone (every epoch is a seeded permutation of its
windows), so a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from data import make_splits, scale_for
from data.simulate import WORLDS, ensure_data, simulate_world

from .encodings import Encoding

FRESH_SEED = 1_000_003  # fresh systems are drawn from seeds far from any data file's


@dataclass
class Prepared:
    """A run's training windows and validation series, as its encoding makes them (token windows of
    input_ids, labels, attention_mask, each (N, chunk), and token lists; or windows of values (N,
    chunk, 2) and labels (N, chunk), and arrays of scaled values (steps, 2)). `key` names the
    windows' inputs."""

    windows: dict[str, torch.Tensor]  # epoch 0
    val_ids: list  # whole validation systems, not chunked: token ids, or scaled values (steps, 2)
    train_systems: list[int]
    val_systems: list[int]
    alpha_train: float
    alpha_val: float
    key: str = "input_ids"
    stream: Callable[[int], dict[str, torch.Tensor]] | None = None  # epoch -> windows of fresh systems
    _epoch: tuple[int, dict] | None = None

    def windows_of(self, epoch: int) -> dict[str, torch.Tensor]:
        if self.stream is None or epoch == 0:
            return self.windows
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.stream(epoch))
        return self._epoch[1]

    def batch(self, step: int, batch: int, seed: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids or values, labels) of step `step` (this process's `rows` of it), (rows, chunk, ...)."""
        picks = batch_positions(step, batch, len(self.windows[self.key]), seed)[rows]
        ids = torch.stack([self.windows_of(e)[self.key][i] for e, i in picks])
        labels = torch.stack([self.windows_of(e)["labels"][i] for e, i in picks])
        return ids, labels


def prepare_data(s, tok, encoding: Encoding) -> Prepared:
    """The windows and validation series of a run's settings `s` (a TrainSettings) in `encoding`,
    tokenized by `tok`."""
    series = ensure_data(s.data)
    splits = make_splits(series.systems, seed=s.split_seed)
    train = splits["train"]
    rng = np.random.default_rng(s.split_seed)
    keep = max(1, round(len(train) * s.train_fraction))
    train = sorted(rng.permutation(train)[:keep].tolist())
    val = splits["validation"][: s.val_limit] if s.val_limit else splits["validation"]
    alpha_train = scale_for(series.trajectories[splits["train"]])
    alpha_val = scale_for(series.trajectories[splits["validation"]])
    train_ids = encoding.inputs(series.trajectories[train], alpha_train, tok, s.decimals)
    encoding.check_chunk(s.chunk, tok, s.decimals)
    windows = encoding.windows(train_ids, s.chunk, s.stride, tok.pad_id or 0)
    val_ids = encoding.inputs(series.trajectories[val], alpha_val, tok, s.decimals)
    stream = None
    if s.fresh_systems:
        stream = functools.partial(fresh_windows, s, tok, encoding, series.points, float(series.time[-1]), alpha_train)
        windows, train = stream(0), []
    return Prepared(windows, val_ids, train, val, alpha_train, alpha_val, encoding.window_key, stream)


def fresh_windows(s, tok, encoding: Encoding, points: int, t_end: float, alpha: float, epoch: int) -> dict[str, torch.Tensor]:
    """Epoch `epoch`'s new systems, simulated from the run's world (never the file's validation
    systems), clipped where the encoding's text must keep one digit before the point. Every system is
    the same number of positions, so every epoch cuts into the same number of windows."""
    traj, _, _ = simulate_world(WORLDS[s.world], s.fresh_systems, FRESH_SEED + 1000 * s.seed + epoch, points, t_end)
    traj = np.minimum(traj, encoding.top(alpha, s.decimals))
    return encoding.windows(encoding.inputs(traj, alpha, tok, s.decimals), s.chunk, s.stride, tok.pad_id or 0)


def batch_positions(step: int, batch: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, window index) of each row of step `step` (1-based): every epoch is a seeded permutation
    of its n windows, read in order."""
    out = []
    for pos in range((step - 1) * batch, step * batch):
        epoch, i = divmod(pos, n)
        out.append((epoch, epoch_order(n, seed, epoch)[i]))
    return out


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded permutation of an epoch's n windows (a step's rows come from one or two epochs)."""
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())
