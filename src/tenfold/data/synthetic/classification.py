"""Procedural object-classification scenes, and in-memory map-style datasets of labelled images."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from tenfold.data.synthetic.prototypes import SHAPE_NAMES, TEXTURE_NAMES, class_prototypes
from tenfold.data.synthetic.render import _background, _chunks, _draw_layer, _finish, _make_layer
from tenfold.data.synthetic.seeding import (
    _KIND_CLASSIFICATION,
    _check_difficulty,
    _check_image_args,
    _generator,
    _uniform,
)

# Nuisance ranges at difficulty 1. Tuned on 10 classes (5000 train / 1000 val images, AdamW, cosine schedule):
# a 3-conv CNN with 24k parameters reaches 33 % after 3 epochs, 50 % after 8 and 74 % after 30 (45 s on 2 CPU
# cores), while a 7-conv CNN with 1.7M parameters and flip/crop augmentation reaches 93 % after 12 epochs.
# The ranges below and those in render.py and prototypes.py were tuned together.
_MAIN_RADIUS = (0.13, 0.26)  # main object radius, fraction of the image side
_DISTRACTOR_SCALE = (0.5, 0.85)  # distractor radius, relative to the main object
_DISTRACTOR_OPACITY = (0.5, 0.9)
_SECOND_DISTRACTOR_P = 0.7  # probability of a second distractor


def make_classification(
    n: int,
    num_classes: int = 10,
    *,
    seed: int = 0,
    split: str = "train",
    image_size: int = 32,
    difficulty: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Procedural object-classification scenes, CIFAR-sized by default.

    Each class is a distinct combination of a shape, a hue and a texture (see :func:`class_prototypes`); classes
    share factor levels, so a model must combine factors. Each image shows one large object of its class with
    random position, scale, rotation and colour jitter, over a cluttered background (smooth colour noise and a
    random grating) with one or two smaller, fainter distractor objects of other classes behind it, then global
    brightness/contrast jitter and Gaussian pixel noise.

    Args:
        n: Number of images (>= 1).
        num_classes: Number of classes, 2 to 100.
        seed: Task seed: defines what each class looks like.
        split: ``"train"``, ``"val"`` or ``"test"``: which sample stream of the task.
        image_size: Image side S in pixels, 16 to 1024.
        difficulty: Nuisance strength in [0, 3]; 0 gives clean objects on flat grey and no distractors.

    Returns:
        images: (n, 3, S, S) uint8.
        labels: (n,) int64 in [0, num_classes); balanced (class counts differ by at most one).

    Raises:
        ValueError: On an unknown split or an out-of-range argument.
    """
    split_code = _check_image_args(n, num_classes, split, image_size, 16)
    d = _check_difficulty(difficulty)
    protos = class_prototypes(num_classes, seed=seed)
    g = _generator(seed, _KIND_CLASSIFICATION, split_code, num_classes, image_size)
    s = float(image_size)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    radius = _uniform(n, *_MAIN_RADIUS, g) * s
    main = _make_layer(labels, _uniform(n, 0.36, 0.64, g) * s, _uniform(n, 0.36, 0.64, g) * s, radius, d, g)
    # Distractors of other classes: one always (when difficulty > 0), a second for some images; smaller,
    # fainter, anywhere in the image, drawn behind the main object so the label is never ambiguous.
    layers = []
    for j in range(2 if d > 0 else 0):
        layers.append(
            _make_layer(
                (labels + torch.randint(1, num_classes, (n,), generator=g)) % num_classes,
                _uniform(n, 0.15, 0.85, g) * s,
                _uniform(n, 0.15, 0.85, g) * s,
                radius * _uniform(n, *_DISTRACTOR_SCALE, g),
                d,
                g,
                opacity=_uniform(n, *_DISTRACTOR_OPACITY, g) * min(1.0, d),
                present=torch.rand(n, generator=g) < (1.0 if j == 0 else _SECOND_DISTRACTOR_P),
            )
        )
    layers.append(main)
    images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    for lo, hi in _chunks(n, image_size):
        canvas = _background(hi - lo, image_size, d, g)
        for layer in layers:
            part = layer.chunk(lo, hi)
            if part is not None:
                _draw_layer(canvas, part, protos)
        images[lo:hi] = _finish(canvas, d, g)
    return images, labels


_HUE_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")


class _TensorImages(Dataset):
    """Map-style dataset over uint8 images held in memory; items are (float32 (3, H, W) in [0, 1], int)."""

    images: Tensor
    labels: Tensor
    transform: Callable | None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index].float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        """Labels as a list of ints, as torchvision datasets expose them."""
        return self.labels.tolist()


class BuiltinClassification(_TensorImages):
    """Procedural classification scenes (:func:`make_classification`) as a map-style dataset.

    All ``size`` images are generated once, at construction (about 50,000 32x32 images per few seconds).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_classes: Number of classes, 2 to 100.
        size: Number of images in this split.
        seed: Task seed (what the classes look like).
        image_size: Image side in pixels.
        transform: Optional callable applied to each float32 (3, H, W) image in [0, 1].
        difficulty: Nuisance strength in [0, 3].

    Items are ``(image, label)``: a float32 (3, H, W) tensor in [0, 1] (after ``transform``) and an int.
    """

    def __init__(
        self,
        split: str = "train",
        num_classes: int = 10,
        size: int = 5000,
        seed: int = 0,
        image_size: int = 32,
        transform: Callable | None = None,
        difficulty: float = 1.0,
    ) -> None:
        self.images, self.labels = make_classification(
            size, num_classes, seed=seed, split=split, image_size=image_size, difficulty=difficulty
        )
        self.transform = transform
        self.num_classes = num_classes
        protos = class_prototypes(num_classes, seed=seed)
        hue_name = [_HUE_NAMES[int(h)] for h in (protos.hue * len(_HUE_NAMES)).round().long() % len(_HUE_NAMES)]
        self.classes = [
            f"{hue_name[k]} {TEXTURE_NAMES[int(protos.texture[k])]} {SHAPE_NAMES[int(protos.shape[k])]}"
            for k in range(num_classes)
        ]
