"""The HDF5 file: `/trajectories` float32 (systems, points, 2) with [..., 0] prey and [..., 1] predator,
and `/time` float64 (points,). Loading validates everything and raises one `DataError` per problem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .files import atomic_write

DEFAULT_PATH = Path("data/lotka_volterra_data.h5")


class DataError(ValueError):
    """A data file that is missing or not of the documented format; the message names file and problem."""


@dataclass
class Series:
    path: Path
    trajectories: np.ndarray  # (systems, points, 2) float32: prey, predator
    time: np.ndarray  # (points,) float64

    @property
    def systems(self) -> int:
        return self.trajectories.shape[0]

    @property
    def points(self) -> int:
        return self.trajectories.shape[1]


def load_series(path: str | Path) -> Series:
    """Read and check a series file; any deviation from the format is a DataError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (simulate one with: python -m data.simulate --out {path})")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    try:
        return _read(path)
    except OSError as e:  # a truncated or damaged file
        raise DataError(f"{path}: can't be read as HDF5 ({e})") from None


def _read(path: Path) -> Series:
    with h5py.File(path, "r") as f:
        for key in ("trajectories", "time"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DataError(f"{path}: missing dataset /{key} (expected /trajectories (systems, points, 2) "
                                f"and /time (points,))")
        traj, time = f["trajectories"], f["time"]
        if traj.ndim != 3 or traj.shape[2] != 2:
            raise DataError(f"{path}: /trajectories has shape {traj.shape}, expected (systems, points, 2) "
                            f"with [..., 0] prey and [..., 1] predator")
        if time.ndim != 1:
            raise DataError(f"{path}: /time has shape {time.shape}, expected (points,)")
        if traj.shape[0] == 0:
            raise DataError(f"{path}: /trajectories holds no systems")
        if time.shape[0] != traj.shape[1]:
            raise DataError(f"{path}: /time has {time.shape[0]} points but /trajectories has {traj.shape[1]} per system")
        real = all(np.issubdtype(d, np.number) and not np.issubdtype(d, np.complexfloating) for d in (traj.dtype, time.dtype))
        if not real:
            raise DataError(f"{path}: /trajectories and /time must be real numbers, got {traj.dtype} and {time.dtype}")
        trajectories = np.asarray(traj[()], dtype=np.float32)
        time = np.asarray(time[()], dtype=np.float64)
    if not np.isfinite(trajectories).all():
        bad = np.argwhere(~np.isfinite(trajectories))[0]
        raise DataError(f"{path}: /trajectories has a non-finite value at system {bad[0]}, point {bad[1]}")
    if (trajectories < 0).any():
        bad = np.argwhere(trajectories < 0)[0]
        raise DataError(f"{path}: /trajectories has a negative population {trajectories[tuple(bad)]:.4g} "
                        f"at system {bad[0]}, point {bad[1]} (populations must be >= 0)")
    if not np.isfinite(time).all():
        raise DataError(f"{path}: /time has non-finite values")
    if len(time) > 1 and not (np.diff(time) > 0).all():
        i = int(np.argmax(np.diff(time) <= 0))
        raise DataError(f"{path}: /time must increase from point to point, but point {i + 1} is {time[i + 1]:g} "
                        f"after {time[i]:g}")
    return Series(path, trajectories, time)


def write_series(path: str | Path, trajectories: np.ndarray, time: np.ndarray) -> Path:
    """Write the format atomically (a temporary file renamed into place)."""
    path = Path(path)
    if trajectories.ndim != 3 or trajectories.shape[2] != 2 or time.shape != (trajectories.shape[1],):
        raise DataError(f"{path}: refusing to write trajectories {trajectories.shape} with time {time.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("trajectories", data=trajectories.astype(np.float32))
            f.create_dataset("time", data=time.astype(np.float64))
    atomic_write(path, write)
    return path

