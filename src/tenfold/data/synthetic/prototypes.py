"""Class prototypes: what each object class of a task looks like (shape, colour, texture), fixed by its seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tenfold.data.synthetic.seeding import _PURPOSE_TASK, _check_int, _generator, _uniform

SHAPE_NAMES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "diamond",
    "bar",
    "stripes",
    "star",
    "frame",
)
"""Shape types an object class can take, indexed by shape id."""

# Texture bank: (kind, frequency in cycles per object radius, orientation in radians).
# kind 0 = flat, 1 = sinusoidal grating, 2 = checker, 3 = concentric rings.
_TEXTURES: tuple[tuple[int, float, float], ...] = (
    (0, 0.0, 0.0),
    (1, 1.1, 0.0),
    (1, 1.1, math.pi / 2),
    (1, 1.7, math.pi / 4),
    (1, 1.7, 3 * math.pi / 4),
    (2, 1.0, 0.0),
    (3, 1.4, 0.0),
)
TEXTURE_NAMES: tuple[str, ...] = (
    "flat",
    "grating-0",
    "grating-90",
    "grating-45",
    "grating-135",
    "checker",
    "rings",
)
"""Texture types an object class can take, indexed by texture id."""

_NUM_HUES = 8
_LEVELS_PER_FACTOR = 1.4  # levels per factor (shape, hue, texture) ~ 1.4 * C ** (1/3), so classes share levels
_TEXTURE_CONTRAST = (0.45, 0.6)  # the dark texture phase is the primary colour times this


@dataclass(frozen=True)
class ClassPrototypes:
    """What each object class looks like; fixed by the task seed.

    Attributes:
        shape: (C,) int64 shape id, an index into :data:`SHAPE_NAMES`.
        texture: (C,) int64 texture id, an index into :data:`TEXTURE_NAMES`.
        hue: (C,) float32 hue of the primary colour in [0, 1).
        colour: (C, 3) float32 primary RGB colour in [0, 1].
        colour2: (C, 3) float32 secondary RGB colour in [0, 1] (the dark phase of the texture).
        tex_kind: (C,) int64 texture kind (0 flat, 1 grating, 2 checker, 3 rings).
        tex_freq: (C,) float32 texture frequency in cycles per object radius.
        tex_angle: (C,) float32 texture orientation in radians (object frame).
    """

    shape: Tensor
    texture: Tensor
    hue: Tensor
    colour: Tensor
    colour2: Tensor
    tex_kind: Tensor
    tex_freq: Tensor
    tex_angle: Tensor

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.shape.numel())


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Vectorised HSV to RGB; h, s, v (...,) in [0, 1] -> (..., 3)."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = torch.minimum(k, 4 - k).clamp(0, 1)
    return v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * f)


def class_prototypes(num_classes: int, *, seed: int = 0) -> ClassPrototypes:
    """Draw the class definitions of a task: each class is a distinct (shape, colour, texture) combination.

    Factor levels are shared between classes on purpose (with 10 classes, 3 shapes, 3 hues and 3 textures are
    used, each by 3-4 classes; with 100 classes, 6 of each), so no single factor identifies a class and a model
    has to combine them.

    Args:
        num_classes: Number of classes C, 2 to 100.
        seed: Task seed.

    Returns:
        The :class:`ClassPrototypes` of the task.
    """
    _check_int("num_classes", num_classes, 2, 100)
    c = num_classes
    g = _generator(seed, _PURPOSE_TASK, c)
    levels = max(3, round(_LEVELS_PER_FACTOR * c ** (1 / 3)))
    n_shape = min(len(SHAPE_NAMES), levels)
    n_hue = min(_NUM_HUES, levels)
    n_tex = min(len(_TEXTURES), levels)
    shape_ids = torch.randperm(len(SHAPE_NAMES), generator=g)[:n_shape]
    hue_ids = torch.randperm(_NUM_HUES, generator=g)[:n_hue]
    tex_ids = torch.randperm(len(_TEXTURES), generator=g)[:n_tex]
    # Balanced use of each level, then a greedy pass (a loop over classes) that keeps every triple distinct.
    shape_lvl = (torch.arange(c) % n_shape)[torch.randperm(c, generator=g)].tolist()
    hue_lvl = (torch.arange(c) % n_hue)[torch.randperm(c, generator=g)].tolist()
    tie_break = torch.rand(c, n_hue, n_tex, generator=g).tolist()
    used: set[tuple[int, int, int]] = set()
    tex_count = [0] * n_tex
    tex_lvl: list[int] = []
    for k in range(c):
        hues = [hue_lvl[k]] + sorted(set(range(n_hue)) - {hue_lvl[k]}, key=lambda j, k=k: tie_break[k][j][0])
        done = False
        for hue in hues:
            for t in sorted(range(n_tex), key=lambda t, k=k: (tex_count[t], tie_break[k][0][t])):
                if (shape_lvl[k], hue, t) not in used:
                    used.add((shape_lvl[k], hue, t))
                    hue_lvl[k] = hue
                    tex_lvl.append(t)
                    tex_count[t] += 1
                    done = True
                    break
            if done:
                break
    shape = shape_ids[torch.tensor(shape_lvl)]
    texture = tex_ids[torch.tensor(tex_lvl)]
    # Evenly spaced hues with a per-task offset, so another seed gives other colours.
    hue = (hue_ids[torch.tensor(hue_lvl)].float() / _NUM_HUES + torch.rand(1, generator=g) / _NUM_HUES) % 1.0
    sat = _uniform(c, 0.7, 0.95, g)
    val = _uniform(c, 0.75, 0.95, g)
    colour = _hsv_to_rgb(hue, sat, val)
    colour2 = colour * _uniform((c, 1), *_TEXTURE_CONTRAST, g)
    bank = torch.tensor(_TEXTURES, dtype=torch.float32)[texture]
    return ClassPrototypes(
        shape=shape,
        texture=texture,
        hue=hue,
        colour=colour,
        colour2=colour2,
        tex_kind=bank[:, 0].long(),
        tex_freq=bank[:, 1] * _uniform(c, 0.9, 1.1, g),
        tex_angle=bank[:, 2] + _uniform(c, -0.15, 0.15, g),
    )
