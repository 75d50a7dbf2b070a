"""GreenMIM: masked image modeling for hierarchical ViTs (Swin) on the visible patches only.

Paper: Huang et al., "Green Hierarchical Vision Transformer for Masked Image Modeling", NeurIPS 2022
(arXiv 2205.13515). Official code: LayneH/GreenMIM at commit b981012 (``modeling/green_swin_models.py``,
``modeling/group_window_attention.py``, ``modeling/base_green_models.py``); this file is our own implementation of
that behaviour.

The pieces, in the order data flows through them:

1. :func:`random_unit_mask`: a random mask over *mask units*, squares the size of the final-stage patch (32 px for
   Swin with 4-px patches and four stages), so that every 2x2 token neighbourhood of every stage is entirely visible
   or entirely masked. One mask for the whole batch (official) or one per sample (option).
2. :func:`pack_windows`, :func:`choose_group_size`, :func:`build_grouping`: the visible tokens of a stage fall into
   (shifted) Swin windows holding different numbers of tokens. Windows are packed into equal-size *groups* by a
   greedy 0/1-knapsack (each group filled as full as possible, one after another: not a globally optimal bin
   packing), so that attention runs as one batched matmul per
   group, with a block-diagonal mask between windows and Swin's relative-position bias from the tokens' true
   coordinates. When a stage has few tokens (``N <= 2 ws^2``) one masked attention over all tokens is used instead
   (the official "masking mode").
3. :class:`GroupWindowAttention`, :class:`GreenSwinBlock`, :class:`VisiblePatchMerging`, :class:`GreenSwin`: the Swin
   encoder on visible tokens. Its parameter names are Microsoft Swin's, so its state dict is a standard Swin.
4. :class:`GreenMIM`: the MAE-style decoder (mask tokens, fixed 2-D sin-cos position embedding, one ViT block) and
   the normalised-pixel loss :func:`masked_pixel_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

__all__ = [
    "GreenMIM",
    "GreenMIMOutput",
    "GreenSwin",
    "GreenSwinBlock",
    "GroupWindowAttention",
    "Grouping",
    "UnitMask",
    "VisiblePatchMerging",
    "build_grouping",
    "choose_group_size",
    "grouping_cost",
    "knapsack_fill",
    "mask_from_noise",
    "masked_pixel_loss",
    "pack_windows",
    "patchify",
    "random_unit_mask",
    "sincos_pos_embed_2d",
    "unpatchify",
    "units_to_tokens",
    "window_ids",
]

#: Additive attention-mask value between tokens of different windows (Swin's -100, not -inf).
MASK_VALUE = -100.0

GroupSizeRule = Literal["min_feasible", "search"]


# --------------------------------------------------------------------------------------------------------------
# 1. Masking
# --------------------------------------------------------------------------------------------------------------


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


def _len_keep(num_units: int, mask_ratio: float) -> int:
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
    len_keep = _len_keep(num_units, mask_ratio)
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
    _len_keep(num_units, mask_ratio)
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


# --------------------------------------------------------------------------------------------------------------
# 2. Grouping: greedy packing of windows, group size fixed (official) or searched
# --------------------------------------------------------------------------------------------------------------


def knapsack_fill(counts: Sequence[int], capacity: int) -> tuple[int, list[int]]:
    """The 0/1 knapsack of GreenMIM with weight = value = window size: the fullest subset that fits.

    ``K[i][w] = max(c[i-1] + K[i-1][w - c[i-1]], K[i-1][w])`` is the largest subset sum <= w of the first i counts.
    We hold row i as a bitset of reachable sums (bit s set iff some subset of the first i counts sums to s), so
    ``K[i][w]`` is the highest set bit at or below w. The backtracking is the official one, including its
    tie-breaking: walking i = n..1, item i-1 is skipped when ``res == K[i-1][w]`` and taken otherwise.

    Args:
        counts: positive item sizes (visible tokens per window).
        capacity: the group size g.

    Returns:
        (total, chosen): the filled size ``K[n][g]`` and the chosen item indices in increasing order.
    """
    full = (1 << (capacity + 1)) - 1
    reach = [1]
    for c in counts:
        r = reach[-1]
        reach.append((r | (r << c)) & full)

    def best(i: int, w: int) -> int:
        return (reach[i] & ((2 << w) - 1)).bit_length() - 1

    total = res = best(len(counts), capacity)
    w, chosen = capacity, []
    for i in range(len(counts), 0, -1):
        if res <= 0:
            break
        if res == best(i - 1, w):
            continue
        chosen.append(i - 1)
        res -= counts[i - 1]
        w -= counts[i - 1]
    return total, chosen[::-1]


def pack_windows(counts: Sequence[int], group_size: int) -> tuple[list[int], list[list[int]]]:
    """Pack windows into groups of at most ``group_size`` tokens, one fullest knapsack after another.

    This is the official ``group_windows``: solve :func:`knapsack_fill` on the remaining windows, make the chosen
    windows a group, remove them, repeat. Each group is as full as possible given the windows left, which is
    greedy (bin packing is NP-hard), not a global optimum.

    Args:
        counts: visible tokens per non-empty window, in ascending window-id order.
        group_size: g; every count must be <= g.

    Returns:
        (tokens_per_group, windows_per_group): window indices (into ``counts``), increasing within a group.

    Raises:
        ValueError: a window does not fit into a group, or a count is not positive.
    """
    if any(c < 1 for c in counts):
        raise ValueError(f"window counts must be positive, got {list(counts)}")
    if counts and max(counts) > group_size:
        raise ValueError(f"group_size {group_size} is smaller than the largest window ({max(counts)} tokens)")
    remaining = list(range(len(counts)))
    sizes, groups = [], []
    while remaining:
        total, chosen = knapsack_fill([counts[i] for i in remaining], group_size)
        picked = [remaining[i] for i in chosen]
        sizes.append(total)
        groups.append(picked)
        taken = set(chosen)
        remaining = [w for i, w in enumerate(remaining) if i not in taken]
    return sizes, groups


def grouping_cost(num_groups: int, group_size: int) -> int:
    """Attention cost of a packing, ``num_groups * group_size**2`` (the quadratic term of batched attention)."""
    return num_groups * group_size**2


def choose_group_size(
    counts: Sequence[int], window_size: int, rule: GroupSizeRule = "min_feasible"
) -> tuple[int, list[int], list[list[int]]]:
    """Choose the group size g and pack the windows.

    Args:
        counts: visible tokens per non-empty window.
        window_size: ws; no window holds more than ws^2 tokens.
        rule: ``min_feasible``: the official choice ``g = min(ws^2, max(counts))`` (the smallest size every window
            fits into; marked FIXME in the official code). ``search``: the paper's "optimal grouping", every g from
            ``max(counts)`` to ``ws^2`` packed with :func:`pack_windows` and the g of least
            :func:`grouping_cost` kept (ties go to the smaller g). The result is minimal over the group size *for
            this greedy packing*, so never costlier than ``min_feasible``; it is not a globally optimal packing
            (bin packing is NP-hard): on small random cases the greedy group count equals the exhaustive optimum
            in about 99.8 % of cases, but e.g. windows [1, 1, 2, 3, 2, 3] at g = 4 take 4 greedy groups where 3
            suffice.

    Returns:
        (g, tokens_per_group, windows_per_group).
    """
    if rule not in ("min_feasible", "search"):
        raise ValueError(f"group size rule must be 'min_feasible' or 'search', got {rule!r}")
    smallest = min(window_size**2, max(counts))
    if rule == "min_feasible":
        return (smallest, *pack_windows(counts, smallest))
    best: tuple[int, int, list[int], list[list[int]]] | None = None
    for g in range(smallest, window_size**2 + 1):
        sizes, groups = pack_windows(counts, g)
        cost = grouping_cost(len(groups), g)
        if best is None or cost < best[0]:
            best = (cost, g, sizes, groups)
    assert best is not None
    return best[1], best[2], best[3]


def window_ids(coords: Tensor, grid: tuple[int, int], window_size: int, shift: int) -> Tensor:
    """Window index of tokens under a (shifted) Swin partition, without rolling.

    A token at (r, c) falls in window ``(r', c') = ((r + o) // ws, (c + o) // ws)`` with ``o = (ws - shift) % ws``;
    border windows are simply smaller. This is the same token partition as Swin's cyclic roll plus mask (the
    wrapped pieces are separate windows there too). The id is ``r' * nWc + c'`` (row-major window order, which is
    also the order of the official ``r' * N_vis + c'``).

    Args:
        coords: (..., 2) long (row, col) token coordinates.
        grid: (H, W) of the stage.
        window_size: ws.
        shift: 0 or ws // 2.

    Returns:
        (...) long window ids.
    """
    offset = (window_size - shift) % window_size
    num_cols = (grid[1] - 1 + offset) // window_size + 1
    w = (coords + offset) // window_size
    return w[..., 0] * num_cols + w[..., 1]


def _num_windows(grid: tuple[int, int], window_size: int, shift: int) -> int:
    offset = (window_size - shift) % window_size
    return ((grid[0] - 1 + offset) // window_size + 1) * ((grid[1] - 1 + offset) // window_size + 1)


def _rel_pos_index(coords: Tensor, window_size: int) -> Tensor:
    """Swin's relative-position index of every pair: ``(dr + ws - 1) * (2 ws - 1) + (dc + ws - 1)``; (..., N, N)."""
    d = coords[..., :, None, :] - coords[..., None, :, :] + (window_size - 1)
    return d[..., 0] * (2 * window_size - 1) + d[..., 1]


