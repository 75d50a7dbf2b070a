"""scikit-learn's bundled handwritten digits, split and resized like the synthetic classification scenes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tenfold.data.synthetic.classification import _TensorImages
from tenfold.data.synthetic.seeding import _KIND_DIGITS, _check_int, _check_split, _generator

_DIGITS_FRACTIONS = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


def load_digits(split: str = "train", *, seed: int = 0, image_size: int = 32) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled handwritten digits (1797 images, 8x8 grey, 10 classes) as CIFAR-like tensors.

    The split is stratified and seeded: within each class, a permutation drawn from ``seed`` assigns the first
    70 % of the images to ``"train"``, the next 15 % to ``"val"`` and the rest to ``"test"``, so the three splits
    are disjoint and together cover the set. Images are upsampled bilinearly and repeated over three channels.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: Seed of the split permutation (the images themselves are fixed).
        image_size: Output side S in pixels, 8 to 1024.

    Returns:
        images: (N, 3, S, S) uint8, N about 1258 / 270 / 269 for train / val / test, in dataset order.
        labels: (N,) int64 in [0, 10).

    Raises:
        ValueError: On an unknown split or an out-of-range image size.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    _check_split(split)
    _check_int("image_size", image_size, 8, 1024)
    data = sk_load_digits()
    pixels = torch.from_numpy(data.images).float() / 16.0  # values 0..16 in the bundled set
    labels = torch.from_numpy(data.target).long()
    g = _generator(seed, _KIND_DIGITS)
    start, stop = _DIGITS_FRACTIONS[split]
    keep = []
    for c in range(10):  # a loop over the ten classes, for a stratified split
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(members.numel(), generator=g)]
        m = members.numel()
        keep.append(members[round(start * m) : round(stop * m)])
    idx = torch.cat(keep).sort().values
    images = F.interpolate(
        pixels[idx].unsqueeze(1), size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    images = images.clamp(0, 1).mul(255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, labels[idx]


class DigitsClassification(_TensorImages):
    """scikit-learn's bundled digits (:func:`load_digits`) as a map-style dataset.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: Seed of the stratified split.
        image_size: Image side in pixels.
        transform: Optional callable applied to each float32 (3, H, W) image in [0, 1].

    Items are ``(image, label)``: a float32 (3, H, W) tensor in [0, 1] (after ``transform``) and an int.
    """

    def __init__(
        self, split: str = "train", seed: int = 0, image_size: int = 32, transform: Callable | None = None
    ) -> None:
        self.images, self.labels = load_digits(split, seed=seed, image_size=image_size)
        self.transform = transform
        self.num_classes = 10
        self.classes = [str(k) for k in range(10)]
