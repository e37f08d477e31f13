"""LLMTIME-style text: scale, round, and write `prey,predator` pairs joined by `;`; and read it back.

    values (T, 2) / alpha  ->  "0.68,0.75;0.53,0.56;..."      (encode)
    "0.68,0.75;0.53,0.5"  ->  values (steps, 2) * alpha        (decode, never raises)

alpha = max(split) / 9.9 over both species of the split, so every scaled value is below 10 and
has exactly one digit before the point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

TOP = 9.9  # the largest scaled value: one digit before the point
NUMBER = re.compile(r"^\d+(\.\d*)?$")


DIGITS = "0123456789"


def step_pattern(decimals: int = 2) -> list[str]:
    """The characters allowed at each position of one encoded time step, e.g. for 2 decimals
    D . D D , D . D D ;  (D a digit): a fixed-length grammar, so every generated step parses.
    One digit before the point, since scaled values stay below 10."""
    value = [DIGITS, "."] + [DIGITS] * decimals
    return value + [","] + value + [";"]


def scale_for(trajectories: np.ndarray) -> float:
    """alpha for a split: its maximum over both species, divided by 9.9."""
    top = float(np.max(trajectories))
    return top / TOP if top > 0 else 1.0


def encode(values: np.ndarray, alpha: float = 1.0, decimals: int = 2) -> str:
    """(T, 2) populations -> "x,y;x,y;..." after dividing by alpha and rounding to `decimals`."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError(f"expected values of shape (T, 2), got {values.shape}")
    scaled = values / alpha
    return ";".join(f"{x:.{decimals}f},{y:.{decimals}f}" for x, y in scaled)


@dataclass
class DecodeReport:
    """What decoding met: steps kept, steps skipped, values repaired (a second '.' cut off)."""

    recovered: int = 0
    skipped: int = 0
    repaired: int = 0


def _split_values(part: str, decimals: int | None, report: DecodeReport) -> list[str]:
    """One comma-separated value, repaired when it holds a second '.': with `decimals` known, "0.750.53"
    (a lost separator) splits into "0.75" and "0.53"; otherwise what follows the second dot is cut."""
    if part.count(".") <= 1:
        return [part]
    report.repaired += 1
    if decimals is not None:
        pieces = re.findall(rf"\d+\.\d{{{decimals}}}", part)
        if "".join(pieces) == part:
            return pieces
    first = part.index(".")
    return [part[: part.index(".", first + 1)]]


def decode(text: str, alpha: float = 1.0, decimals: int | None = None) -> tuple[np.ndarray, DecodeReport]:
    """Generated text -> (steps, 2) populations in original units (times alpha), and a report. Never raises.

    Empty segments (";;", a leading or trailing ";") and empty values (",," ) are ignored; a segment of
    2k values (a ";" written as ",") gives k steps; a value with two dots is split or cut (see
    `_split_values`); a segment with an odd count of values or a non-number is skipped.
    With `decimals` given, a last step that is not followed by ";" and has fewer decimals than
    expected is taken as truncated and skipped.
    """
    report = DecodeReport()
    steps: list[tuple[float, float]] = []
    segments = text.split(";")
    for i, segment in enumerate(segments):
        parts = [v for p in segment.split(",") if p.strip() for v in _split_values(p.strip(), decimals, report)]
        if not parts:
            continue
        last_unterminated = i == len(segments) - 1
        if last_unterminated and decimals is not None and (len(parts) % 2 or not _has_decimals(parts[-1], decimals)):
            report.skipped += 1
            continue
        numbers = [float(p) if NUMBER.match(p) else None for p in parts]
        if len(numbers) % 2 or any(n is None for n in numbers):
            report.skipped += 1
            continue
        steps.extend(zip(numbers[0::2], numbers[1::2]))
    report.recovered = len(steps)
    values = np.array(steps, dtype=np.float64).reshape(-1, 2) * alpha
    return values, report


def _has_decimals(number: str, decimals: int) -> bool:
    return "." in number and len(number.split(".")[1]) >= decimals
