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

from tenfold.mim.grouping import Grouping

__all__ = [
    "FEW_ROWS",
    "LARGE_WEIGHT",
    "GreenSwinBlock",
    "GroupWindowAttention",
    "few_rows_linear",
    "gelu_mlp_recompute",
]


#: Token rows at or below which a large linear layer multiplies ``W x^T`` instead of ``x W^T``
#: (see :func:`few_rows_linear`), and the weight size (elements) from which it does.
FEW_ROWS, LARGE_WEIGHT = 48, 2**20


def _few_rows(x: Tensor, w: Tensor) -> bool:
    return x.numel() // x.shape[-1] <= FEW_ROWS and w.numel() >= LARGE_WEIGHT


def _forward_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``F.linear(x, w, b)``; for few rows and a large weight computed as ``(W x^T)^T`` (a transposed view).

    With few rows the product streams the whole weight for little work, and MKL does that about a fifth faster with
    the weight as the left, untransposed operand (measured on one AVX-512 core for the final Swin-B stage, 24 rows:
    2.4 ms instead of 3.1 ms for a 4096 x 1024 weight). The result differs from ``F.linear`` only by float rounding.
    """
    if not _few_rows(x, w):
        return F.linear(x, w, b)
    x2 = x.reshape(-1, x.shape[-1])
    yt = torch.mm(w, x2.t()) if b is None else torch.addmm(b.unsqueeze(1), w, x2.t())
    return yt.t().view(*x.shape[:-1], w.shape[0])


class _FewRowsLinear(torch.autograd.Function):
    """``F.linear`` with the forward product of :func:`_forward_linear` and the usual backward products."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _forward_linear(x, w, b)

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        x, w = ctx.saved_tensors
        gy2 = gy.reshape(-1, gy.shape[-1])
        gx = gy2.mm(w).view(x.shape) if ctx.needs_input_grad[0] else None
        gw = gy2.t().mm(x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        gb = gy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def few_rows_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``, faster for few token rows and a large weight.

    The fast path runs for at most :data:`FEW_ROWS` rows and a weight of :data:`LARGE_WEIGHT` elements or more (the
    last stage of a masked Swin-B: 24 rows, weights of 1-4 M elements). Same values up to float rounding; the output
    may then be a transposed (non-contiguous) view. Double backward is not supported on that path.
    """
    if not _few_rows(x, layer.weight):
        return layer(x)
    return _FewRowsLinear.apply(x, layer.weight, layer.bias)


class _GeluMlp(torch.autograd.Function):
    """``fc2(gelu(fc1(x)))`` that keeps x and fc1's output for backward and recomputes the GELU there."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:  # noqa: D102
        h = _forward_linear(x, w1, b1)
        ctx.save_for_backward(x, h, w1, w2)
        ctx.has_bias = (b1 is not None, b2 is not None)
        return _forward_linear(F.gelu(h), w2, b2)

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        x, h, w1, w2 = ctx.saved_tensors
        gy2 = gy.reshape(-1, gy.shape[-1])
        h2 = h.reshape(-1, h.shape[-1])
        a = F.gelu(h2)
        gw2 = gy2.t().mm(a) if ctx.needs_input_grad[3] else None
        gb2 = gy2.sum(0) if ctx.has_bias[1] and ctx.needs_input_grad[4] else None
        del a
        gh = torch.ops.aten.gelu_backward(gy2.mm(w2), h2)
        x2 = x.reshape(-1, x.shape[-1])
        gw1 = gh.t().mm(x2) if ctx.needs_input_grad[1] else None
        gb1 = gh.sum(0) if ctx.has_bias[0] and ctx.needs_input_grad[2] else None
        gx = gh.mm(w1).view(x.shape) if ctx.needs_input_grad[0] else None
        return gx, gw1, gb1, gw2, gb2


def gelu_mlp_recompute(mlp: Mlp, x: Tensor) -> Tensor:
    """Run timm's ``Mlp`` (fc1, exact GELU, fc2) on x, saving less for backward: the GELU output is recomputed.

    The forward is the module's own computation (the same operations; for few token rows and large weights the
    products are taken in the faster orientation of :func:`few_rows_linear`, which changes only the float rounding).
    The backward recomputes ``gelu(fc1(x))`` from the saved fc1 output instead of keeping it, which removes 4C of the
    about 16C floats a Swin block keeps per token. Modules with active dropout, another activation or a hidden norm
    run unchanged. Double backward is not supported on the recomputing path.

    Args:
        mlp: a timm ``Mlp`` (``fc1``, ``act``, ``drop1``, ``norm``, ``fc2``, ``drop2``).
        x: (..., C) input.

    Returns:
        (..., C_out).
    """
    plain = (
        not isinstance(mlp.act, nn.GELU)
        or mlp.act.approximate != "none"
        or not isinstance(mlp.norm, nn.Identity)
        or (mlp.training and (mlp.drop1.p > 0 or mlp.drop2.p > 0))
        or not torch.is_grad_enabled()
    )
    if plain:
        return mlp(x)
    return _GeluMlp.apply(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)


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
            It applies to :meth:`forward`, and to :meth:`forward_tokens` with ``exact_mask`` or attention dropout;
            otherwise :meth:`forward_tokens` uses ``baddbmm``, softmax and ``bmm`` (no fully masked rows to guard).

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
        """Attend within windows, the official way: the -100 additive mask on grouped tokens.

        Args:
            x: (R*nG, g, C) grouped tokens (R rows sharing the grouping).
            attn_mask: (nG, g, g) additive mask.
            rel_pos_idx: (nG, g, g) bias-table index (0 where masked).

        Returns:
            (R*nG, g, C).
        """
        bias = self.relative_position_bias_table[rel_pos_idx].permute(0, 3, 1, 2)  # (nG, h, g, g)
        bias = torch.where(attn_mask.unsqueeze(1) < 0, attn_mask.unsqueeze(1), bias)
        return self.proj_drop(self.proj(self._attend(self.qkv(x), bias)))

    def forward_tokens(self, x: Tensor, grouping: Grouping, exact_mask: bool = False) -> Tensor:
        """Attend within windows, from and to the token layout: (B, N, C) -> (B, N, C).

        The projections run on the N real tokens only; only q, k, v are gathered into groups (padding slots copy
        token 0's, as the official padding copies token 0's features), and only the attention output is merged
        back. The result is the official one: ``merge(forward(group(x)))``.

        Args:
            x: (B, N, C) tokens in the grouping's order (raster order of the visible positions).
            grouping: the stage's :class:`~tenfold.mim.grouping.Grouping` for this block's partition.
            exact_mask: True: the official additive -100 mask (masked pairs keep softmax weights of about
                e^-100, denormal floats that make CPU matmuls many times slower); False: masked pairs get weight
                exactly 0 and padding slots attend to themselves only (their outputs are dropped). The two agree
                to float rounding unless a masked logit exceeds its row's largest allowed one by about 80. Without
                attention dropout, False runs :meth:`_attend_blocked`.

        Returns:
            (B, N, C).
        """
        b = x.shape[0]
        if not exact_mask and grouping.bias_index is None:
            raise ValueError("grouping has no bias_index (build it with build_grouping), or pass exact_mask=True")
        if exact_mask:
            bias = self.relative_position_bias_table[grouping.rel_pos_idx].permute(0, 3, 1, 2)
            mask = grouping.attn_mask.unsqueeze(1)
            bias = torch.where(mask < 0, mask, bias)
        else:
            blocked = self.relative_position_bias_table.new_full((1, self.num_heads), float("-inf"))
            table = torch.cat((self.relative_position_bias_table, blocked)).t()  # (h, (2 ws - 1)^2 + 1)
            # index_select, not advanced indexing: its backward is an index_add_, about half the cost
            ng, g = grouping.bias_index.shape[:2]
            bias = table.index_select(1, grouping.bias_index.reshape(-1)).view(self.num_heads, ng, g, g)
            bias = bias.transpose(0, 1)  # (nG, h, g, g), -inf where blocked
        qkv = grouping.group(few_rows_linear(self.qkv, x))
        if exact_mask or (self.training and self.attn_drop.p > 0):
            out = self._attend(qkv, bias)
        else:
            out = self._attend_blocked(qkv, bias)
        return self.proj_drop(few_rows_linear(self.proj, grouping.merge(out, b)))

    def _attend_blocked(self, qkv: Tensor, bias: Tensor) -> Tensor:
        """:meth:`_attend` without dropout, for a bias whose rows all keep a finite entry (the blocked-bias layout).

        The same softmax attention in three batched products: ``baddbmm`` adds the bias to the scaled logits in one
        pass and the plain softmax needs none of the fully-masked-row guards of the SDPA math kernel (which is the
        one PyTorch picks on CPU when the mask needs a gradient, as the bias table's does).
        """
        bn, n, c3 = qkv.shape
        ng, h = bias.shape[0], self.num_heads
        c = c3 // 3
        q, k, v = qkv.reshape(bn, n, 3, h, c // h).permute(2, 0, 3, 1, 4).reshape(3, bn * h, n, -1).unbind(0)
        bias = bias.unsqueeze(0).expand(bn // ng, ng, h, n, n).reshape(bn * h, n, n)
        attn = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.scale).softmax(dim=-1)
        return torch.bmm(attn, v).view(bn, h, n, -1).transpose(1, 2).reshape(bn, n, c)

    def _attend(self, qkv: Tensor, bias: Tensor) -> Tensor:
        """Softmax attention of grouped (R*nG, g, 3C) q, k, v with the additive (nG, h, g, g) bias: (R*nG, g, C)."""
        bn, n, c3 = qkv.shape
        ng, h = bias.shape[0], self.num_heads
        c = c3 // 3
        qkv = qkv.reshape(bn, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (R*nG, h, g, d)
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
        return out.reshape(bn, h, n, -1).transpose(1, 2).reshape(bn, n, c)


class GreenSwinBlock(nn.Module):
    """Pre-norm Swin block on grouped tokens: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    Same parameters as Swin's block; it differs only in taking the grouping's mask and index instead of rolling and
    partitioning a dense map. ``recompute_gelu`` (used by :meth:`forward_tokens`): the MLP keeps no GELU output for
    backward (:func:`gelu_mlp_recompute`; same outputs and gradients, less activation memory).
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
        recompute_gelu: bool = True,
    ) -> None:
        super().__init__()
        self.recompute_gelu = recompute_gelu
        self.norm1 = norm_layer(dim)
        self.attn = GroupWindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, drop, fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, attn_mask: Tensor, rel_pos_idx: Tensor) -> Tensor:
        """(R*nG, g, C) -> (R*nG, g, C): the official layout, every slot (padding too) through the whole block."""
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask, rel_pos_idx))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_tokens(self, x: Tensor, grouping: Grouping, exact_mask: bool = False) -> Tensor:
        """(B, N, C) -> (B, N, C): norms, projections and MLP on the real tokens, only attention in groups.

        Equal to ``grouping.merge(forward(grouping.group(x), ...))`` (per-token layers do not see the padding,
        whose outputs the official code drops); ``exact_mask`` as in :meth:`GroupWindowAttention.forward_tokens`.
        """
        x = x + self.drop_path(self.attn.forward_tokens(self.norm1(x), grouping, exact_mask))
        if self.recompute_gelu:
            return x + self.drop_path(gelu_mlp_recompute(self.mlp, self.norm2(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
