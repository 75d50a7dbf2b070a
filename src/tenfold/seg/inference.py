"""Whole-image and sliding-window inference with optional horizontal-flip averaging.

Both take ``predict``: a function from images (N, 3, h, w) to logits (N, C, h, w) at the same resolution, e.g.
:meth:`tenfold.seg.models.DeepLabV3.predict`. Sliding windows follow mmseg's ``slide_inference`` grid: windows of
``window`` pixels every ``stride`` pixels, the last row/column moved back to end at the border, windows clipped to
the image when it is smaller than a window; overlapping logits are averaged. The windows of all images are run
through ``predict`` as batches of up to ``max_batch`` crops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["inference", "slide_inference", "whole_inference", "window_grid"]

Predict = Callable[[Tensor], Tensor]


def _predict_flip(predict: Predict, images: Tensor, flip: bool) -> Tensor:
    logits = predict(images)
    if flip:
        logits = (logits + predict(images.flip(-1)).flip(-1)) / 2
    return logits


def whole_inference(predict: Predict, images: Tensor, flip: bool = False) -> Tensor:
    """Logits (B, C, H, W) of the whole images (B, 3, H, W); with ``flip``, averaged with the mirrored prediction."""
    return _predict_flip(predict, images, flip)


def window_grid(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Start and end of the windows along one axis of ``size`` pixels (mmseg's grid, clipped to the image)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    count = max(size - window + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + window, size)
        spans.append((max(end - window, 0), end))
    return spans


def slide_inference(
    predict: Predict,
    images: Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    flip: bool = False,
    max_batch: int = 8,
) -> Tensor:
    """Logits (B, C, H, W) of images (B, 3, H, W) averaged over overlapping windows.

    Args:
        predict: images -> logits at the same resolution.
        images: (B, 3, H, W).
        window: (height, width) of a window.
        stride: (vertical, horizontal) step between windows.
        flip: also predict each window mirrored and average the two.
        max_batch: crops per call of ``predict`` (memory bound; all windows of all images are batched).

    Raises:
        ValueError: a window or stride below 1.
    """
    b, _, h, w = images.shape
    rows = window_grid(h, window[0], stride[0])
    cols = window_grid(w, window[1], stride[1])
    boxes = [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
    # windows at the border are shorter only when the image is smaller than a window: then all have one shape
    crops = torch.cat([images[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes])  # (n_windows * B, 3, wh, ww)
    outputs = torch.cat(
        [_predict_flip(predict, chunk, flip) for chunk in crops.split(max(1, max_batch))]
    )  # (n_windows * B, C, wh, ww)
    logits = images.new_zeros((b, outputs.shape[1], h, w), dtype=outputs.dtype)
    count = images.new_zeros((1, 1, h, w), dtype=outputs.dtype)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        logits[:, :, y0:y1, x0:x1] += outputs[k * b : (k + 1) * b]
        count[:, :, y0:y1, x0:x1] += 1
    return logits / count


def inference(
    predict: Predict,
    images: Tensor,
    mode: str = "whole",
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    flip: bool = False,
    max_batch: int = 8,
) -> Tensor:
    """:func:`whole_inference` (``mode="whole"``) or :func:`slide_inference` (``mode="slide"``).

    Raises:
        ValueError: an unknown mode, or ``slide`` without a window and stride.
    """
    if mode == "whole":
        return whole_inference(predict, images, flip)
    if mode == "slide":
        if window is None or stride is None:
            raise ValueError("sliding-window inference needs eval_window and eval_stride")
        return slide_inference(predict, images, tuple(window), tuple(stride), flip, max_batch)
    raise ValueError(f"eval_mode must be 'whole' or 'slide', got {mode!r}")
