"""Behaviour of tenfold.nas.scalenet: space, toggling super-supernet, sampler, repair, FLOPs, export."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tenfold.nas.scalenet import (
    ScaleNetSpace,
    ScaleNetSuperNet,
    check_basenet,
    family_score,
    hsigmoid,
    hswish,
    official_flops,
    sample_subnet,
    scale_basenet,
    scalenet_from_encoding,
    true_flops,
)

PAPER = ScaleNetSpace.paper()
TINY = ScaleNetSpace.tiny()


def _paper_base(op: int, depth: int) -> list[int]:
    """Paper base encoding: op ``op`` in every searchable layer, ``depth`` layers per 4-layer stage."""
    enc = [0]
    for n_base, n_max in PAPER.depth_stage[1:-3]:
        d = 1 if n_base == 1 else depth
        enc += [op] * d + [0] * (n_max - d)
    return enc + [0, 0, 0]


def test_spaces_shapes():
    assert PAPER.num_blocks == 43 and TINY.num_blocks == 16
    assert [PAPER.super_channels(c) for c in (16, 32, 320)] == [43, 85, 845]
    assert TINY.super_channels(8) == 24  # ceil(2.0 * 8) + 8: generalised to the tiny space's max multiplier
    with pytest.raises(ValueError, match="one list per scaling stage"):
        ScaleNetSpace(8, TINY.stages, 64, 10, width_multipliers=((1.0,), (1.5,)))
    with pytest.raises(ValueError, match="must start with 'id'"):
        ScaleNetSpace(8, TINY.stages, 64, 10, ops=("ir_3x3_se", "id"))


def test_sampler_stage_frequencies_and_structure():
    rng = random.Random(0)
    draws = [sample_subnet(PAPER, rng) for _ in range(6800)]
    stage_of = {c: s for s, ws in enumerate(PAPER.width_multipliers) for c in ws}
    counts = [0] * 4
    for d in draws:
        counts[stage_of[round(d[-2], 6)]] += 1
    for c, p in zip(counts, [1 / 17, 4 / 17, 5 / 17, 7 / 17], strict=True):
        assert abs(c / len(draws) - p) < 4 * math.sqrt(p * (1 - p) / len(draws))
    # c_m passes through float32 as in the official broadcast
    assert any(d[-2] == 1.6399999856948853 for d in draws)
    for d in draws[:200]:
        s = stage_of[round(d[-2], 6)]
        assert d[-1] in PAPER.resolutions[s]
        assert d[0] == 0 and d[-5:-2] == [0, 0, 0]
        i = 1
        for _, n_max in PAPER.depth_stage[1:-3]:
            layers = d[i : i + n_max]
            active = sum(v > 0 for v in layers)
            assert all(v > 0 for v in layers[:active]) and all(v == 0 for v in layers[active:])  # no holes
            i += n_max


def test_check_basenet_is_one_pass_not_compacting():
    enc = _paper_base(1, 4)
    enc[3:10] = [1, 0, 2, 3, 2, 2, 2]  # stage2: a hole, then ops; beyond n_base = 4 -> zeroed
    enc[10:17] = [0, 3, 0, 0, 0, 0, 0]  # stage3: first layer id -> forced to 1
    out = check_basenet(PAPER, enc)
    assert out[3:10] == [1, 2, 0, 3, 0, 0, 0]
    assert out[10:17] == [1, 3, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="43"):
        check_basenet(PAPER, enc[:-1])


def test_scaling_uses_ceil_and_repeats_last_base_op():
    enc = _paper_base(2, 2)
    enc[3:7] = [3, 1, 0, 0]
    scaled = scale_basenet(PAPER, enc, 1.04, 1.04, 240)
    assert scaled[3:10] == [3, 1, 1, 0, 0, 0, 0]  # ceil(2 * 1.04) = 3 layers
    assert scaled[1:3] == [2, 2]  # stage1: 1 base layer, its second layer appears for any d_m > 1
    assert scaled[-2:] == [1.04, 240]
    stray = _paper_base(2, 1)
    stray[3:7] = [1, 0, 2, 0]  # check_basenet moves the 2 into the hole
    assert scale_basenet(PAPER, stray, 1.64, 1.0, 224)[3:10] == [1, 2, 2, 2, 0, 0, 0]  # ceil(2 * 1.64) = 4


def test_official_flops_reference_values():
    # spec section 4 (figures.json): largest base 713.5M, smallest 176.5M, all-3x3 full depth 543.9M MAdds
    assert round(official_flops(PAPER, [*_paper_base(3, 4), 1.0, 224]) / 1e5) == 7135
    assert round(official_flops(PAPER, [*_paper_base(1, 1), 1.0, 224]) / 1e5) == 1765
    assert round(official_flops(PAPER, [*_paper_base(1, 4), 1.0, 224]) / 1e5) == 5439


def test_official_flops_equals_true_count_only_at_unit_scale():
    base = [*_paper_base(2, 3), 1.0, 224]
    model = scalenet_from_encoding(base, PAPER)
    # the official counter counts SE convs as C_in * C_out with no bias, as does the FLOP counter
    assert official_flops(PAPER, base) == true_flops(model, 224)
    enc = [0, 1, 2, 1, 0, 2, 2, 2, 0, 1, 1, 1, 0, 0, 0, 0]
    scaled = [*enc, 1.75, 20]  # hidden ceil(round(8*3)*1.75) = 42 vs round(ceil(8*1.75)*3) = 42; 20 -> 10 -> 5 -> 2
    tiny = ScaleNetSpace.tiny()
    m = scalenet_from_encoding(scaled, tiny)
    assert official_flops(tiny, scaled) != true_flops(m, 20)  # odd size 5 -> official 2, real 3


def test_toggling_counters_and_coupling_flag():
    torch.manual_seed(0)
    net = ScaleNetSuperNet(TINY).eval()
    enc = [0, 1, 2, 1, 0, 2, 2, 2, 0, 1, 1, 1, 0, 0, 0, 0, 1.5, 20]
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        a, b, c = net(x, enc), net(x, enc), net(x, enc)
        net.reset_counters()
        d = net({20: x}, enc)
    assert not torch.allclose(a, b) and torch.equal(a, c) and torch.equal(a, d)
    torch.manual_seed(0)
    lead = ScaleNetSuperNet(replace(TINY, n_coupling=1)).eval()
    with torch.no_grad():
        assert torch.equal(lead(x, enc), lead(x, enc))
        assert torch.equal(lead(x, enc), a)  # first call = leading slices in both


def test_forward_input_checks():
    net = ScaleNetSuperNet(TINY)
    enc = [0, 1, 2, 1, 0, 2, 2, 2, 0, 1, 1, 1, 0, 0, 0, 0, 1.0, 16]
    out = net({16: torch.randn(2, 3, 16, 16), 20: torch.randn(2, 3, 20, 20)}, enc)
    assert out.shape == (2, 10)
    with pytest.raises(KeyError, match="resolution 16"):
        net({20: torch.randn(2, 3, 20, 20)}, enc)
    with pytest.raises(ValueError, match="op indices"):
        net(torch.randn(2, 3, 16, 16), enc[:-3] + enc[-2:])
    with pytest.raises(ValueError, match="not an op index"):
        TINY.validate([0, 5, *enc[2:]])


def test_activations_match_official_formulas():
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    assert torch.equal(hswish(x), x * torch.clamp(x + 3, 0, 6) / 6)
    assert torch.equal(hsigmoid(x), torch.clamp(x + 3, 0, 6) / 6)
    assert torch.equal(hswish(x), F.hardswish(x)) and torch.equal(hsigmoid(x), F.hardsigmoid(x))  # same forward


def test_export_equals_supernet_leading_path():
    """With n = 0 (always the leading slice) the supernet path equals the exported net given the sliced weights."""
    space = replace(TINY, n_coupling=0)
    torch.manual_seed(1)
    sup = ScaleNetSuperNet(space).eval()
    enc = [0, 1, 2, 0, 0, 2, 1, 2, 0, 1, 2, 1, 0, 0, 0, 0, 1.5, 20]
    model = scalenet_from_encoding(enc, space).eval()
    assert model.stem[0].out_channels == 12  # ceil(8 * 1.5)
    sup_mods = [
        m
        for i, blk in zip(enc[:-2], sup.net, strict=True)
        for m in blk[i].modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.BatchNorm2d | torch.nn.Linear)
    ]
    exp_mods = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.BatchNorm2d | torch.nn.Linear)]
    assert len(sup_mods) == len(exp_mods)
    with torch.no_grad():
        for s, e in zip(sup_mods, exp_mods, strict=True):
            for name, t in [*e.named_parameters(), *e.named_buffers()]:
                if t.dim() == 0:
                    continue
                src = getattr(s, name)
                t.copy_(src[tuple(slice(0, n) for n in t.shape)] if t.dim() > 1 else src[: t.shape[0]])
        x = torch.randn(2, 3, 20, 20)
        torch.testing.assert_close(model(x), sup(x, enc), rtol=1e-5, atol=1e-7)


def test_family_score_rules():
    tiny = ScaleNetSpace.tiny()
    base = [0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    f0 = official_flops(tiny, [*base, 1.0, 16])
    space = replace(tiny, flops_constraint=2.0 * f0, err_base=0.1 * f0)
    assert family_score(space, base, {1: (0, 0, 0), 2: (0, 0, 0)}, lambda e: 50.0) == pytest.approx(3 + 0.5)
    space = replace(tiny, flops_constraint=f0, err_base=1e9)
    # mean over stages 1, 2 of 40 + resolution: stage 1 index 0 -> 16 px, stage 2 index 1 -> 18 px
    assert space.resolutions[1][0] == 16 and space.resolutions[2][1] == 18
    assert family_score(space, base, {1: (0, 0, 0), 2: (1, 1, 1)}, lambda e: 40.0 + e[-1]) == pytest.approx(57.0)
    with pytest.raises(ValueError, match="index triple"):
        family_score(space, base, {1: None, 2: (1, 1, 1)}, lambda e: 0.0)


def test_builder_uses_space_layout_and_rejects_bad_input():
    enc = [0, 1, 2, 0, 0, 2, 1, 2, 0, 1, 2, 1, 0, 0, 0, 0, 1.5, 20]
    model = scalenet_from_encoding(enc, "tiny", num_classes=5, drop_rate=0.1)
    assert model(torch.randn(2, 3, 20, 20)).shape == (2, 5) and model.resolution == 20
    assert model.drop_rate == 0.1
    with pytest.raises(TypeError, match="drop_ratee"):
        scalenet_from_encoding(enc, "tiny", drop_ratee=0.2)
    with pytest.raises(ValueError, match="unknown ScaleNet space"):
        scalenet_from_encoding([0] * 16 + [1.0, 16], "huge")
    with pytest.raises(ValueError, match="op indices"):
        scalenet_from_encoding(enc[:-3] + enc[-2:], "tiny")
