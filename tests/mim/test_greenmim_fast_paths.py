"""GreenMIM fast paths against the exact ones: token-layout blocks, the zero-weight mask, the recomputing MLP."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from timm.layers import Mlp

from tenfold.mim.attention import (
    FEW_ROWS,
    LARGE_WEIGHT,
    GreenSwinBlock,
    GroupWindowAttention,
    few_rows_linear,
    gelu_mlp_recompute,
)
from tenfold.mim.bench import saved_activation_mib
from tenfold.mim.encoder import GreenSwin, GreenSwinConfig
from tenfold.mim.grouping import build_grouping
from tenfold.mim.masking import random_unit_mask, units_to_tokens

# 96 px, window 3, 3 stages: stage 0 (24x24 tokens) and stage 1 run in grouping mode with padded groups
SMALL = GreenSwinConfig(img_size=96, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=3)


def _coords(seed: int, grid=(24, 24), unit=4, keep=0.35):
    rng = torch.Generator().manual_seed(seed)
    mh, mw = grid[0] // unit, grid[1] // unit
    vis = torch.rand(1, mh * mw, generator=rng) < keep
    vis[0, 0] = True
    idx = units_to_tokens(vis, (mh, mw), grid)[0].nonzero()[:, 0]
    return torch.stack((idx // grid[1], idx % grid[1]), -1)[None]


def test_bias_index_blocks_what_the_mask_blocks_and_leaves_no_row_empty():
    ws = 3
    blocked_row = (2 * ws - 1) ** 2
    for seed, shift in ((0, 0), (1, 1), (2, 1)):
        grp = build_grouping(_coords(seed), (24, 24), ws, shift, force_mode="grouping")
        allowed = grp.attn_mask == 0
        pad = grp.attn_mask.diagonal(dim1=1, dim2=2) != 0
        assert bool(pad.any()), "the case must have padding slots"
        assert torch.equal(grp.bias_index[allowed], grp.rel_pos_idx[allowed])
        diag = torch.eye(grp.group_size, dtype=torch.bool).expand_as(allowed)
        blocked = ~allowed & ~(diag & pad[:, :, None])
        assert bool((grp.bias_index[blocked] == blocked_row).all())
        assert bool((grp.bias_index.diagonal(dim1=1, dim2=2)[pad] == 0).all())
        # every row keeps at least one finite entry, so a -inf mask never yields an all-blocked softmax
        assert bool(((grp.bias_index != blocked_row).sum(-1) > 0).all())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("mode", ["grouping", "masking"])
def test_token_layout_block_equals_the_official_grouped_layout(fused, mode):
    """``forward_tokens`` (projections and MLP on real tokens only) = merge(block(group(x))) of the official code."""
    torch.manual_seed(0)
    blk = GreenSwinBlock(16, 2, 3, fused_attn=fused).double().eval()
    blk.attn.relative_position_bias_table.data.normal_(0, 1.0)
    for seed, shift in ((3, 0), (4, 1)):
        coords = _coords(seed)
        grp = build_grouping(coords, (24, 24), 3, shift, force_mode=mode)
        x = torch.randn(2, coords.shape[1], 16, dtype=torch.float64)
        official = grp.merge(blk(grp.group(x), grp.attn_mask.double(), grp.rel_pos_idx), 2)
        for exact in (True, False):
            ours = blk.forward_tokens(x, grp, exact_mask=exact)
            torch.testing.assert_close(ours, official, atol=1e-12, rtol=1e-12)


def test_zero_weight_mask_equals_the_exact_mask_with_gradients(one_thread):
    """Encoder output and every parameter gradient of the fast mask within 1e-5 of the official -100 mask."""
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    mask = random_unit_mask(2, 36, 0.75, generator=torch.Generator().manual_seed(2)).mask
    results = {}
    for exact in (True, False):
        torch.manual_seed(0)
        enc = GreenSwin(replace(SMALL, exact_mask=exact))
        for layer in enc.layers:
            for blk in layer.blocks:
                blk.attn.relative_position_bias_table.data.normal_(0, 1.0)  # strong biases: a real test
        out = enc(images, mask)
        out.pow(2).mean().backward()
        results[exact] = (out.detach(), {n: p.grad for n, p in enc.named_parameters()})
    torch.testing.assert_close(results[False][0], results[True][0], atol=1e-5, rtol=1e-5)
    assert results[True][1].keys() == results[False][1].keys()
    for name, grad in results[True][1].items():
        torch.testing.assert_close(results[False][1][name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_exact_mask_needs_no_bias_index_and_fast_mask_says_so():
    grp = build_grouping(_coords(5), (24, 24), 3, 0, force_mode="grouping")
    attn = GroupWindowAttention(8, 2, 3).eval()
    x = torch.randn(1, grp.idx_unshuffle.numel(), 8)
    grp.bias_index = None
    assert attn.forward_tokens(x, grp, exact_mask=True).shape == x.shape
    with pytest.raises(ValueError, match="no bias_index"):
        attn.forward_tokens(x, grp)


def test_recomputing_mlp_has_the_modules_outputs_and_gradients():
    torch.manual_seed(0)
    mlp = Mlp(16, 64)
    x = torch.randn(2, 5, 16, requires_grad=True)
    g = torch.randn(2, 5, 16)
    ref = mlp(x)
    ref_grads = torch.autograd.grad(ref, [x, *mlp.parameters()], g)
    out = gelu_mlp_recompute(mlp, x)
    grads = torch.autograd.grad(out, [x, *mlp.parameters()], g)
    assert out.grad_fn is not None and "GeluMlp" in type(out.grad_fn).__name__  # the recomputing path ran
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # active dropout: the module itself runs (the recomputation would redraw the mask)
    dropping = Mlp(16, 64, drop=0.5).train()
    assert "GeluMlp" not in type(gelu_mlp_recompute(dropping, x).grad_fn).__name__


def test_recomputing_mlp_saves_exactly_the_gelu_outputs(one_thread):
    """Saved activations fall by the GELU outputs, one (B, N_stage, 4 C_stage) float32 tensor per block."""
    images = torch.randn(2, 3, 96, 96)
    mask = random_unit_mask(2, 36, 0.75, generator=torch.Generator().manual_seed(3)).mask
    saved = {}
    for recompute in (True, False):
        torch.manual_seed(0)
        enc = GreenSwin(replace(SMALL, recompute_gelu=recompute))
        saved[recompute] = saved_activation_mib(lambda enc=enc: enc(images, mask).pow(2).mean(), enc)
    visible_units = int((mask[0] == 0).sum())  # 9 of 36 units of 4x4 stage-0 tokens
    gelu_bytes = sum(
        2 * visible_units * 16 // 4**i * 4 * (16 * 2**i) * 4 * depth for i, depth in enumerate(SMALL.depths)
    )
    assert saved[False] - saved[True] == pytest.approx(gelu_bytes / 2**20, rel=1e-9)


def test_few_rows_linear_equals_the_layer_with_gradients():
    """The transposed product for few rows and a large weight: the layer's values and gradients (float64)."""
    torch.manual_seed(0)
    big = torch.nn.Linear(1024, LARGE_WEIGHT // 1024).double()
    x = torch.randn(2, FEW_ROWS // 2, 1024, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, FEW_ROWS // 2, big.out_features, dtype=torch.float64)
    ref = big(x)
    ref_grads = torch.autograd.grad(ref, [x, *big.parameters()], g)
    out = few_rows_linear(big, x)
    assert "FewRows" in type(out.grad_fn).__name__  # the fast path ran
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(out, [x, *big.parameters()], g), ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    # more rows, or a small weight: the layer itself
    assert "FewRows" not in type(few_rows_linear(big, torch.randn(FEW_ROWS + 1, 1024).double()).grad_fn).__name__
    assert "FewRows" not in type(few_rows_linear(torch.nn.Linear(16, 8), torch.randn(3, 16)).grad_fn).__name__


@pytest.mark.parametrize("per_sample", [False, True])
def test_visible_patch_embedding_equals_embedding_everything_then_dropping(per_sample):
    """Projecting and normalising only the visible patches = the full patch embedding, masked tokens dropped."""
    torch.manual_seed(0)
    enc = GreenSwin(SMALL).double()
    images = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    mask = random_unit_mask(2, 36, 0.75, per_sample=per_sample, generator=torch.Generator().manual_seed(4)).mask
    visible = units_to_tokens(~mask.bool(), enc.unit_grid, tuple(enc.patch_embed.grid_size))
    visible = visible[:1] if not per_sample else visible
    full = enc.patch_embed(images)
    ref = full[:, visible[0]] if not per_sample else full[visible].view(2, -1, full.shape[-1])
    torch.testing.assert_close(enc._embed_visible(images, visible), ref, atol=1e-12, rtol=1e-12)
