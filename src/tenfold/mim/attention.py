"""GreenMIM attention: Swin window attention and the Swin block, on packed groups of visible tokens.

Paper: arXiv 2205.13515; official code LayneH/GreenMIM at commit b981012 (``modeling/group_window_attention.py``,
``WindowAttention``; the blocks of ``modeling/green_swin_models.py``). The groups, their block-diagonal masks and
relative-position indices come from :func:`tenfold.mim.grouping.build_grouping`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

__all__ = ["GreenSwinBlock", "GroupWindowAttention"]


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