def _attention_inputs(gid: Tensor, coords: Tensor, window_size: int) -> tuple[Tensor, Tensor]:
    """Additive mask and relative-position index of slots with window ids ``gid`` (-1 = padding).

    The mask is 0 within a window and -100 elsewhere and between padding slots; the index is 0 where masked.
    Shapes (G, g, g) from ``gid`` (G, g) and ``coords`` (G, g, 2).
    """
    same = (gid[:, :, None] == gid[:, None, :]) & (gid[:, :, None] >= 0)
    attn_mask = torch.zeros(same.shape, dtype=torch.float32, device=gid.device).masked_fill_(~same, MASK_VALUE)
    rel = _rel_pos_index(coords, window_size).masked_fill_(~same, 0)
    return attn_mask, rel


@dataclass
class Grouping:
    """How the visible tokens of one stage are grouped for one window partition (shifted or not).

    Tokens enter as x (B, N, C) in raster order of the visible positions. With one mask for the batch (``rows`` =
    B), a group gathers the same slots of every image; with per-sample masks (``rows`` = 1) the tokens of all
    images are flattened first and windows of different images are different windows.

    Attributes:
        mode: ``grouping`` (windows packed into groups of ``group_size``) or ``masking`` (one masked attention over
            all tokens of an image: the official choice when ``N <= 2 ws^2``).
        group_size: g (tokens per group; N in masking mode).
        attn_mask: (nG, g, g) float, 0 within a window and -100 elsewhere.
        rel_pos_idx: (nG, g, g) long relative-position index into the bias table, 0 where masked.
        idx_shuffle: (nG*g,) token index of every slot (padding slots copy token 0), None in masking mode.
        idx_unshuffle: (N_all,) slot of every token, None in masking mode.
        per_sample: whether tokens of the batch are flattened (per-sample masks).
        window_counts: visible tokens per non-empty window, ascending window id.
        window_index: (num non-empty windows) window ids (sample * num_windows + r' * nWc + c').
        tokens_per_group: real tokens per group.
        windows_per_group: indices into ``window_counts`` of each group's windows.
    """

    mode: Literal["grouping", "masking"]
    group_size: int
    attn_mask: Tensor
    rel_pos_idx: Tensor
    idx_shuffle: Tensor | None = None
    idx_unshuffle: Tensor | None = None
    per_sample: bool = False
    window_counts: list[int] = field(default_factory=list)
    window_index: list[int] = field(default_factory=list)
    tokens_per_group: list[int] = field(default_factory=list)
    windows_per_group: list[list[int]] = field(default_factory=list)

    @property
    def num_groups(self) -> int:
        """nG: attention groups per row (per image with a shared mask)."""
        return self.attn_mask.shape[0]

    def group(self, x: Tensor) -> Tensor:
        """(B, N, C) tokens -> (B*nG, g, C) groups (masking mode: unchanged)."""
        if self.mode == "masking":
            return x
        rows = 1 if self.per_sample else x.shape[0]
        x = x.reshape(rows, -1, x.shape[-1]).index_select(1, self.idx_shuffle)
        return x.reshape(-1, self.group_size, x.shape[-1])

    def merge(self, x: Tensor, batch_size: int) -> Tensor:
        """(B*nG, g, C) groups -> (B, N, C) tokens, padding dropped and raster order restored."""
        if self.mode == "masking":
            return x
        rows = 1 if self.per_sample else batch_size
        x = x.reshape(rows, -1, x.shape[-1]).index_select(1, self.idx_unshuffle)
        return x.reshape(batch_size, -1, x.shape[-1])


