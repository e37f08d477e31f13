"""Seeded train/validation split of system indices, the same wherever it is computed."""

from __future__ import annotations

import numpy as np

from .io import DataError


def make_splits(systems: int, validation: int = 150, seed: int = 0) -> dict[str, list[int]]:
    """{'train': sorted indices, 'validation': sorted indices}; 850/150 for the reference's 1,000 systems.

    When a file holds fewer than 1,000 systems, validation keeps the reference's share (15%).
    """
    if systems < 2:
        raise DataError(f"the data file holds {systems} system(s); at least 2 are needed to split them into "
                        f"training and validation")
    if validation >= systems:
        validation = max(1, round(systems * 0.15))
    order = np.random.default_rng(seed).permutation(systems)
    return {"train": sorted(order[validation:].tolist()), "validation": sorted(order[:validation].tolist())}
