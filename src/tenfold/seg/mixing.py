"""Batch augmentations of semi-supervised segmentation (ReCo/PRCL ``batch_transform`` and ``generate_unsup_data``).

All functions take UN-normalised float RGB images in [0, 1] (B, 3, H, W), int64 labels (B, H, W) with
``ignore_index`` for ignored pixels and float confidences (B, H, W), and return the transformed triple. Every random
draw comes from the ``generator`` argument (the global torch RNG when None), image by image in batch order, so a
run is reproducible from the generator's seed. Official behaviour (PRCL spec 2.8, pitfall 10):

- :func:`rescale_crop`: per image a scale ``U(low, high)``, resize (image bilinear, label and confidence nearest),
  pad at the bottom/right up to the crop (image reflect, label ignore, confidence 0), then a random crop.
- :func:`generate_mix`: ClassMix keeps ``floor(n/2)`` of the ``n`` unique label values of image ``i`` (the ignore
  value counts as a value, as the official ``torch.unique`` on labels with -1) and fills the rest from image
  ``(i + 1) % B``; with a single value nothing is kept and the result is the partner image. CutMix pastes the
  partner outside a box of half the image area; CutOut zeroes image and confidence in such a box and ignores its
  labels.
- :func:`strong_augment`: colour jitter with probability 0.8 (brightness, contrast, saturation in (0.75, 1.25), hue
  in (-0.25, 0.25), applied in a random order as torchvision's ``ColorJitter``), Gaussian blur with probability 0.5
  (sigma ``U(0.15, 1.15)``), horizontal flip with probability 0.5, and the confidence quantised to
  ``floor(c * 255) / 255`` (the official PIL uint8 round trip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = ["generate_mix", "normalize", "rescale_crop", "strong_augment"]


def _check(images: Tensor, labels: Tensor, confidence: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if tuple(labels.shape) != (b, h, w) or tuple(confidence.shape) != (b, h, w):
        raise ValueError(
            f"labels {tuple(labels.shape)} and confidence {tuple(confidence.shape)} must be (B, H, W) = {(b, h, w)}"
        )


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + float(torch.rand((), generator=generator)) * (high - low)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator))


def _reflect_pad(x: Tensor, pad_w: int, pad_h: int) -> Tensor:
    """Reflect-pad (C, H, W) at the bottom/right, repeating the reflection for pads longer than the image (numpy)."""
    while pad_w > 0 or pad_h > 0:
        step_w, step_h = min(pad_w, x.shape[-1] - 1), min(pad_h, x.shape[-2] - 1)
        if step_w <= 0 and step_h <= 0:  # a 1-pixel image: reflection is replication
            return F.pad(x[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
        x = F.pad(x[None], (0, max(step_w, 0), 0, max(step_h, 0)), mode="reflect")[0]
        pad_w, pad_h = pad_w - max(step_w, 0), pad_h - max(step_h, 0)
    return x


def rescale_crop(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    scale_range: Sequence[float],
    crop_size: Sequence[int],
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random rescale, pad and random crop of every image of a batch (official ``batch_transform`` geometry).

    Args:
        images: float (B, 3, H, W) in [0, 1].
        labels: int64 (B, H, W).
        confidence: float (B, H, W).
        scale_range: (low, high) of the per-image scale factor.
        crop_size: output (height, width).
        generator: source of the random draws.
        ignore_index: label of padded pixels.

    Returns:
        images (B, 3, h, w), labels (B, h, w), confidence (B, h, w) at the crop size.

    Raises:
        ValueError: mismatched shapes, a bad range or crop size.
    """
    _check(images, labels, confidence)
    low, high = float(scale_range[0]), float(scale_range[1])
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {tuple(scale_range)}")
    if len(crop_size) != 2 or min(crop_size) < 1:
        raise ValueError(f"crop_size must be (height, width) >= 1, got {tuple(crop_size)}")
    ch, cw = int(crop_size[0]), int(crop_size[1])
    h0, w0 = images.shape[-2:]
    out_x, out_y, out_c = [], [], []
    for i in range(images.shape[0]):
        x, y, c = images[i], labels[i], confidence[i]
        scale = _uniform(low, high, generator)
        size = (int(h0 * scale), int(w0 * scale))  # official: int() truncation
        if size != (h0, w0):
            size = (max(size[0], 1), max(size[1], 1))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
            y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
            c = F.interpolate(c[None, None], size=size, mode="nearest")[0, 0]
        pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
        if pad_h or pad_w:
            x = _reflect_pad(x, pad_w, pad_h)
            y = F.pad(y, (0, pad_w, 0, pad_h), value=ignore_index)
            c = F.pad(c, (0, pad_w, 0, pad_h), value=0.0)
        h, w = y.shape
        top, left = _randint(0, h - ch + 1, generator), _randint(0, w - cw + 1, generator)
        out_x.append(x[:, top : top + ch, left : left + cw])
        out_y.append(y[top : top + ch, left : left + cw])
        out_c.append(c[top : top + ch, left : left + cw])
    return torch.stack(out_x), torch.stack(out_y), torch.stack(out_c)


