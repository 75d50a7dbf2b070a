"""The scalenet demo's helpers: the compound-rule mapping, the stage-0 search and the BN re-estimation."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from tenfold.nas.demo_scalenet import compound_strategy, recalibrate_bn, stage0_search
from tenfold.nas.scalenet import (
    ScaleNetSpace,
    check_basenet,
    is_feasible,
    official_flops,
    scale_basenet,
    space_from_name,
)

BASE = [0, 1, 1, 0, 0, 2, 1, 0, 0, 1, 2, 0, 0, 0, 0, 0]  # the tiny default base (repaired already)


def _space(name: str = "tiny", **kw: object) -> ScaleNetSpace:
    f0 = official_flops(ScaleNetSpace.tiny(flops_constraint=1.0), [*BASE, 1.0, 16])
    return replace(space_from_name(name, num_classes=10, flops_constraint=float(f0)), **kw)


def _log_dist(d: float, w: float, r: int, s: int, r0: int = 16) -> float:
    return math.log(d / 1.2**s) ** 2 + math.log(w / 1.1**s) ** 2 + math.log(r / (r0 * 1.15**s)) ** 2


def test_compound_is_feasible_and_nearest_feasible() -> None:
    space, stage = _space(), 1
    d, w, r = compound_strategy(space, BASE, stage)
    dm, cm, res = space.depth_multipliers[stage][d], space.width_multipliers[stage][w], space.resolutions[stage][r]
    scaled = scale_basenet(space, BASE, dm, cm, res)
    f_base = official_flops(space, [*BASE, 1.0, 16])
    assert abs(official_flops(space, scaled) - 2**stage * f_base) <= space.err_scale * 2**stage
    best = _log_dist(dm, cm, res, stage)
    for i, j, k in itertools.product(*(range(len(x[stage])) for x in (space.depth_multipliers,
                                       space.width_multipliers, space.resolutions))):  # fmt: skip
        v = (space.depth_multipliers[stage][i], space.width_multipliers[stage][j], space.resolutions[stage][k])
        if is_feasible(space, BASE, scale_basenet(space, BASE, *v), stage, space.err_scale):
            assert _log_dist(*v, stage) >= best - 1e-12


def test_compound_picks_the_nearest_allowed_multipliers_when_all_are_feasible() -> None:
    # stage 1 targets d 1.2, w 1.1, r 18.4: the nearest allowed values are 1.25, 1.0 (of 1.0 / 1.5) and 18
    space = _space(
        width_multipliers=((1.0,), (1.0, 1.5), (1.75, 2.0)),
        resolutions=((16,), (24, 18), (20, 24)),
        err_scale=1e12,
    )
    assert compound_strategy(space, BASE, 1) == (0, 0, 1)


def test_compound_falls_back_to_the_closest_flops_when_nothing_is_feasible() -> None:
    # the spec's stage 2 lists (tiny_spec) give at least ~6.5x the base's MAdds, beyond 4x +- 20 % x 4
    space = _space("tiny_spec")
    f_target = 4 * official_flops(space, [*BASE, 1.0, 16])
    grid = list(itertools.product(range(2), range(2), range(2)))
    gaps = {
        idx: abs(
            official_flops(space, scale_basenet(space, BASE, space.depth_multipliers[2][idx[0]],
                                                space.width_multipliers[2][idx[1]], space.resolutions[2][idx[2]]))
            - f_target
        )
        for idx in grid
    }  # fmt: skip
    assert min(gaps.values()) > space.err_scale * 4  # nothing is feasible
    assert gaps[compound_strategy(space, BASE, 2)] == min(gaps.values())
    assert len(set(gaps.values())) > 1  # the choice matters


@pytest.mark.parametrize("stage", [0, 3])
def test_compound_rejects_a_stage_outside_the_scaling_stages(stage: int) -> None:
    with pytest.raises(ValueError, match=f"stage must be in \\[1, 2\\], got {stage}"):
        compound_strategy(_space(), BASE, stage)


def test_stage0_search_scores_feasible_bases_at_stage_0_and_keeps_the_best() -> None:
    space = _space()
    seen: list[list[object]] = []

    def score(enc: list[object]) -> float:  # prefers 5x5 ops
        seen.append(enc)
        return float(sum(v == 2 for v in enc[:-2]))

    best, value, n = stage0_search(space, score, 10, seed=0)
    assert n == len(seen) == 10
    assert all(e[-2:] == [1.0, 16] for e in seen)
    assert all(is_feasible(space, list(e[:-2]), None, 0, space.err_base) for e in seen)
    assert all(check_basenet(space, list(e[:-2])) == list(e[:-2]) for e in seen)
    assert value == max(score_ for score_ in (float(sum(v == 2 for v in e[:-2])) for e in seen))
    assert value == float(sum(v == 2 for v in best))


def test_recalibrate_bn_sets_the_plain_average_and_restores_momentum_and_mode() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, bias=False), torch.nn.BatchNorm2d(4))
    net.eval()
    batches = [torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(i)) * (i + 1) for i in range(3)]
    recalibrate_bn(net, batches)
    bn = net[1]
    with torch.no_grad():
        means = [net[0](x).mean((0, 2, 3)) for x in batches]
        variances = [net[0](x).var((0, 2, 3), unbiased=True) for x in batches]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0))
    assert bn.momentum == 0.1 and not net.training
