"""GreenMIM encoder: a Swin Transformer that runs on the visible tokens of a unit mask.

Paper: arXiv 2205.13515; official code LayneH/GreenMIM at commit b981012 (``modeling/green_swin_models.py``). Each
stage builds the groupings of its visible tokens once (:mod:`tenfold.mim.grouping`), runs its blocks
(:mod:`tenfold.mim.attention`) on the groups, and merges 2x2 cells of visible tokens. Parameter names are Microsoft
Swin's, so the state dict is a standard Swin. The architecture is one :class:`GreenSwinConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from torch import Tensor, nn

from tenfold.mim.attention import GreenSwinBlock, few_rows_linear
from tenfold.mim.grouping import Grouping, GroupSizeRule, build_grouping
from tenfold.mim.masking import units_to_tokens

__all__ = ["GreenSwin", "GreenSwinConfig", "GreenSwinStage", "VisiblePatchMerging"]


@dataclass
class GreenSwinConfig:
    """Architecture of :class:`GreenSwin` (defaults: Swin-B with window 7 at 224 px, the paper's main model).

    Attributes:
        img_size: input side in pixels (a multiple of the mask unit ``patch_size * 2**(stages-1)``).
        patch_size: patch side of the first stage.
        in_chans: input channels.
        embed_dim: C of the first stage (doubled at every stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        window_size: attention window ws.
        mlp_ratio: MLP hidden ratio (GreenMIM's decoder blocks use it too).
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout after attention/MLP projections.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_eps: LayerNorm epsilon (1e-6 in all official pre-training configs; GreenMIM's decoder norms use it too).
        group_size_rule: ``min_feasible`` (official) or ``search`` (the paper's optimal grouping), see
            :func:`tenfold.mim.grouping.choose_group_size`.
        fused_attn: scaled-dot-product attention kernel instead of the explicit softmax, where attention needs the
            official mask (``exact_mask``) or dropout; the default path (zero-weight mask, no attention dropout) uses
            neither (:meth:`tenfold.mim.attention.GroupWindowAttention.forward_tokens`).
        exact_mask: the official additive -100 mask between windows. False (default): blocked pairs get softmax
            weight exactly 0 instead of about e^-100; the official weights are denormal floats, which make CPU
            matmuls up to 50x slower, and they change no float32 (or float64) result unless a blocked logit
            exceeds its row's largest allowed one by about 80 (tested against the exact path to 1e-5).
        recompute_gelu: the blocks' MLPs keep no GELU output for backward and recompute it (same outputs and
            gradients, about a quarter less activation memory, see
            :func:`tenfold.mim.attention.gelu_mlp_recompute`).
    """

    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    group_size_rule: GroupSizeRule = "min_feasible"
    fused_attn: bool = True
    exact_mask: bool = False
    recompute_gelu: bool = True

    def __post_init__(self) -> None:
        # lists from YAML or Python become tuples, so that configs compare and print alike
        self.depths, self.num_heads = tuple(self.depths), tuple(self.num_heads)


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
        x = few_rows_linear(self.reduction, self.norm(x.reshape(b, n // 4, 4 * c)))
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
        exact_mask: bool = False,
        recompute_gelu: bool = True,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.exact_mask = exact_mask
        if min(resolution) <= window_size:
            self.window_size, self.shift_size = min(resolution), 0
        else:
            self.window_size, self.shift_size = window_size, window_size // 2
        self.group_size_rule = group_size_rule
        dp = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            GreenSwinBlock(
                dim,
                num_heads,
                self.window_size,
                mlp_ratio,
                qkv_bias,
                drop,
                attn_drop,
                dp[i],
                norm_layer,
                fused_attn,
                recompute_gelu,
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
        for i, blk in enumerate(self.blocks):
            x = blk.forward_tokens(x, groupings[i % 2], self.exact_mask)
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
        config: the architecture (:class:`GreenSwinConfig`); None: Swin-B/w7.
    """

    def __init__(self, config: GreenSwinConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GreenSwinConfig()
        img_size, patch_size, embed_dim, depths, num_heads = (
            config.img_size,
            config.patch_size,
            config.embed_dim,
            config.depths,
            config.num_heads,
        )
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
        self.num_layers = len(depths)
        self.mask_unit = patch_size * 2 ** (self.num_layers - 1)
        if img_size % self.mask_unit:
            raise ValueError(
                f"img_size {img_size} must be a multiple of the mask unit {self.mask_unit} px "
                f"(patch_size {patch_size} x 2^{self.num_layers - 1})"
            )
        self.img_size, self.patch_size, self.embed_dim, self.in_chans = img_size, patch_size, embed_dim, config.in_chans
        self.window_size, self.depths, self.num_heads = config.window_size, tuple(depths), tuple(num_heads)
        self.unit_grid = (img_size // self.mask_unit, img_size // self.mask_unit)
        self.num_units = self.unit_grid[0] * self.unit_grid[1]
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)
        self.patch_embed = PatchEmbed(img_size, patch_size, config.in_chans, embed_dim, norm_layer=norm_layer)
        self.pos_drop = nn.Dropout(config.drop_rate)
        dpr = torch.linspace(0, config.drop_path_rate, sum(depths)).tolist()
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
                    config.window_size,
                    config.mlp_ratio,
                    config.qkv_bias,
                    config.drop_rate,
                    config.attn_drop_rate,
                    dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    norm_layer,
                    downsample=i < self.num_layers - 1,
                    group_size_rule=config.group_size_rule,
                    fused_attn=config.fused_attn,
                    exact_mask=config.exact_mask,
                    recompute_gelu=config.recompute_gelu,
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

    def _embed_visible(self, x: Tensor, visible: Tensor) -> Tensor:
        """``patch_embed`` on the visible patches only: (B, 3, H, W) images -> (B, N_vis, C), raster order.

        The patch convolution (kernel = stride = patch) is a linear map of each patch's pixels, so only the visible
        patches are gathered and projected, and only their tokens are normalised: the same values as embedding all
        patches and then dropping the masked tokens (float rounding aside), at a quarter of the cost, without the
        full-map layout copies.
        """
        b, c = x.shape[:2]
        p, (gh, gw) = self.patch_size, self.patch_embed.grid_size
        cells = x.view(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, p, p)
        if visible.shape[0] == 1:
            cells = cells[:, visible[0]]
        else:
            cells = cells[visible].view(b, -1, c, p, p)
        proj = self.patch_embed.proj
        x = F.linear(cells.flatten(2), proj.weight.flatten(1), proj.bias)
        return self.patch_embed.norm(x)

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
        grid = tuple(self.patch_embed.grid_size)
        if mask is None:
            x = self.pos_drop(self.patch_embed(x))
            visible = torch.ones(1, x.shape[1], dtype=torch.bool, device=x.device)
        else:
            if mask.shape[0] > 1 and bool((mask == mask[:1]).all()):
                mask = mask[:1]  # one grouping serves the batch
            visible = units_to_tokens(~mask, self.unit_grid, grid)
            x = self.pos_drop(self._embed_visible(x, visible))
        for layer in self.layers:
            x, visible = layer(x, visible)
        return self.norm(x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward_features` (an encoder has no head)."""
        return self.forward_features(x, mask)