def _box_mask(h: int, w: int, generator: torch.Generator | None, ratio: float = 2.0) -> Tensor:
    """1 outside, 0 inside a random box of area ``h * w / ratio`` (official ``generate_cutout_mask``)."""
    area = h * w / ratio
    low = int(w / ratio + 1)
    box_w = _randint(low, w, generator) if low < w else w
    box_h = min(int(round(area / box_w)), h)
    x0 = _randint(0, w - box_w + 1, generator)
    y0 = _randint(0, h - box_h + 1, generator)
    mask = torch.ones(h, w)
    mask[y0 : y0 + box_h, x0 : x0 + box_w] = 0
    return mask


def generate_mix(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    mode: Literal["classmix", "cutmix", "cutout"] = "classmix",
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mix every image with its partner ``(i + 1) % B`` (ClassMix, CutMix) or cut a box out of it (CutOut).

    Args:
        images: float (B, 3, H, W).
        labels: int64 (B, H, W) pseudo-labels (``ignore_index`` counts as one value in ClassMix, as official).
        confidence: float (B, H, W).
        mode: ``classmix``, ``cutmix`` or ``cutout``.
        generator: source of the random draws.
        ignore_index: label of cut-out pixels.

    Returns:
        The mixed images, labels and confidences (new tensors).

    Raises:
        ValueError: an unknown mode or mismatched shapes.
    """
    if mode not in ("classmix", "cutmix", "cutout"):
        raise ValueError(f"unknown mix mode {mode!r}; expected classmix, cutmix or cutout")
    _check(images, labels, confidence)
    b, _, h, w = images.shape
    out_x, out_y, out_c = [], [], []
    for i in range(b):
        if mode == "cutout":
            keep = _box_mask(h, w, generator).to(images.device)
            out_x.append(images[i] * keep)
            out_y.append(torch.where(keep.bool(), labels[i], torch.full_like(labels[i], ignore_index)))
            out_c.append(confidence[i] * keep)
            continue
        if mode == "cutmix":
            keep = _box_mask(h, w, generator).to(images.device).bool()
        else:
            values = torch.unique(labels[i])
            chosen = values[torch.randperm(len(values), generator=generator)][: len(values) // 2]
            keep = torch.isin(labels[i], chosen.to(labels.device))
        j = (i + 1) % b
        out_x.append(torch.where(keep, images[i], images[j]))
        out_y.append(torch.where(keep, labels[i], labels[j]))
        out_c.append(torch.where(keep, confidence[i], confidence[j]))
    return torch.stack(out_x), torch.stack(out_y), torch.stack(out_c)


def strong_augment(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    generator: torch.Generator | None = None,
    jitter_p: float = 0.8,
    blur_p: float = 0.5,
    flip_p: float = 0.5,
    quantize_confidence: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Colour jitter, Gaussian blur and horizontal flip per image (official ``augmentation=True``).

    Args:
        images: float (B, 3, H, W) in [0, 1].
        labels: int64 (B, H, W) (flipped with their image).
        confidence: float (B, H, W) (flipped; quantised to ``floor(c * 255) / 255`` when ``quantize_confidence``).
        generator: source of the random draws.
        jitter_p: probability of the colour jitter.
        blur_p: probability of the blur.
        flip_p: probability of the flip.
        quantize_confidence: reproduce the official PIL uint8 round trip of the confidences.

    Returns:
        The augmented images, labels and confidences.
    """
    _check(images, labels, confidence)
    out_x, out_y, out_c = [], [], []
    for i in range(images.shape[0]):
        x, y, c = images[i], labels[i], confidence[i]
        if float(torch.rand((), generator=generator)) < jitter_p:
            order = torch.randperm(4, generator=generator).tolist()
            factors = [_uniform(0.75, 1.25, generator) for _ in range(3)] + [_uniform(-0.25, 0.25, generator)]
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            for k in order:
                x = ops[k](x, factors[k])
        if float(torch.rand((), generator=generator)) < blur_p:
            sigma = _uniform(0.15, 1.15, generator)
            kernel = 2 * math.ceil(3 * sigma) + 1
            x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        if float(torch.rand((), generator=generator)) < flip_p:
            x, y, c = x.flip(-1), y.flip(-1), c.flip(-1)
        out_x.append(x.clamp(0.0, 1.0))  # PIL images stay in [0, 255]
        out_y.append(y)
        out_c.append(c)
    conf = torch.stack(out_c)
    if quantize_confidence:
        conf = torch.floor(conf * 255) / 255
    return torch.stack(out_x), torch.stack(out_y), conf


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel of (B, 3, H, W) images."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
