"""Unlabelled images for masked-image-modeling demos and tests: smooth synthetic images or the built-in scenes.

Real pre-training data (ImageNet) goes through :class:`tenfold.data.datamodules.ClassificationData` with
``dataset: imagefolder``; labels are simply ignored by the pre-training task.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from tenfold.data.datamodules import _BUILTIN_CACHE, ClassificationData

__all__ = ["MIMImageData", "make_gradient_images"]


def make_gradient_images(n: int, image_size: int = 96, *, seed: int = 0, noise_std: float = 0.05) -> Tensor:
    """Smooth synthetic images: a per-image colour plus a per-image linear gradient plus Gaussian noise.

    ``x[c, i, j] = a_c + gx_c * u_j + gy_c * v_i + noise`` with ``u, v`` in [-1, 1] across the image,
    ``a ~ N(0, 0.8^2)``, ``gx, gy ~ N(0, 0.9^2)`` per image and channel, noise ``N(0, noise_std^2)``; so
    ``E[x^2]`` is about 1.18 (the MSE of predicting 0), and the masked units are predictable from the visible ones
    (the setting of the spec's small CPU demonstration). Already normalised (mean 0).

    Args:
        n: number of images.
        image_size: side S in pixels.
        seed: generator seed.
        noise_std: pixel noise standard deviation.

    Returns:
        (n, 3, S, S) float32.
    """
    if n < 1 or image_size < 2:
        raise ValueError(f"need n >= 1 and image_size >= 2, got n={n}, image_size={image_size}")
    g = torch.Generator().manual_seed(seed)
    colour = 0.8 * torch.randn(n, 3, 1, 1, generator=g)
    gx, gy = (0.9 * torch.randn(n, 3, 1, 1, generator=g) for _ in range(2))
    ramp = torch.linspace(-1, 1, image_size)
    images = colour + gx * ramp.view(1, 1, 1, -1) + gy * ramp.view(1, 1, -1, 1)
    return images + noise_std * torch.randn(n, 3, image_size, image_size, generator=g)


class _FloatImages(Dataset):
    """Items ``(image, 0)`` of a float tensor of images (the label is a placeholder)."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], 0


_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}


class MIMImageData(ClassificationData):
    """Images without labels for GreenMIM pre-training on the CPU.

    Args:
        source: ``gradients`` (:func:`make_gradient_images`, already normalised) or ``builtin`` (the built-in
            classification scenes, normalised with mean 0.5 and std 0.25; labels ignored).
        image_size: side in pixels (a multiple of the model's mask unit).
        train_size: training images.
        val_size: validation images.
        batch_size: images per step.
        eval_batch_size: images per validation step (default: ``batch_size``).
        data_seed: seed of the generated images.
        shuffle_seed: seed of the per-epoch order.

    Batches are ``(images, labels)`` like :class:`~tenfold.data.datamodules.ClassificationData`, whose seeded,
    resumable, rank-sharded loaders this reuses.
    """

    def __init__(
        self,
        source: Literal["gradients", "builtin"] = "gradients",
        image_size: int = 96,
        train_size: int = 2048,
        val_size: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        data_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        if source not in ("gradients", "builtin"):
            raise ValueError(f"source must be 'gradients' or 'builtin', got {source!r}")
        super().__init__(
            dataset="builtin",
            image_size=image_size,
            train_size=train_size,
            val_size=val_size,
            test_size=val_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            augment="none",
            data_seed=data_seed,
            shuffle_seed=shuffle_seed,
        )
        self.source = source
        # kept here, not read from hparams: Lightning records the subclass's own arguments there
        self._sizes = {"train": train_size, "val": val_size, "test": val_size}
        self._data_seed = data_seed
        self.hparams["test_size"] = val_size  # read by the parent's built-in scenes
        if source == "gradients":
            self.register_mean_std((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def _build(self, split: str) -> Dataset:
        if self.source == "builtin":
            return super()._build(split)
        size = self._sizes[split]
        key = ("gradients", split, size, self._data_seed, self.image_size)
        if key not in _BUILTIN_CACHE:
            seed = self._data_seed * 10 + _SPLIT_SEED[split]
            _BUILTIN_CACHE[key] = _FloatImages(make_gradient_images(size, self.image_size, seed=seed))  # type: ignore[index]
        return _BUILTIN_CACHE[key]  # type: ignore[index]