def build_grouping(
    coords: Tensor,
    grid: tuple[int, int],
    window_size: int,
    shift: int,
    group_size_rule: GroupSizeRule = "min_feasible",
    force_mode: Literal["grouping", "masking"] | None = None,
) -> Grouping:
    """Prepare grouped window attention for visible tokens at ``coords``.

    Args:
        coords: (S, N, 2) long (row, col) of the visible tokens in raster order; S = 1 for a mask shared by the
            batch, S = B for per-sample masks (same N for every sample).
        grid: (H, W) of the stage.
        window_size: ws of the stage (already clipped to the resolution).
        shift: 0 or ws // 2.
        group_size_rule: see :func:`choose_group_size`.
        force_mode: override the official mode choice (``masking`` iff ``N <= 2 ws^2``), for tests.

    Returns:
        The :class:`Grouping`.
    """
    s, n, _ = coords.shape
    device = coords.device
    mode = force_mode or ("masking" if n <= 2 * window_size**2 else "grouping")
    wid = window_ids(coords, grid, window_size, shift)  # (S, N)
    wid = wid + torch.arange(s, device=device)[:, None] * _num_windows(grid, window_size, shift)
    if mode == "masking":
        attn_mask, rel = _attention_inputs(wid, coords, window_size)
        return Grouping("masking", n, attn_mask, rel, per_sample=s > 1)

    flat_wid = wid.reshape(-1)
    order = torch.argsort(flat_wid, stable=True)  # tokens of a window stay in raster order
    sorted_wid = flat_wid[order]
    win_index, counts_t = torch.unique_consecutive(sorted_wid, return_counts=True)
    counts = counts_t.tolist()
    g, sizes, groups = choose_group_size(counts, window_size, group_size_rule)

    # slot of every window's first token: group * g + tokens of the earlier windows of that group
    num_win = len(counts)
    win_group = [0] * num_win
    win_start = [0] * num_win
    for gi, wins in enumerate(groups):
        offset = gi * g
        for w in wins:
            win_group[w], win_start[w] = gi, offset
            offset += counts[w]
    start_sorted = torch.cumsum(counts_t, 0) - counts_t  # position of each window's first token in ``order``
    token_win = torch.repeat_interleave(torch.arange(num_win, device=device), counts_t)
    rank = torch.arange(order.numel(), device=device) - start_sorted[token_win]
    slot = torch.tensor(win_start, device=device)[token_win] + rank  # slot of the i-th token of ``order``

    total = len(groups) * g
    idx_shuffle = torch.full((total,), -1, dtype=torch.long, device=device)
    idx_shuffle[slot] = order
    idx_unshuffle = torch.empty_like(order)
    idx_unshuffle[order] = slot
    slot_gid = torch.full((total,), -1, dtype=torch.long, device=device)
    slot_gid[slot] = sorted_wid
    idx_shuffle.clamp_(min=0)  # padding slots copy token 0 (masked, then dropped by merge)
    slot_coords = coords.reshape(-1, 2)[idx_shuffle].view(len(groups), g, 2)
    attn_mask, rel = _attention_inputs(slot_gid.view(len(groups), g), slot_coords, window_size)
    return Grouping(
        "grouping",
        g,
        attn_mask,
        rel,
        idx_shuffle,
        idx_unshuffle,
        per_sample=s > 1,
        window_counts=counts,
        window_index=win_index.tolist(),
        tokens_per_group=sizes,
        windows_per_group=groups,
    )


