"""Batch-level image augmentation that is deterministic per sample and epoch.

Augmentation runs on the device, on whole batches, after transfer. Its randomness comes from tables drawn once per
epoch from ``seed + epoch`` and indexed by sample id, not from the global RNG. The augmentation of a sample then does
not depend on batch composition, number of processes, data-loader workers or prefetching, which is what makes an
interrupted-and-resumed run and a multi-process run reproduce a single uninterrupted run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CropFlip"]


class CropFlip:
    """Random crop after zero padding, and random horizontal flip (the CIFAR recipe), vectorised.

    Args:
        num_samples: dataset size (the per-epoch tables have one entry per sample).
        padding: pixels of zero padding on each side before cropping back to the input size.
        flip: also flip horizontally with probability 1/2.
        seed: base seed; epoch ``e`` draws its tables from ``seed + e``.
    """

    def __init__(self, num_samples: int, padding: int = 4, flip: bool = True, seed: int = 0) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.num_samples = num_samples
        self.padding = padding
        self.flip = flip
        self.seed = seed
        self._epoch: int | None = None
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def _tables_for(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._epoch != epoch or self._tables is None:
            generator = torch.Generator().manual_seed(10_007 * (self.seed + 1) + epoch)
            offsets = torch.randint(0, 2 * self.padding + 1, (self.num_samples, 2), generator=generator)
            flips = torch.rand(self.num_samples, generator=generator) < 0.5
            self._epoch, self._tables = epoch, (offsets, flips)
        return self._tables

    def __call__(self, images: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Augment a batch.

        Args:
            images: (B, C, H, W) float images.
            index: (B,) dataset index of each image.
            epoch: the training epoch.

        Returns:
            (B, C, H, W) augmented images on the same device.
        """
        offsets, flips = self._tables_for(epoch)
        index = index.cpu()
        offsets, flips = offsets[index].to(images.device), flips[index].to(images.device)
        b, _, h, w = images.shape
        p = self.padding
        if p:
            padded = F.pad(images, (p, p, p, p))
            rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (B, H)
            cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (B, W)
            batch = torch.arange(b, device=images.device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip:
            images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        return images.contiguous()
