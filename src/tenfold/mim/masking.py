"""GreenMIM masking: random masks over mask units, the squares of the final-stage patch.

Paper: Huang et al., "Green Hierarchical Vision Transformer for Masked Image Modeling", NeurIPS 2022
(arXiv 2205.13515); official code LayneH/GreenMIM at commit b981012 (``modeling/green_swin_models.py``,
``random_masking``). A unit is ``patch_size * 2**(stages - 1)`` pixels (32 px for Swin with 4-px patches and four
stages), so that every 2x2 token neighbourhood of every stage is entirely visible or entirely masked. One mask for
the whole batch (official) or one per sample (option).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["UnitMask", "kept_units", "mask_from_noise", "random_unit_mask", "units_to_tokens"]


class UnitMask(NamedTuple):
    """A random mask over mask units (raster order of the unit grid).

    Attributes:
        mask: (B, L) float, 1 = removed (masked), 0 = kept (visible), as MAE/GreenMIM return it.
        ids_restore: (B, L) long, the inverse of the noise sort (used by the official decoder's unshuffle).
        ids_shuffle: (B, L) long, units sorted by noise (the first ``len_keep`` are kept).
    """

    mask: Tensor
    ids_restore: Tensor
    ids_shuffle: Tensor


def _largest_ratio(num_units: int) -> float:
    """The largest 4-decimal ratio r that keeps a unit: ``int(L * (1 - r)) >= 1`` holds iff ``r <= 1 - 1/L``."""
    r = math.floor((1 - 1 / num_units) * 1e4) / 1e4
    while int(num_units * (1 - r)) < 1:  # float rounding at the boundary
        r -= 1e-4
    return round(r, 4)


def _smallest_ratio(num_units: int) -> float:
    """The smallest 4-decimal ratio r that masks a unit: ``int(L * (1 - r)) < L`` holds for any r > 0 up to rounding."""
    r = 1e-4
    while int(num_units * (1 - r)) >= num_units:
        r += 1e-4
    return round(r, 4)


def kept_units(num_units: int, mask_ratio: float) -> int:
    """Number of units a ratio keeps visible, ``int(L * (1 - r))`` (the official truncation), checked.

    Args:
        num_units: L.
        mask_ratio: r, the fraction of units removed.

    Returns:
        The number of visible units, between 1 and L - 1.

    Raises:
        ValueError: the ratio leaves no unit visible or no unit masked (the message gives the admissible bound).
    """
    len_keep = int(num_units * (1 - mask_ratio))  # the official truncation: r=0.75 keeps 12 of 49 units
    if len_keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps int({num_units} * (1 - {mask_ratio})) = {len_keep} of {num_units} mask "
            f"units: nothing would be visible; use a ratio of at most {_largest_ratio(num_units)} "
            f"(r <= 1 - 1/{num_units})"
        )
    if len_keep >= num_units:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps all {num_units} mask units: nothing would be masked (the loss is "
            f"computed on masked units only); use a ratio of at least {_smallest_ratio(num_units)} (any r > 0 "
            f"that survives float rounding masks a unit, as int({num_units} * (1 - r)) truncates)"
        )
    return len_keep


def mask_from_noise(noise: Tensor, mask_ratio: float, batch_size: int) -> UnitMask:
    """Turn noise into a unit mask the way MAE/GreenMIM do: the ``len_keep`` smallest noise values are kept.

    Args:
        noise: (1, L) for one mask shared by the batch (official) or (B, L) for one mask per sample.
        mask_ratio: fraction r of units to remove; ``len_keep = int(L * (1 - r))``.
        batch_size: B; a (1, L) noise is repeated B times.

    Returns:
        The :class:`UnitMask` with (B, L) tensors.

    Raises:
        ValueError: the ratio leaves no unit visible or no unit masked, or the noise shape does not fit.
    """
    if noise.dim() != 2 or noise.shape[0] not in (1, batch_size):
        raise ValueError(f"noise must have shape (1, L) or ({batch_size}, L), got {tuple(noise.shape)}")
    num_units = noise.shape[1]
    len_keep = kept_units(num_units, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask.scatter_(1, ids_shuffle[:, :len_keep], 0.0)
    if noise.shape[0] != batch_size:
        mask, ids_restore, ids_shuffle = (
            t.expand(batch_size, -1).contiguous() for t in (mask, ids_restore, ids_shuffle)
        )
    return UnitMask(mask, ids_restore, ids_shuffle)


def random_unit_mask(
    batch_size: int,
    num_units: int,
    mask_ratio: float,
    *,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> UnitMask:
    """Draw a random mask over ``num_units`` mask units.

    Args:
        batch_size: B.
        num_units: L, the number of mask units (the final-stage grid, e.g. 7x7 = 49 for Swin at 224 px).
        mask_ratio: fraction of units removed (0.75 in the paper).
        per_sample: False: one mask for the whole batch, as the official code does (``torch.rand(1, L)``);
            True: an independent mask per sample (each sample keeps the same number of units).
        generator: optional torch generator (CPU) for reproducible masks.
        device: device of the returned tensors.

    Returns:
        :class:`UnitMask` with (B, L) tensors.

    Raises:
        ValueError: the ratio leaves nothing visible or nothing masked.
    """
    kept_units(num_units, mask_ratio)
    noise = torch.rand(batch_size if per_sample else 1, num_units, generator=generator)
    return mask_from_noise(noise.to(device) if device is not None else noise, mask_ratio, batch_size)


def units_to_tokens(visible_units: Tensor, unit_grid: tuple[int, int], token_grid: tuple[int, int]) -> Tensor:
    """Upsample a unit visibility map to a token grid (nearest, ``up`` x ``up`` tokens per unit).

    Args:
        visible_units: (S, Mh*Mw) bool, True = visible.
        unit_grid: (Mh, Mw).
        token_grid: (H, W), multiples of (Mh, Mw) by the same factor.

    Returns:
        (S, H*W) bool visibility of the tokens, raster order.
    """
    (mh, mw), (h, w) = unit_grid, token_grid
    if h % mh or w % mw or h // mh != w // mw:
        raise ValueError(f"token grid {token_grid} is not a square-factor upsampling of the unit grid {unit_grid}")
    up = h // mh
    s = visible_units.shape[0]
    return visible_units.view(s, mh, 1, mw, 1).expand(s, mh, up, mw, up).reshape(s, h * w)
