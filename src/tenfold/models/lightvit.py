"""LightViT (Huang et al., arXiv 2207.05557): light-weight vision transformers with global aggregation tokens.

A convolutional stem embeds the image at stride 8; three stages of transformer blocks follow. Each block runs
local 7x7 window attention with a Swin-style relative position bias (no shift), plus a global path: a few learnable
global tokens attend to every image token (aggregation), are re-projected into keys and values, and every image
token attends to them (broadcast). The FFN ends with a bi-dimensional attention that gates its output per channel
(from the mean token) and per token (from local + global features). Stages are joined by a residual patch merging
(2x2 space-to-depth + LN + linear, plus a 2x2 max-pool + linear shortcut) that also projects the global tokens.

Two models share the blocks and the parameter names of the official code:

* :class:`LightViT` is the ImageNet classifier of ``hunto/image_classification_sota`` (``lib/models/lightvit.py``):
  registered with timm as ``lightvit_tiny``, ``lightvit_small`` and ``lightvit_base``; its ``state_dict`` has the
  official keys in the official order, so the released checkpoints load with ``strict=True``. Like the official
  model it needs every stage grid to be a multiple of the window (inputs a multiple of 224 per side): other sizes
  raise a ``ValueError`` naming the valid ones.
* :class:`LightViTBackbone` is the dense-prediction backbone of ``hunto/LightViT`` (``detection/lightvit.py``):
  per-stage LayerNorms ``norm0..2`` and NCHW maps at strides 8/16/32; grids that are not multiples of the window are
  zero-padded (right/bottom) inside the attention, odd grids are padded before merging, and the last block drops
  the global tokens before its FFN, all as the official detection code does. ``timm.create_model("lightvit_tiny",
  features_only=True)`` returns it.

Implementation notes (numerically equal to the official code, checked against its outputs in
``tests/models/test_lightvit_official.py``): the image tokens are partitioned into windows once, *before* the qkv
projection (instead of partitioning q, k and v separately and reversing after), and reversed once after the output
projection: every operation between them is per token or permutation invariant over the image tokens. Attention
runs through :func:`torch.nn.functional.scaled_dot_product_attention` (scale applied inside; the relative position
bias as an additive mask). Only the queries of the global tokens are computed (the official code computes their keys
and values from ``qkv`` and discards them); the ``qkv`` weight keeps its full official shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, gen_relative_position_index, trunc_normal_
from timm.models import FeatureInfo, build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from torch.utils.checkpoint import checkpoint

__all__ = [
    "BiAttn",
    "BiAttnMlp",
    "Block",
    "ConvStem",
    "LightViT",
    "LightViTAttention",
    "LightViTBackbone",
    "ResidualMergePatch",
    "checkpoint_filter_fn",
    "load_lightvit_checkpoint",
    "official_flops",
    "relative_position_index",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Block / final LayerNorms use eps 1e-6 (official ``partial(nn.LayerNorm, eps=1e-6)``); all others PyTorch's 1e-5.
_BlockNorm = partial(nn.LayerNorm, eps=1e-6)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Swin relative position index of a ``ws x ws`` window, flattened to ``(ws**4,)`` (int64), as the official buffer.

    For in-window coordinates ``(y, x)`` in row-major order, entry ``i * ws**2 + j`` is
    ``(y_i - y_j + ws - 1) * (2 ws - 1) + (x_i - x_j + ws - 1)``: a row of the ``((2 ws - 1)**2, heads)`` bias table
    (timm's ``gen_relative_position_index``, flattened).
    """
    return gen_relative_position_index((window_size, window_size)).flatten()


