"""Procedural multi-object scenes with per-pixel class masks (semantic segmentation)."""

from __future__ import annotations

import torch
from torch import Tensor

from tenfold.data.synthetic.prototypes import class_prototypes
from tenfold.data.synthetic.render import _background, _chunks, _draw_layer, _finish, _make_layer
from tenfold.data.synthetic.seeding import (
    _KIND_SEGMENTATION,
    _check_difficulty,
    _check_image_args,
    _check_int,
    _generator,
    _uniform,
)


def make_segmentation(
    n: int,
    num_classes: int = 10,
    *,
    seed: int = 0,
    split: str = "train",
    image_size: int = 32,
    difficulty: float = 1.0,
    max_objects: int = 3,
) -> tuple[Tensor, Tensor]:
    """Procedural scenes with 1 to ``max_objects`` labelled objects and a per-pixel class mask.

    The classes are those of :func:`make_classification` with the same ``seed`` and ``num_classes``. Objects are
    placed independently and may occlude each other (later objects on top); every object is labelled, there
    are no distractors, and the background carries the same clutter and noise as the classification scenes.

    Mask convention: ``0`` is background; ``k + 1`` is object class ``k`` (so mask values lie in
    ``[0, num_classes]``). A pixel takes the class of the topmost object whose anti-aliased coverage is at least
    one half.

    Args:
        n: Number of images (>= 1).
        num_classes: Number of object classes, 2 to 100 (the mask has ``num_classes + 1`` values).
        seed: Task seed.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Image side S in pixels, 16 to 1024.
        difficulty: Nuisance strength in [0, 3]; 0 gives a flat grey (128) background and no noise.
        max_objects: Largest number of objects per image, 1 to 8.

    Returns:
        images: (n, 3, S, S) uint8.
        masks: (n, S, S) int64 in [0, num_classes].

    Raises:
        ValueError: On an unknown split or an out-of-range argument.
    """
    split_code = _check_image_args(n, num_classes, split, image_size, 16)
    _check_int("max_objects", max_objects, 1, 8)
    d = _check_difficulty(difficulty)
    protos = class_prototypes(num_classes, seed=seed)
    g = _generator(seed, _KIND_SEGMENTATION, split_code, num_classes, image_size)
    s = float(image_size)
    count = torch.randint(1, max_objects + 1, (n,), generator=g)
    layers = [
        _make_layer(
            torch.randint(num_classes, (n,), generator=g),
            _uniform(n, 0.2, 0.8, g) * s,
            _uniform(n, 0.2, 0.8, g) * s,
            _uniform(n, 0.14, 0.24, g) * s,
            d,
            g,
            present=count > j,
        )
        for j in range(max_objects)
    ]
    images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    masks = torch.zeros((n, image_size, image_size), dtype=torch.int64)
    for lo, hi in _chunks(n, image_size):
        canvas = _background(hi - lo, image_size, d, g)
        mask = masks[lo:hi]
        for layer in layers:
            part = layer.chunk(lo, hi)
            if part is None:
                continue
            cover = _draw_layer(canvas, part, protos) >= 0.5
            value = (part.cls + 1).view(-1, 1, 1)
            if part.idx is None:
                mask.copy_(torch.where(cover, value, mask))
            else:
                mask[part.idx] = torch.where(cover, value, mask[part.idx])
        images[lo:hi] = _finish(canvas, d, g)
    return images, masks
