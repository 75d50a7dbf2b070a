"""GreenMIM grouping: the visible tokens of a stage, packed window by window into equal-size attention groups.

Paper: arXiv 2205.13515, "optimal grouping"; official code LayneH/GreenMIM at commit b981012
(``modeling/group_window_attention.py``: ``knapsack``, ``group_windows``, ``GroupingModule``). After masking, the
visible tokens of a stage fall into (shifted) Swin windows holding different numbers of tokens. Windows are packed
into equal-size *groups* by a greedy 0/1-knapsack (each group filled as full as possible, one after another: not a
globally optimal bin packing), so that attention runs as one batched matmul per group, with a block-diagonal mask
between windows and Swin's relative-position bias from the tokens' true coordinates. When a stage has few tokens
(``N <= 2 ws^2``) one masked attention over all tokens is used instead (the official "masking mode").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "MASK_VALUE",
    "GroupSizeRule",
    "Grouping",
    "build_grouping",
    "choose_group_size",
    "grouping_cost",
    "knapsack_fill",
    "pack_windows",
    "window_ids",
]

#: Additive attention-mask value between tokens of different windows (Swin's -100, not -inf).
MASK_VALUE = -100.0

GroupSizeRule = Literal["min_feasible", "search"]


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


def _attention_inputs(gid: Tensor, coords: Tensor, window_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Additive mask, relative-position index and blocked-bias index of slots with window ids ``gid`` (-1 = padding).

    The mask is 0 within a window and -100 elsewhere and between padding slots; the index is 0 where masked. The
    third is the index into the bias table extended by one blocked row ``(2 ws - 1)^2``: the relative index within
    a window, the blocked row elsewhere, and 0 on the diagonal of padding slots (so that no row is fully blocked).
    Shapes (G, g, g) from ``gid`` (G, g) and ``coords`` (G, g, 2).
    """
    same = (gid[:, :, None] == gid[:, None, :]) & (gid[:, :, None] >= 0)
    attn_mask = torch.zeros(same.shape, dtype=torch.float32, device=gid.device).masked_fill_(~same, MASK_VALUE)
    rel = _rel_pos_index(coords, window_size).masked_fill_(~same, 0)
    bias_index = rel.masked_fill(~same, (2 * window_size - 1) ** 2)
    pad = gid < 0
    if bool(pad.any()):
        bias_index.diagonal(dim1=1, dim2=2).masked_fill_(pad, 0)
    return attn_mask, rel, bias_index


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
        bias_index: (nG, g, g) long index into the bias table extended by one blocked row ``(2 ws - 1)^2``
            (where ``attn_mask`` is -100; padding slots keep their diagonal at 0), for attention that gives
            blocked pairs exactly zero weight. Built once per stage and mask, shared by the stage's blocks.
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
    bias_index: Tensor | None = None

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
        attn_mask, rel, bias_index = _attention_inputs(wid, coords, window_size)
        return Grouping("masking", n, attn_mask, rel, per_sample=s > 1, bias_index=bias_index)

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
    attn_mask, rel, bias_index = _attention_inputs(slot_gid.view(len(groups), g), slot_coords, window_size)
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
        bias_index=bias_index,
    )
