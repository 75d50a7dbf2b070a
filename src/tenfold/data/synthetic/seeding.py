"""Seeds, sample streams and argument checks shared by every synthetic generator.

A generator's sample stream is seeded from ``(seed, generator kind, split, ...)`` through a fixed integer mix
(SplitMix64), not through Python's randomised ``hash``, so it is the same in every process and on every machine.
A local :class:`torch.Generator` drives all randomness; the global RNG is never touched.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Names of the sample streams every generator accepts."""

# Generator kinds and purposes mixed into derived seeds. Fixed integers: changing one changes the data.
_KIND_CLASSIFICATION = 1
_KIND_SEGMENTATION = 2
_KIND_HOI = 3
_KIND_SPEECH = 4
_KIND_DIGITS = 5
_PURPOSE_TASK = 0
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed; deterministic across processes (unlike ``hash``)."""
    h = 0x5EED
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def _generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derive_seed(*parts))
    return g


def _check_split(split: str) -> int:
    if split not in _SPLIT_CODES:
        raise ValueError(f"split={split!r} is not a known split; expected one of {list(SPLITS)}")
    return _SPLIT_CODES[split]


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an int")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value} is out of range; expected an int {expected}")


def _check_difficulty(difficulty: float) -> float:
    if not (isinstance(difficulty, int | float) and 0.0 <= float(difficulty) <= 3.0):
        raise ValueError(f"difficulty={difficulty!r} is out of range; expected a float in [0, 3]")
    return float(difficulty)


def _uniform(shape: tuple[int, ...] | int, low: float, high: float, gen: torch.Generator) -> Tensor:
    if isinstance(shape, int):
        shape = (shape,)
    return torch.rand(shape, generator=gen) * (high - low) + low


def _check_image_args(n: int, num_classes: int, split: str, image_size: int, min_size: int) -> int:
    _check_int("n", n, 1)
    _check_int("num_classes", num_classes, 2, 100)
    _check_int("image_size", image_size, min_size, 1024)
    return _check_split(split)