# --------------------------------------------------------------------------------------------------------------
# 3. Encoder
# --------------------------------------------------------------------------------------------------------------


class GroupWindowAttention(nn.Module):
    """Swin window attention applied to packed groups (or to all tokens with a block-diagonal mask).

    Per group: ``softmax(q k^T / sqrt(d) + B[rel_pos_idx] + M) v`` where ``B`` is Swin's relative-position bias table
    ((2 ws - 1)^2, heads), indexed with the tokens' true coordinates, and ``M`` is 0 within a window and -100
    between windows and at padding. The same bias and mask apply to every image of the batch.

    Args:
        dim: channels C.
        num_heads: heads h (head dim C / h).
        window_size: ws (sets the bias table size).
        qkv_bias: bias in the qkv projection.
        attn_drop: attention dropout.
        proj_drop: output dropout.
        fused_attn: use ``F.scaled_dot_product_attention`` with the additive mask (faster, less memory); False
            computes the softmax explicitly as the official code does. Both give the same result to float error.

    Parameter names are Swin's (``relative_position_bias_table``, ``qkv``, ``proj``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attn = fused_attn
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, attn_mask: Tensor, rel_pos_idx: Tensor) -> Tensor:
        """Attend within windows.

        Args:
            x: (R*nG, g, C) grouped tokens (R rows sharing the grouping).
            attn_mask: (nG, g, g) additive mask.
            rel_pos_idx: (nG, g, g) bias-table index (0 where masked).

        Returns:
            (R*nG, g, C).
        """
        bn, n, c = x.shape
        ng, h = attn_mask.shape[0], self.num_heads
        qkv = self.qkv(x).reshape(bn, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (R*nG, h, g, d)
        bias = self.relative_position_bias_table[rel_pos_idx].permute(0, 3, 1, 2)  # (nG, h, g, g)
        bias = torch.where(attn_mask.unsqueeze(1) < 0, attn_mask.unsqueeze(1), bias)
        rows = bn // ng
        if self.fused_attn:
            q, k, v = (t.reshape(rows, ng * h, n, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.reshape(1, ng * h, n, n), dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.view(rows, ng, h, n, n) + bias.unsqueeze(0)
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn.view(bn, h, n, n) @ v
        out = out.reshape(bn, h, n, -1).transpose(1, 2).reshape(bn, n, c)
        return self.proj_drop(self.proj(out))


class GreenSwinBlock(nn.Module):
    """Pre-norm Swin block on grouped tokens: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    Same parameters as Swin's block; it differs only in taking the grouping's mask and index instead of rolling and
    partitioning a dense map.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] | partial = nn.LayerNorm,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = GroupWindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, drop, fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, attn_mask: Tensor, rel_pos_idx: Tensor) -> Tensor:
        """(R*nG, g, C) -> (R*nG, g, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask, rel_pos_idx))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _merge_permutation(visible: Tensor, grid: tuple[int, int]) -> Tensor:
    """Permutation (S, N) bringing the 4 tokens of every visible 2x2 cell together.

    Cells come in raster order of the new grid and, within a cell, in Swin's channel order (0,0), (1,0), (0,1), (1,1).
    """
    h, w = grid
    s = visible.shape[0]
    pos = torch.arange(h * w, device=visible.device).expand(s, -1)
    r, c = pos // w, pos % w
    key = ((r // 2) * (w // 2) + c // 2) * 4 + (c % 2) * 2 + (r % 2)
    key = torch.where(visible, key, torch.full_like(key, 4 * h * w))  # masked tokens sort last
    rank_by_raster = torch.cumsum(visible.long(), 1) - 1  # index of each visible token in the raster-ordered x
    order = torch.argsort(key, dim=1)[:, : int(visible[0].sum())]
    return rank_by_raster.gather(1, order)


class VisiblePatchMerging(nn.Module):
    """Swin patch merging (2x2 -> 1, ``LN(4C)`` then ``Linear(4C, 2C)``) applied to visible tokens only.

    Works because mask units align with the final stage: every 2x2 cell is fully visible or fully masked.

    Args:
        dim: input channels C.
        norm_layer: normalisation of the 4C concatenation.

    Parameter names are Swin's (``norm``, ``reduction``); channels are concatenated in Swin's order
    [(0,0), (1,0), (0,1), (1,1)] (official since b981012; see :func:`tenfold.mim.convert.swap_merge_channel_order`
    for checkpoints trained with the older row-first order).
    """

    def __init__(self, dim: int, norm_layer: type[nn.Module] | partial = nn.LayerNorm) -> None:
        super().__init__()
        self.dim = dim
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, visible: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Merge.

        Args:
            x: (B, N, C) visible tokens in raster order.
            visible: (S, H*W) bool token visibility (S = 1 shared, or B).
            grid: (H, W), both even.

        Returns:
            x (B, N/4, 2C) in raster order of the (H/2, W/2) grid, and the new visibility (S, H*W/4).

        Raises:
            ValueError: an odd grid or a 2x2 cell that is only partly visible (mask units not aligned).
        """
        h, w = grid
        if h % 2 or w % 2:
            raise ValueError(f"patch merging needs an even grid, got {grid}")
        s = visible.shape[0]
        cells = visible.view(s, h // 2, 2, w // 2, 2).sum(dim=(2, 4))
        if bool(((cells != 0) & (cells != 4)).any()):
            raise ValueError("a 2x2 cell is partly visible: mask units must align with the final-stage patches")
        b, n, c = x.shape
        perm = _merge_permutation(visible, grid)
        if s == 1:
            x = x.index_select(1, perm[0])
        else:
            x = x.gather(1, perm.unsqueeze(-1).expand(-1, -1, c))
        x = self.reduction(self.norm(x.reshape(b, n // 4, 4 * c)))
        return x, (cells > 0).reshape(s, -1)


class GreenSwinStage(nn.Module):
    """One Swin stage on visible tokens: blocks alternating plain and shifted windows, then patch merging.

    The Swin rule applies: when the resolution is at most the window, the window shrinks to the resolution and no
    block shifts. The two groupings are built once per stage and reused by its blocks.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        norm_layer: type[nn.Module] | partial = nn.LayerNorm,
        downsample: bool = True,
        group_size_rule: GroupSizeRule = "min_feasible",
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window_size:
            self.window_size, self.shift_size = min(resolution), 0
        else:
            self.window_size, self.shift_size = window_size, window_size // 2
        self.group_size_rule = group_size_rule
        dp = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            GreenSwinBlock(
                dim, num_heads, self.window_size, mlp_ratio, qkv_bias, drop, attn_drop, dp[i], norm_layer, fused_attn
            )
            for i in range(depth)
        )
        self.downsample = VisiblePatchMerging(dim, norm_layer) if downsample else None

    def groupings(self, coords: Tensor) -> tuple[Grouping, Grouping]:
        """The (plain, shifted) groupings of visible tokens at ``coords`` (S, N, 2)."""
        plain = build_grouping(coords, self.resolution, self.window_size, 0, self.group_size_rule)
        if self.shift_size == 0:
            return plain, plain
        return plain, build_grouping(coords, self.resolution, self.window_size, self.shift_size, self.group_size_rule)

    def forward(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, C) visible tokens and (S, H*W) visibility -> merged tokens and the next visibility."""
        coords = _visible_coords(visible, self.resolution)
        groupings = self.groupings(coords)
        b = x.shape[0]
        for i, blk in enumerate(self.blocks):
            grp = groupings[i % 2]
            x = grp.merge(blk(grp.group(x), grp.attn_mask, grp.rel_pos_idx), b)
        if self.downsample is not None:
            x, visible = self.downsample(x, visible, self.resolution)
        return x, visible


def _visible_coords(visible: Tensor, grid: tuple[int, int]) -> Tensor:
    """(S, N, 2) (row, col) of the visible tokens of each row of ``visible`` (S, H*W), raster order."""
    counts = visible.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"every sample must keep the same number of tokens, got {counts.tolist()}")
    idx = visible.nonzero()[:, 1].view(visible.shape[0], -1)
    return torch.stack((idx // grid[1], idx % grid[1]), dim=-1)


class GreenSwin(nn.Module):
    """Swin Transformer encoder that runs on the visible tokens of a unit mask (GreenMIM's encoder).

    Its state dict is Microsoft Swin's (``patch_embed``, ``layers.i.blocks.j``, ``layers.i.downsample`` at the end
    of stage i, ``norm``), minus the recomputable ``relative_position_index`` buffers (Swin/SimMIM loaders rebuild
    them). With no mask it computes the dense Swin (timm's ``SwinTransformer`` on the same weights, see
    :func:`tenfold.mim.convert.to_timm_swin`) provided every stage grid is a multiple of its window or no larger than
    it, as at 224 px with window 7. Otherwise the two differ at the border: here a border window is simply smaller
    (the shifted partition without rolling, as officially), whereas timm pads the map to whole windows and lets the
    padding take part in attention; ``to_timm_swin`` refuses such sizes.

    Args:
        img_size: input side in pixels (a multiple of the mask unit ``patch_size * 2**(stages-1)``).
        patch_size: patch side of the first stage.
        in_chans: input channels.
        embed_dim: C of the first stage (doubled at every stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        window_size: attention window ws.
        mlp_ratio: MLP hidden ratio.
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout after attention/MLP projections.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_eps: LayerNorm epsilon (1e-6 in all official pre-training configs).
        group_size_rule: ``min_feasible`` (official) or ``search`` (the paper's optimal grouping).
        fused_attn: scaled-dot-product attention kernel instead of the explicit softmax.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        group_size_rule: GroupSizeRule = "min_feasible",
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
        self.num_layers = len(depths)
        self.mask_unit = patch_size * 2 ** (self.num_layers - 1)
        if img_size % self.mask_unit:
            raise ValueError(
                f"img_size {img_size} must be a multiple of the mask unit {self.mask_unit} px "
                f"(patch_size {patch_size} x 2^{self.num_layers - 1})"
            )
        self.img_size, self.patch_size, self.embed_dim, self.in_chans = img_size, patch_size, embed_dim, in_chans
        self.window_size, self.depths, self.num_heads = window_size, tuple(depths), tuple(num_heads)
        self.unit_grid = (img_size // self.mask_unit, img_size // self.mask_unit)
        self.num_units = self.unit_grid[0] * self.unit_grid[1]
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer=norm_layer)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        res = img_size // patch_size
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            r = res // 2**i
            self.layers.append(
                GreenSwinStage(
                    int(embed_dim * 2**i),
                    (r, r),
                    depths[i],
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    norm_layer,
                    downsample=i < self.num_layers - 1,
                    group_size_rule=group_size_rule,
                    fused_attn=fused_attn,
                )
            )
        self.norm = norm_layer(self.num_features)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter-name patterns without weight decay (Swin's bias tables)."""
        return {"*relative_position_bias_table"}

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Encode the visible part of images.

        Args:
            x: (B, 3, H, W) images.
            mask: (S, L) unit mask (bool or float; True/1 = removed) over the ``unit_grid`` in raster order, S = 1
                (shared, the official setting; a (B, L) mask whose rows are equal is reduced to its first row) or B
                (per-sample). None: everything visible (the dense Swin).

        Returns:
            (B, N_vis_final, num_features): final-stage tokens of the visible units, raster order of the unit grid.

        Raises:
            ValueError: the images are not (B, in_chans, img_size, img_size), the mask has the wrong shape, or a mask
                row removes every unit (nothing left to encode).
        """
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"images must have shape (B, {', '.join(map(str, expected))}) (this encoder was built for "
                f"img_size={self.img_size}, in_chans={self.in_chans}), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        if mask is not None:
            if mask.dim() != 2 or mask.shape[1] != self.num_units or mask.shape[0] not in (1, b):
                raise ValueError(f"mask must have shape (1 or {b}, {self.num_units}), got {tuple(mask.shape)}")
            mask = mask.bool()
            all_masked = mask.all(dim=1)
            if bool(all_masked.any()):
                row = int(all_masked.nonzero()[0, 0])
                raise ValueError(
                    f"mask row {row} removes all {self.num_units} units: at least one unit must stay visible "
                    f"(1/True = removed, 0/False = visible)"
                )
        x = self.pos_drop(self.patch_embed(x))
        n = x.shape[1]
        grid = self.patch_embed.grid_size
        if mask is None:
            visible = torch.ones(1, n, dtype=torch.bool, device=x.device)
        else:
            if mask.shape[0] > 1 and bool((mask == mask[:1]).all()):
                mask = mask[:1]  # one grouping serves the batch
            visible = units_to_tokens(~mask, self.unit_grid, tuple(grid))
            if visible.shape[0] == 1:
                x = x[:, visible[0]]
            else:
                x = x[visible].view(b, -1, x.shape[-1])
        for layer in self.layers:
            x, visible = layer(x, visible)
        return self.norm(x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward_features` (an encoder has no head)."""
        return self.forward_features(x, mask)


# --------------------------------------------------------------------------------------------------------------
# 4. Decoder and loss
# --------------------------------------------------------------------------------------------------------------


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """MAE's fixed 2-D sin-cos position embedding without cls token, (grid_size^2, embed_dim) float32.

    The first half of the channels encodes the column (MAE's meshgrid puts w first), the second the row; each half
    is ``[sin(p * omega), cos(p * omega)]`` with ``omega_k = 1 / 10000^(k / (D/4))``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4, got {embed_dim}")
    # computed in float64 and rounded once, as MAE does (numpy float64, then ``.float()``): the float32 table is the
    # official one bit for bit, and a ``.double()`` model carries exactly the official table (a float32 computation
    # is off by a few float32 ulps, which a float64 comparison with the official code sees)
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
    omega = 1.0 / 10000**omega
    pos = torch.arange(grid_size, dtype=torch.float64)
    cols, rows = pos.repeat(grid_size), pos.repeat_interleave(grid_size)

    def one(p: Tensor) -> Tensor:
        out = p[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one(cols), one(rows)], dim=1).float()


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in raster order, each flattened as (p, q, c) (MAE's layout)."""
    b, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify` for square images: (B, L, p*p*C) -> (B, C, H, W)."""
    b, length, _ = x.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"{length} patches do not form a square grid")
    p = patch_size
    x = x.reshape(b, side, side, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, side * p, side * p)


def masked_pixel_loss(pred: Tensor, imgs: Tensor, mask: Tensor, patch_size: int, norm_pix: bool = True) -> Tensor:
    """GreenMIM/MAE reconstruction loss: mean squared error on the masked units only.

    ``loss = sum_u mask_u * mean_j (pred_uj - t_uj)^2 / sum_u mask_u`` over units u of all images, where t is the
    patchified image and, with ``norm_pix``, each target row is normalised ``(t - mean) / sqrt(var + 1e-6)`` with the
    unbiased variance over its p*p*C values.

    Args:
        pred: (B, L, p*p*C) predictions for every unit.
        imgs: (B, C, H, W) (normalised) images.
        mask: (B, L), 1 = removed (the loss covers these), 0 = visible.
        patch_size: p, the mask unit in pixels.
        norm_pix: normalise each target patch.

    Returns:
        Scalar loss.

    Raises:
        ValueError: shapes disagree or nothing is masked.
    """
    target = patchify(imgs, patch_size)
    if pred.shape != target.shape or mask.shape != target.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} do not agree"
        )
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    mask = mask.to(pred.dtype)
    denom = mask.sum()
    if float(denom) == 0:
        raise ValueError("the mask removes no unit: the loss is defined on masked units only")
    per_unit = ((pred - target) ** 2).mean(dim=-1)
    return (per_unit * mask).sum() / denom


class GreenMIMOutput(NamedTuple):
    """What :meth:`GreenMIM.forward` returns: scalar ``loss``, ``pred`` (B, L, p*p*3), ``mask`` (B, L) 1 = removed."""

    loss: Tensor
    pred: Tensor
    mask: Tensor


class GreenMIM(nn.Module):
    """GreenMIM pre-training model: :class:`GreenSwin` on visible units + MAE decoder + normalised-pixel loss.

    State-dict keys are the official ``MaskedAutoencoder``'s (``encoder.*``, ``mask_token``, ``decoder_pos_embed``,
    ``decoder_embed``, ``decoder_blocks.i``, ``decoder_norm``, ``decoder_pred``), without ``relative_position_index``.

    Args:
        img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path_rate,
            norm_eps, group_size_rule, fused_attn: the encoder (:class:`GreenSwin`).
        decoder_embed_dim: decoder width (512).
        decoder_depth: decoder ViT blocks (1).
        decoder_num_heads: decoder heads (16).
        norm_pix_loss: normalise each target patch (on in all official scripts).
        mask_ratio: fraction of units removed (0.75).
        per_sample_mask: one mask per image instead of one per batch (the official code shares one mask).
        official_decoder_order: Fidelity flag. True (default, reproduces the official numbers): the encoder's
            visible tokens, which are in raster order, are placed by MAE's ``cat + gather(ids_restore)``, which
            assumes noise order; visible tokens thus land in the right set of positions but permuted among
            themselves (and get the wrong position embedding). False: each visible token goes to its own unit.

    Initialisation follows the official constructor: xavier-uniform linears (and patch-embedding conv on its
    (out, in*k*k) view) with zero biases, unit LayerNorms, ``mask_token ~ N(0, 0.02)``, bias tables
    trunc-normal(0.02), fixed sin-cos ``decoder_pos_embed``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 1,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        mask_ratio: float = 0.75,
        per_sample_mask: bool = False,
        official_decoder_order: bool = True,
        group_size_rule: GroupSizeRule = "min_feasible",
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = GreenSwin(
            img_size,
            patch_size,
            in_chans,
            embed_dim,
            depths,
            num_heads,
            window_size,
            mlp_ratio,
            drop_path_rate=drop_path_rate,
            norm_eps=norm_eps,
            group_size_rule=group_size_rule,
            fused_attn=fused_attn,
        )
        _len_keep(self.encoder.num_units, mask_ratio)
        self.mask_ratio = mask_ratio
        self.per_sample_mask = per_sample_mask
        self.official_decoder_order = official_decoder_order
        self.norm_pix_loss = norm_pix_loss
        self.in_chans = in_chans
        self.unit = self.encoder.mask_unit
        num_units = self.encoder.num_units
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.decoder_embed = nn.Linear(self.encoder.num_features, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # fixed, but saved: the official checkpoints hold it under this name
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_2d(decoder_embed_dim, self.encoder.unit_grid[0]).unsqueeze(0)
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.unit**2 * in_chans)
        self.num_units = num_units
        self._init_official()

    def _init_official(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.data.view(m.weight.shape[0], -1))
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names without weight decay besides 1-D parameters: bias tables and the mask token (official rule)."""
        return {"*relative_position_bias_table", "mask_token"}

    def random_mask(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> UnitMask:
        """A unit mask with this model's ratio and sharing rule."""
        return random_unit_mask(
            batch_size,
            self.num_units,
            self.mask_ratio,
            per_sample=self.per_sample_mask,
            generator=generator,
            device=device,
        )

    def forward_decoder(self, latent: Tensor, unit_mask: UnitMask) -> Tensor:
        """Predict pixels of every unit.

        Args:
            latent: (B, N_vis, D_enc) encoder output, raster order of the visible units.
            unit_mask: the mask used by the encoder.

        Returns:
            (B, L, unit^2 * C) predictions.
        """
        x = self.decoder_embed(latent)
        b, nv, d = x.shape
        if self.official_decoder_order:
            tokens = torch.cat([x, self.mask_token.expand(b, self.num_units - nv, d)], dim=1)
            x = torch.gather(tokens, 1, unit_mask.ids_restore.unsqueeze(-1).expand(-1, -1, d))
        else:
            visible = unit_mask.mask == 0
            full = self.mask_token.expand(b, self.num_units, d).clone()
            full[visible] = x.reshape(-1, d).to(full.dtype)
            x = full
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward(self, imgs: Tensor, unit_mask: UnitMask | None = None) -> GreenMIMOutput:
        """Mask, encode the visible units, decode all units and compute the loss.

        Args:
            imgs: (B, 3, H, W) normalised images.
            unit_mask: a fixed mask (e.g. from :func:`mask_from_noise`); default: drawn with :meth:`random_mask`.

        Returns:
            :class:`GreenMIMOutput`.
        """
        if unit_mask is None:
            unit_mask = self.random_mask(imgs.shape[0], device=imgs.device)
        latent = self.encoder(imgs, unit_mask.mask)
        pred = self.forward_decoder(latent, unit_mask)
        loss = masked_pixel_loss(pred, imgs, unit_mask.mask, self.unit, self.norm_pix_loss)
        return GreenMIMOutput(loss, pred, unit_mask.mask)
