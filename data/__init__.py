"""The data: Lotka-Volterra series, their HDF5 file, splits, LLMTIME text and training windows.

simulate (scipy's solve_ivp, Rosenzweig-MacArthur or classical), io (load with validation, write),
splits (seeded train/validation indices), text (encode/decode `0.68,0.75;0.53,0.56;...`),
windows (token windows for training, prompts for evaluation). Imports nothing else of the project.
"""

from .io import DEFAULT_PATH, DataError, Series, ensure_data, load_series, write_series
from .splits import make_splits
from .text import DecodeReport, decode, encode, scale_for, step_pattern
from .windows import make_windows, prompt_and_target

__all__ = ["DEFAULT_PATH", "DataError", "Series", "ensure_data", "load_series", "write_series", "make_splits",
           "DecodeReport", "decode", "encode", "scale_for", "step_pattern", "make_windows", "prompt_and_target"]