def _window_partition(x: torch.Tensor, grid: tuple[int, int], ws: int) -> torch.Tensor:
    """(B, H*W, C) row-major tokens -> (B, H*W, C) grouped by window: window (row, col) order, row-major inside."""
    B, _, C = x.shape
    H, W = grid
    x = x.reshape(B, H // ws, ws, W // ws, ws, C).transpose(2, 3)
    return x.reshape(B, H * W, C)


def _window_reverse(x: torch.Tensor, grid: tuple[int, int], ws: int) -> torch.Tensor:
    """Inverse of :func:`_window_partition`."""
    B, _, C = x.shape
    H, W = grid
    x = x.view(B, H // ws, W // ws, ws, ws, C).transpose(2, 3)
    return x.reshape(B, H * W, C)


class ConvStem(nn.Module):
    """The convolutional stem (``patch_embed``): image (B, 3, H, W) -> tokens (B, H/8 * W/8, C), grid (H/8, W/8).

    ``stem`` = conv3x3/2 (3 -> C/2) + BN + GELU, then three depthwise conv3x3 (strides 1, 1, 2) each with BN + GELU;
    ``proj`` = conv3x3/2 (C/2 -> C, with bias); then flatten and LayerNorm (eps 1e-5). No position embedding.

    Args:
        in_chans: image channels.
        embed_dim: output channels C.
        norm_eval: keep the BatchNorms in eval mode during training (frozen statistics; the detection configs).
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, norm_eval: bool = False) -> None:
        super().__init__()
        self.norm_eval = norm_eval
        stem_dim = embed_dim // 2
        layers: list[nn.Module] = []
        for i, stride in enumerate((2, 1, 1, 2)):
            groups = 1 if i == 0 else stem_dim
            layers += [
                nn.Conv2d(in_chans if i == 0 else stem_dim, stem_dim, 3, stride, 1, groups=groups, bias=False),
                nn.BatchNorm2d(stem_dim),
                nn.GELU(),
            ]
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(stem_dim, embed_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:  # noqa: D102
        # channels-last: the CPU (oneDNN) kernels of these depthwise convolutions run several times faster in NHWC,
        # and the NHWC output flattens to row-major tokens (B, H*W, C) without a copy
        x = self.proj(self.stem(x.contiguous(memory_format=torch.channels_last)))
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (H, W)

    def train(self, mode: bool = True) -> ConvStem:  # noqa: D102
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


class BiAttn(nn.Module):
    """Bi-dimensional attention: gates y (B, N, C) by a channel gate (B, 1, C) and a token gate (B, N, 1).

    ``z = LN(y)``; ``g = GELU(global_reduce(mean_N z))``; ``l = GELU(local_reduce(z))``;
    ``out = y * sigmoid(channel_select(g)) * sigmoid(spatial_select([l, g]))``. The mean runs over all N tokens
    (global tokens included).
    """

    def __init__(self, in_channels: int, act_ratio: float = 0.25) -> None:
        super().__init__()
        reduced = int(in_channels * act_ratio)
        self.norm = nn.LayerNorm(in_channels)
        self.global_reduce = nn.Linear(in_channels, reduced)
        self.local_reduce = nn.Linear(in_channels, reduced)
        self.act_fn = nn.GELU()
        self.channel_select = nn.Linear(reduced, in_channels)
        self.spatial_select = nn.Linear(reduced * 2, 1)
        self.gate_fn = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        z = self.norm(x)
        g = self.act_fn(self.global_reduce(z.mean(1, keepdim=True)))  # (B, 1, Cr)
        local = self.act_fn(self.local_reduce(z))  # (B, N, Cr)
        c_attn = self.gate_fn(self.channel_select(g))
        # spatial_select([l, g]) with its weight split in two: the global half is computed once, not per token
        w = self.spatial_select.weight
        reduced = local.shape[-1]
        s_attn = self.gate_fn(F.linear(local, w[:, :reduced]) + F.linear(g, w[:, reduced:], self.spatial_select.bias))
        return x * (c_attn * s_attn)


class BiAttnMlp(nn.Module):
    """FFN ``fc1 -> GELU -> fc2 -> BiAttn`` (dropout after the activation and at the end, 0 in every config)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.attn = BiAttn(in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.drop(self.attn(self.fc2(self.drop(self.act(self.fc1(x))))))


class LightViTAttention(nn.Module):
    """Local window attention + global aggregation/broadcast on ``x`` (B, NT + H*W, C), global tokens first.

    1. local: softmax(q k^T * d^-0.5 + relative position bias) v inside each ws x ws window of the image tokens;
    2. aggregation: each global token attends to all image tokens, ``x_g = softmax(q_g k_i^T * s) v_i``;
    3. broadcast: ``k_g, v_g = kv_global(x_g)``; each image token attends to the NT global tokens;
    4. ``proj(concat[x_g, local + broadcast])``.

    Args:
        dim: channels C.
        num_tokens: NT global tokens.
        num_heads: heads h (head dim C / h).
        window_size: ws.
        qkv_bias: bias on ``qkv`` and ``kv_global``.
        attn_drop: dropout on attention weights.
        (The official class also takes ``proj_drop`` but never applies it; it is left out here, so ``drop_rate``
        acts in the FFN only, as officially.)
        pad: zero-pad the image grid to multiples of ws (the detection backbone); otherwise a grid that is not
            a multiple of ws raises ``ValueError`` (the classification model).
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int = 1,
        num_heads: int = 8,
        window_size: int = 7,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        pad: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.window_size = window_size
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.pad = pad
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.kv_global = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._bias_cache: tuple[tuple, torch.Tensor] | None = None

    def position_bias(self) -> torch.Tensor:
        """The relative position bias (h, ws^2, ws^2) of a window, gathered from the table.

        Without autograd (inference) the gathered bias is kept and reused until the table changes (an optimiser
        step, ``load_state_dict``, ``.to()``), which saves a gather per block and call.
        """
        table, index = self.relative_position_bias_table, self.relative_position_index
        L = self.window_size**2
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return table[index].view(L, L, -1).permute(2, 0, 1)
        key = (table._version, table.data_ptr(), table.dtype, table.device, index._version, index.data_ptr())
        if self._bias_cache is None or self._bias_cache[0] != key:
            self._bias_cache = (key, table[index].view(L, L, -1).permute(2, 0, 1).contiguous())
        return self._bias_cache[1]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, k*C) -> (k, B, h, L, d)."""
        B, L, _ = x.shape
        return x.view(B, L, -1, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.attn_drop if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Tokens (B, NT + H*W, C) -> (B, NT + H*W, C)."""
        B, N, C = x.shape
        NT, ws, h = self.num_tokens, self.window_size, self.num_heads
        x_glb, x_img = x[:, :NT], x[:, NT:]
        Hp, Wp = H, W
        if H % ws or W % ws:
            if not self.pad:
                raise ValueError(
                    f"LightViT attention needs a token grid that is a multiple of the window {ws}, got {H}x{W}"
                )
            Hp, Wp = H + (-H) % ws, W + (-W) % ws
            x_img = F.pad(x_img.reshape(B, H, W, C), (0, 0, 0, Wp - W, 0, Hp - H)).view(B, Hp * Wp, C)

        # windows first: qkv, the local attention and the global paths are all per token or order invariant
        x_img = _window_partition(x_img, (Hp, Wp), ws)
        nw, L, d = (Hp // ws) * (Wp // ws), ws * ws, self.head_dim
        # one copy to head-major q, k, v (B, h, nw*L, d), tokens grouped by window: the products below then read
        # contiguous operands instead of each copying its own
        q, k, v = self._heads(self.qkv(x_img)).contiguous().unbind(0)

        def windows(t: torch.Tensor) -> torch.Tensor:  # a view (B, h, nw, L, d)
            return t.view(B, h, nw, L, d)

        bias = self.position_bias()
        # explicit products here: for many short (ws*ws) sequences they beat the CPU SDPA kernel by about 2x
        attn = ((windows(q) * self.scale) @ windows(k).transpose(-2, -1) + bias.unsqueeze(1)).softmax(dim=-1)
        if self.training and self.attn_drop > 0:
            attn = F.dropout(attn, self.attn_drop)
        x_loc = (attn @ windows(v)).view(B, h, nw * L, d)

        padded = Hp != H or Wp != W
        if padded:  # padded tokens served as keys in the windows only; drop them from here on
            keep = _window_partition(
                F.pad(torch.ones(1, H, W, 1, dtype=torch.bool, device=x.device), (0, 0, 0, Wp - W, 0, Hp - H))
                .view(1, Hp * Wp, 1), (Hp, Wp), ws,
            ).flatten()  # fmt: skip
            q, k, v, x_loc = (t[:, :, keep] for t in (q, k, v, x_loc))

        # only the queries of the global tokens are used (rows :C of qkv)
        q_glb = F.linear(x_glb.contiguous(), self.qkv.weight[:C], None if self.qkv.bias is None else self.qkv.bias[:C])
        q_glb = q_glb.view(B, NT, h, d).transpose(1, 2)
        x_glb = self._sdpa(q_glb, k, v).transpose(1, 2).reshape(B, NT, C)  # aggregation
        k_glb, v_glb = self._heads(self.kv_global(x_glb)).unbind(0)
        x_img = x_loc + self._sdpa(q, k_glb, v_glb)  # broadcast; (B, h, H*W, d) in window order

        # back to row-major tokens with heads concatenated, in one copy
        if not padded:
            x_img = x_img.view(B, h, H // ws, W // ws, ws, ws, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(B, H * W, C)
        else:  # the unpadded grid keeps the window grouping of the padded one
            order = _window_partition(
                F.pad(torch.arange(1, H * W + 1, device=x.device).view(1, H, W, 1), (0, 0, 0, Wp - W, 0, Hp - H))
                .view(1, Hp * Wp, 1), (Hp, Wp), ws,
            ).flatten()  # fmt: skip
            order = order[order > 0] - 1  # row-major index of each kept token, in window order
            x_img = x_img.transpose(1, 2).reshape(B, H * W, C)
            x_img = torch.empty_like(x_img).index_copy_(1, order, x_img)
        return self.proj(torch.cat([x_glb, x_img], dim=1))


class Block(nn.Module):
    """``x + DropPath(attn(LN1 x))`` then ``x + DropPath(mlp(LN2 x))`` (LN eps 1e-6).

    Args:
        last_block: drop the global tokens after the attention (the detection backbone's very last block).
        pad: passed to :class:`LightViTAttention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_tokens: int = 1,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        last_block: bool = False,
        pad: bool = False,
    ) -> None:
        super().__init__()
        self.last_block = last_block
        self.norm1 = _BlockNorm(dim)
        self.attn = LightViTAttention(dim, num_tokens, num_heads, window_size, qkv_bias, attn_drop=attn_drop, pad=pad)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = _BlockNorm(dim)
        self.mlp = BiAttnMlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:  # noqa: D102
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        if self.last_block:
            x = x[:, -H * W :]
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ResidualMergePatch(nn.Module):
    """Downsampling between stages: (B, NT + H*W, Cin), (H, W) -> (B, NT + H/2 * W/2, Cout), (H/2, W/2).

    Image: ``reduction(LN(space_to_depth_2x2(x))) + res_proj(maxpool_2x2(x))`` (Swin channel order: (even row,
    even col), (odd, even), (even, odd), (odd, odd)); global tokens: ``proj(norm2(t))``. Linear layers have no
    bias. With ``pad`` an odd grid is zero-padded at the right/bottom first (detection backbone).
    """

    def __init__(self, dim: int, out_dim: int, num_tokens: int = 1, pad: bool = False) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.pad = pad
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim, bias=False)
        self.res_proj = nn.Linear(dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, tuple[int, int]]:  # noqa: D102
        NT = self.num_tokens
        glb, x = x[:, :NT], x[:, NT:]
        B, _, C = x.shape
        x = x.reshape(B, H, W, C)
        if H % 2 or W % 2:
            if not self.pad:
                raise ValueError(f"LightViT patch merging needs an even token grid, got {H}x{W}")
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        Ho, Wo = x.shape[1] // 2, x.shape[2] // 2
        # (B, Ho, r, Wo, c, C) -> (B, Ho, Wo, c, r, C): the 4C channels are then ordered (r, c) = 00, 10, 01, 11
        quads = x.view(B, Ho, 2, Wo, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, Ho * Wo, 4, C)
        res = self.res_proj(quads.amax(dim=2))
        x = self.reduction(self.norm(quads.flatten(2))) + res
        return torch.cat([self.proj(self.norm2(glb)), x], dim=1), (Ho, Wo)


def _init_weights(module: nn.Module) -> None:
    """Official init (timm ViT ``_init_vit_weights`` applied without names): every Linear, head included."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class _LightViTBody(nn.Module):
    """Stem, global tokens and stages shared by the classifier and the dense backbone."""

    def _build_body(
        self,
        in_chans: int,
        embed_dims: Sequence[int],
        num_layers: Sequence[int],
        num_heads: Sequence[int],
        mlp_ratios: Sequence[float],
        num_tokens: int,
        window_size: int,
        qkv_bias: bool,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
        dense: bool,
        stem_norm_eval: bool = False,
    ) -> None:
        lengths = {len(embed_dims), len(num_layers), len(num_heads), len(mlp_ratios)}
        if len(lengths) != 1:
            raise ValueError(
                "embed_dims, num_layers, num_heads and mlp_ratios need one entry per stage, got lengths "
                f"{len(embed_dims)}, {len(num_layers)}, {len(num_heads)}, {len(mlp_ratios)}"
            )
        self.embed_dims = list(embed_dims)
        self.num_layers = list(num_layers)
        self.num_heads = list(num_heads)
        self.mlp_ratios = list(mlp_ratios)
        self.num_tokens = num_tokens
        self.window_size = window_size
        self.grad_checkpointing = False
        self.patch_embed = ConvStem(in_chans, embed_dims[0], norm_eval=stem_norm_eval)
        self.global_token = nn.Parameter(torch.zeros(1, num_tokens, embed_dims[0]))
        dpr = torch.linspace(0, drop_path_rate, sum(num_layers)).tolist()
        stages, depth = [], 0
        last_stage = len(embed_dims) - 1
        for s, (dim, n, heads, ratio) in enumerate(zip(embed_dims, num_layers, num_heads, mlp_ratios, strict=True)):
            blocks: list[nn.Module] = []
            if s > 0:
                blocks.append(ResidualMergePatch(embed_dims[s - 1], dim, num_tokens, pad=dense))
            for i in range(n):
                blocks.append(
                    Block(dim, heads, num_tokens, window_size, ratio, qkv_bias, drop_rate, attn_drop_rate,
                          dpr[depth + i], last_block=dense and s == last_stage and i == n - 1, pad=dense)
                )  # fmt: skip
            depth += n
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = self.patch_embed(x)
        return torch.cat([self.global_token.expand(x.shape[0], -1, -1), x], dim=1), grid

    def _run_stage(self, stage: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple]:
        for block in stage:
            if isinstance(block, ResidualMergePatch):
                x, grid = block(x, *grid)
            elif self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(block, x, *grid, use_reentrant=False)
            else:
                x = block(x, *grid)
        return x, grid

    def _image_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Image tokens of (B, [NT +] H*W, C) as a (B, C, H, W) map."""
        H, W = grid
        return x[:, -H * W :].transpose(1, 2).reshape(x.shape[0], -1, H, W)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """``global_token`` and every relative position bias table (full names, as timm's optimiser factory needs)."""
        return {"global_token"} | {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (activation checkpointing)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay: stem + global tokens, then stages (or blocks)."""
        return {
            "stem": r"^patch_embed|^global_token",
            "blocks": [
                (r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                (r"^norm\d*\.|^neck\.", (99999,)),
            ],
        }


class LightViT(_LightViTBody):
    """LightViT image classifier (official ``lib/models/lightvit.py``; parameter names and order kept).

    Args:
        img_size: nominal input size (informational; the model accepts any multiple of ``8 * window * 2**(S-1)``).
        patch_size: nominal stride of the stem (informational; the stem is fixed at stride 8).
        in_chans: image channels.
        num_classes: classes; 0 for no head (``forward`` returns pooled features).
        embed_dims: channels per stage.
        num_layers: blocks per stage.
        num_heads: heads per stage.
        mlp_ratios: FFN expansion per stage.
        num_tokens: global tokens NT.
        window_size: local attention window.
        neck_dim: width of the per-token neck before pooling.
        qkv_bias: bias on ``qkv`` / ``kv_global``.
        drop_rate: dropout in the FFN (after the activation and after the gate), as officially: not after the
            attention projection and not before the head.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
        global_pool: ``"avg"`` (mean over all tokens, global tokens included: the official pooling) or ``""``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 8,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 256),
        num_layers: Sequence[int] = (2, 6, 6),
        num_heads: Sequence[int] = (2, 4, 8),
        mlp_ratios: Sequence[float] = (8, 4, 4),
        num_tokens: int = 8,
        window_size: int = 7,
        neck_dim: int = 1280,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.global_pool = global_pool
        self._build_body(in_chans, embed_dims, num_layers, num_heads, mlp_ratios, num_tokens, window_size,
                         qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, dense=False)  # fmt: skip
        self.norm = _BlockNorm(embed_dims[-1])
        self.neck = nn.Sequential(nn.Linear(embed_dims[-1], neck_dim), nn.LayerNorm(neck_dim), nn.GELU())
        self.num_features = embed_dims[-1]  # timm: channels of forward_features
        self.head_hidden_size = neck_dim  # timm: width of the pooled pre-logits
        self.head = nn.Linear(neck_dim, num_classes) if num_classes > 0 else nn.Identity()
        scale = 8
        self.feature_info = []
        for s, dim in enumerate(embed_dims):
            self.feature_info.append({"num_chs": dim, "reduction": scale, "module": f"stages.{s}"})
            scale *= 2
        trunc_normal_(self.global_token, std=0.02)
        self.apply(_init_weights)

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (stem stride 8, then the window at every stage)."""
        return 8 * self.window_size * 2 ** (len(self.embed_dims) - 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"LightViT expects images (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.input_multiple
        if h % m or w % m:
            raise ValueError(
                f"LightViT classification needs input height and width that are multiples of {m} (every stage grid "
                f"a multiple of the window {self.window_size}, as in the official model), e.g. {m}x{m} or "
                f"{m}x{2 * m}; got {h}x{w}. Resize the images, or use the dense backbone "
                "(timm.create_model(..., features_only=True)), which pads."
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> normed tokens (B, NT + H/32 * W/32, C_last), global tokens first."""
        self._check_input(x)
        x, grid = self._embed(x)
        for stage in self.stages:
            x, grid = self._run_stage(stage, x, grid)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> logits (B, num_classes), or pooled neck features (B, neck_dim) with ``pre_logits``.

        The neck (Linear, LN, GELU) acts per token and the mean runs over all N tokens (image and global).
        """
        x = self.neck(x)
        if self.global_pool == "avg":
            x = x.mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:  # noqa: D102
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (trunc-normal init as the official model) and optionally the pooling."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the image tokens after each stage as NCHW maps (strides 8, 16, 32).

        Args:
            x: images (B, in_chans, H, W).
            indices: last n stages if an int, all if None, else the listed stage indices.
            norm: apply the final norm to the last stage's map.
            stop_early: stop after the last requested stage.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the maps.

        Returns:
            The maps, or ``(final normed tokens, maps)``.
        """
        from timm.models._features import feature_take_indices

        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = list(self.stages)[: max_index + 1] if stop_early else list(self.stages)
        maps = []
        x, grid = self._embed(x)
        for i, stage in enumerate(stages):
            x, grid = self._run_stage(stage, x, grid)
            if i in take:
                last = i == len(self.stages) - 1
                maps.append(self._image_map(self.norm(x) if norm and last else x, grid))
        if intermediates_only:
            return maps
        return (self.norm(x) if len(stages) == len(self.stages) else x), maps


class LightViTBackbone(_LightViTBody):
    """LightViT dense-prediction backbone (official ``detection/lightvit.py``): NCHW maps at strides 8/16/32.

    Same blocks and parameter names as :class:`LightViT` without ``norm``/``neck``/``head``; one LayerNorm
    ``norm{i}`` (eps 1e-6) per output stage applied to the image tokens. Any input size works: image grids are
    zero-padded to multiples of the window inside the attention (padded tokens take part unmasked, as officially)
    and odd grids are padded before merging (output grid ``ceil(H/2)``); the last block drops the global tokens
    before its FFN.

    Args:
        embed_dims, num_layers, num_heads, mlp_ratios, num_tokens, window_size, qkv_bias, drop_rate,
            attn_drop_rate, drop_path_rate, in_chans: as for :class:`LightViT`.
        out_indices: stages whose maps are returned.
        stem_norm_eval: keep the stem BatchNorms in eval mode during training (all official detection configs).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 256),
        num_layers: Sequence[int] = (2, 6, 6),
        num_heads: Sequence[int] = (2, 4, 8),
        mlp_ratios: Sequence[float] = (8, 4, 4),
        num_tokens: int = 8,
        window_size: int = 7,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (0, 1, 2),
        stem_norm_eval: bool = True,
    ) -> None:
        super().__init__()
        bad = [i for i in out_indices if not 0 <= i < len(embed_dims)]
        if bad:
            raise ValueError(f"out_indices {list(out_indices)} outside the stages 0..{len(embed_dims) - 1}")
        self.out_indices = tuple(out_indices)
        self._build_body(in_chans, embed_dims, num_layers, num_heads, mlp_ratios, num_tokens, window_size,
                         qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, dense=True,
                         stem_norm_eval=stem_norm_eval)  # fmt: skip
        for i in self.out_indices:
            self.add_module(f"norm{i}", _BlockNorm(embed_dims[i]))
        self.feature_info = FeatureInfo(
            [{"num_chs": embed_dims[i], "reduction": 8 * 2**i, "module": f"norm{i}"} for i in self.out_indices],
            list(range(len(self.out_indices))),
        )
        trunc_normal_(self.global_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, in_chans, H, W) -> list of (B, C_i, ceil(H / 8 / 2**i), ...) maps for i in ``out_indices``."""
        if x.ndim != 4:
            raise ValueError(f"LightViT expects images (B, C, H, W), got shape {tuple(x.shape)}")
        x, grid = self._embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, grid = self._run_stage(stage, x, grid)
            if i in self.out_indices:
                H, W = grid
                outs.append(self._image_map(getattr(self, f"norm{i}")(x[:, -H * W :]), grid))
        return outs


# --------------------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Turn a released LightViT checkpoint into the ``state_dict`` of ``model``.

    Accepts a raw state dict, or one nested under ``state_dict`` / ``model`` (the training framework's and
    ``tools/convert_ckpt.py``'s formats); strips a leading ``module.`` (DataParallel) and, for mmdet detector
    checkpoints, keeps the ``backbone.`` entries without the prefix. For a :class:`LightViTBackbone`, the classifier's
    ``norm``/``neck``/``head`` are dropped and missing ``norm{i}`` are taken from the model's own initialisation (the
    official detection code loads ImageNet weights the same way, non-strictly).
    """
    for _ in range(3):
        key = next((k for k in ("state_dict", "model") if isinstance(state_dict.get(k), Mapping)), None)
        if key is None:
            break
        state_dict = state_dict[key]
    out = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("backbone.") for k in out):
        out = {k.removeprefix("backbone."): v for k, v in out.items() if k.startswith("backbone.")}
    if isinstance(model, LightViTBackbone):
        out = {k: v for k, v in out.items() if not k.startswith(("norm.", "neck.", "head."))}
        for k, v in model.state_dict().items():
            if k.startswith("norm") and k not in out:
                out[k] = v
    return out


def load_lightvit_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an official (or tenfold) LightViT checkpoint file into ``model`` with ``strict=True``, safely.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read safely, or its keys/shapes do not fit ``model`` (the message lists the
            missing, unexpected and mis-shaped keys).
    """
    from tenfold.utils.checkpoint import load_checkpoint, load_state_dict_strict

    load_state_dict_strict(model, checkpoint_filter_fn(load_checkpoint(path), model), source=str(path))
    return model


# --------------------------------------------------------------------------------------------------------------
# FLOPs in the official convention


def official_flops(model: LightViT, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-adds as the official ``LightViT.flops()`` counts them (the convention of the paper's table).

    The stem is counted by a generic counter (convolutions and linear layers); the blocks analytically, with the
    official formula's choices: local window attention counted as ``nW * ws^2 * C * 2`` (a factor ws^2 below the
    true ``nW * ws^4 * C * 2``), ``kv_global`` and BiAttn's gating product of the channel and token gates omitted,
    the neck counted, the head counted for 1000 classes. :func:`tenfold.utils.flops.count_flops` gives the true count.
    """
    from tenfold.utils.flops import count_flops

    flops = count_flops(model.patch_embed, torch.zeros(1, *input_size)).macs
    ws, NT = model.window_size, model.num_tokens
    H, W = input_size[1] // 8, input_size[2] // 8
    N = NT + H * W
    C = model.embed_dims[0]
    for s, C in enumerate(model.embed_dims):
        if s > 0:
            Cin = model.embed_dims[s - 1]
            flops += (H // 2) * (W // 2) * Cin * 4 * C + (H // 2) * (W // 2) * Cin * C + NT * Cin * C
            H, W = H // 2, W // 2
            N = H * W + NT
        per_block = (
            N * C * C * 3  # qkv
            + (H // ws) * (W // ws) * ws * ws * C * 2  # local attention (official undercount)
            + H * W * NT * C * 2 * 2  # aggregation + broadcast
            + N * C * C  # proj
            + N * C * C * model.mlp_ratios[s] * 2  # fc1 + fc2
            + C * C * 0.25 * 2  # channel gate
            + N * C * C * 0.25
            + N * C * 0.25 * 2  # token gate
            + N * C  # gating product
        )
        flops += per_block * model.num_layers[s]
    neck_dim = model.neck[0].out_features
    return int(flops + N * C * neck_dim + neck_dim * 1000)


# --------------------------------------------------------------------------------------------------------------
# registry


def _check_weight_source(variant: str, kwargs: Mapping[str, Any]) -> str | None:
    """The local weight file of ``pretrained=True`` (our cfgs hold no URL); clear errors when there is none."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    if not cfg.file:
        raise ValueError(
            f"{variant} has no downloadable weights; load a local file (e.g. the released lightvit_tiny_78.7.ckpt) "
            f"with timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file=PATH)), "
            "or use pretrained=False"
        )
    if not Path(cfg.file).is_file():
        raise FileNotFoundError(f"{variant} weight file {cfg.file!r} does not exist")
    return cfg.file


_ARCHS: dict[str, dict[str, Any]] = {
    "lightvit_tiny": dict(embed_dims=(64, 128, 256), num_layers=(2, 6, 6), num_heads=(2, 4, 8), num_tokens=8),
    "lightvit_small": dict(embed_dims=(96, 192, 384), num_layers=(2, 6, 6), num_heads=(3, 6, 12), num_tokens=16),
    "lightvit_base": dict(embed_dims=(128, 256, 512), num_layers=(3, 8, 6), num_heads=(4, 8, 16), num_tokens=24),
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    arch = {**_ARCHS[variant], "mlp_ratios": (8, 4, 4), **kwargs}
    if arch.pop("features_only", False):
        file = _check_weight_source(variant, arch) if pretrained else None
        # timm's create_model passes its own keys along; the classifier-only ones do not apply to the backbone
        ignored = {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "feature_cfg", "feature_cls",
                   "num_classes", "global_pool", "img_size", "patch_size", "neck_dim"}  # fmt: skip
        arch = {k: v for k, v in arch.items() if k not in ignored}
        model = LightViTBackbone(**arch)
        model.pretrained_cfg = resolve_pretrained_cfg(variant).to_dict()
        if file:
            load_lightvit_checkpoint(model, file)
        return model
    if pretrained:
        _check_weight_source(variant, kwargs)
    return build_model_with_cfg(LightViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **arch)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No url: weights are never downloaded; pass a local file with pretrained_cfg_overlay=dict(file=...).
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "patch_embed.stem.0",
        "classifier": "head",
        "origin_url": "https://github.com/hunto/LightViT",
        "paper_ids": "arXiv:2207.05557",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in _ARCHS})


@register_model
def lightvit_tiny(pretrained: bool = False, **kwargs: Any) -> LightViT:
    """LightViT-T: 9.38 M parameters, 0.73 GMACs (official count), ImageNet top-1 78.7."""
    return _create("lightvit_tiny", pretrained, **kwargs)


@register_model
def lightvit_small(pretrained: bool = False, **kwargs: Any) -> LightViT:
    """LightViT-S: 19.20 M parameters, 1.74 GMACs (official count), ImageNet top-1 80.9."""
    return _create("lightvit_small", pretrained, **kwargs)


@register_model
def lightvit_base(pretrained: bool = False, **kwargs: Any) -> LightViT:
    """LightViT-B: 35.20 M parameters, 3.92 GMACs (official count), ImageNet top-1 82.1."""
    return _create("lightvit_base", pretrained, **kwargs)
