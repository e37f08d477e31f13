"""The data: Lotka-Volterra series, their HDF5 file, splits, LLMTIME text and training windows.

simulate (scipy's solve_ivp, Rosenzweig-MacArthur or classical), io (load with validation, write),
splits (seeded train/validation indices), text (encode/decode `0.68,0.75;0.53,0.56;...`), encodings
(digits, bins, continuous: the value bins and their arithmetic),
windows (token windows for training, prompts for evaluation), baselines (persistence, ODE fit), and
files (atomic writes, used by every package that writes a file). Imports nothing else of the project.
`simulate` (with `ensure_data`, the default file simulated when missing) is not imported here, so
that `python -m data.simulate` runs it fresh.
"""

from .io import DEFAULT_PATH, DataError, Series, load_series, write_series
from .splits import make_splits
from .text import DecodeReport, decode, encode, scale_for, step_pattern
from .windows import make_windows, prompt

__all__ = ["DEFAULT_PATH", "DataError", "Series", "load_series", "write_series", "make_splits",
           "DecodeReport", "decode", "encode", "scale_for", "step_pattern", "make_windows", "prompt"]
